"""`python -m harness e2e`: run end-to-end campaigns (`harness.e2e`) and print one table.

    python -m harness e2e --campaign all                      # the six campaigns, ~5 min
    python -m harness e2e --campaign sigstop --rate 50 --seconds 60 --outage 30
    python -m harness e2e --campaign crash --topology sentinel --ack replicas:1

Exit status: 0 when every campaign gave what a sound system gives (the control must lose),
1 otherwise, 2 on a usage error, 3 when a campaign cannot run here (power loss without FUSE).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.e2e import CAMPAIGNS, E2EConfig, quick, run_e2e
from harness.errors import BackendUnavailable

EXIT_PASS, EXIT_FAIL, EXIT_ERROR, EXIT_UNAVAILABLE = 0, 1, 2, 3
COLUMNS = (("campaign", "campaign"), ("appendonly", "AOF"), ("sent", "sent"),
           ("acked", "acked"), ("lost", "lost"), ("duplicates", "dup"),
           ("non_200", "non-200"), ("unavailable_s", "unavail s"),
           ("pending_at_fault", "pending@fault"), ("lost_outside_window", "lost>window"),
           ("window_bound", "window bound"), ("worker_error_lines", "worker errors"),
           ("verdict", "verdict"), ("expected", "expected"))


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness e2e",
                                     description="The Procfile's processes under Redis faults: "
                                                 "every 200 must get exactly one reply.")
    parser.add_argument("--campaign", choices=(*CAMPAIGNS, "all"), default="all")
    parser.add_argument("--rate", type=float, default=None, help="events per second (20)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="seconds of traffic (20; down, sigstop: 45)")
    parser.add_argument("--outage", type=float, default=None,
                        help="seconds the fault lasts (down 30, maxmemory 10, sigstop 30, "
                             "crash and powerloss 0: restarted at once)")
    parser.add_argument("--quick", action="store_true",
                        help="the CI sizes: a few seconds each, a 4 s job lock")
    parser.add_argument("--topology", choices=("single", "sentinel"), default="single")
    parser.add_argument("--ack", default="replicas:1",
                        help="sentinel: ACK_DURABILITY of the web process")
    parser.add_argument("--server", default=None, help="'redis', 'valkey' or a path")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--report", type=Path, default=None, help="write the JSON reports here")
    return parser


def config_for(campaign: str, args: argparse.Namespace) -> E2EConfig:
    config = quick(campaign) if args.quick else E2EConfig(campaign=campaign)
    if not args.quick and campaign in ("down", "sigstop"):
        config = replace(config, seconds=45.0)  # 30 s out, then traffic flows again
    changes = {name: value for name, value in (("rate", args.rate), ("seconds", args.seconds),
                                               ("outage", args.outage), ("server", args.server))
               if value is not None}
    return replace(config, **changes)


def run_sentinel(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """`crash` on the Sentinel topology: the primary SIGKILLed (`harness.failover`)."""
    from harness.failover import FailoverConfig, run_failover

    rate = args.rate or 20.0
    total = int(rate * (args.seconds or 20.0))
    report = run_failover(FailoverConfig(fault="kill", ack=args.ack, rate=rate, before=20,
                                         after=max(20, total - 20)), work)
    row = {"campaign": f"crash (sentinel, {args.ack})", "appendonly": "yes",
           "sent": report["sent"], "acked": report["acked"], "lost": report["lost"],
           "duplicates": report["duplicates"], "non_200": report["not_acked"],
           "unavailable_s": report["refused_s"], "pending_at_fault": "-",
           "lost_outside_window": "-", "window_bound": "-", "worker_error_lines": "-",
           "expected": "pass"}
    row["verdict"] = "pass" if report["lost"] == 0 and report["duplicates"] == 0 else "fail"
    return {**row, "failover": report}


def groups(campaigns: list[str], quick: bool) -> list[list[str]]:
    """Each campaign on a stack of its own; with `quick` (CI's way), one stack for all but
    `powerloss` (the FUSE layer under the data directory is for it alone)."""
    if not quick:
        return [[campaign] for campaign in campaigns]
    shared = [campaign for campaign in campaigns if campaign != "powerloss"]
    alone = [["powerloss"]] if "powerloss" in campaigns else []
    return [group for group in (shared, *alone) if group]


def table(reports: list[dict[str, Any]]) -> str:
    rows = [[str(r.get(key, "")) for key, _ in COLUMNS] for r in reports]
    header = [title for _, title in COLUMNS]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
             for line in (header, *rows)]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    campaigns = list(CAMPAIGNS) if args.campaign == "all" else [args.campaign]
    if args.topology == "sentinel" and campaigns != ["crash"]:
        print("e2e: --topology sentinel runs --campaign crash (the primary SIGKILLed)",
              file=sys.stderr)
        return EXIT_ERROR
    root = args.work_dir or Path(tempfile.mkdtemp(prefix="slackq-e2e-"))
    print(f"e2e: work dir {root}", flush=True)
    reports: list[dict[str, Any]] = []
    unavailable = []
    for group in groups(campaigns, args.quick):
        work = root / "-".join(group)
        try:
            if args.topology == "sentinel":
                done = [run_sentinel(args, work)]
            else:
                done = run_e2e([config_for(campaign, args) for campaign in group], work)
        except BackendUnavailable as exc:
            unavailable.append(f"{', '.join(group)} cannot run here: {exc}")
            continue
        for report in done:
            print(json.dumps({k: v for k, v in report.items() if k != "config"}), flush=True)
        reports.extend(done)
    print(table(reports))
    for line in unavailable:
        print(f"e2e: {line}", file=sys.stderr)
    if args.report:
        args.report.write_text(json.dumps(reports, indent=2))
        print(f"report: {args.report}")
    if any(r["verdict"] != r["expected"] for r in reports):
        return EXIT_FAIL
    return EXIT_UNAVAILABLE if unavailable else EXIT_PASS
