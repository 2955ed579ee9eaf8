"""slackq next to Node BullMQ 6.7.0, same Redis, same run: `python bench/run.py`.

Prints Markdown tables (medians of --reps runs, Node and Python runs interleaved) and writes them,
with the raw numbers, to reports/ (ignored by git):

* enqueue: sequential, 100 concurrent (`gather`), addBulk of 100; the port's own client vs the web
  process's Enqueuer (pooled client);
* drain with a no-op processor at concurrency 1/10/100 per dyno: the port's Worker as it ships,
  one slackq worker process, the slackq worker dyno (WORKER_PROCESSES processes);
* end-to-end latency (add -> `completed` event seen) at a fixed 500 jobs/s, with worker CPU;
* a trickle (20 jobs/s): worker CPU per job of one process, the dyno and Node;
* RSS idle and busy; drain and enqueue with AOF everysec vs off;
* `--sections realistic` (not in the default run): a drain of `app_mention` jobs at concurrency
  50, each posting one threaded `chat.postMessage` to a loopback Slack (bench/slack_fast.py), by
  one real `python -m worker` process, the 2-process dyno, Node BullMQ, arq and saq (the last two
  from `.venv-bench`, made on first use from requirements-bench.lock), then the same with a
  no-op processor: jobs/s, worker CPU per job, Redis round trips and commands per job.

Redis is a fresh `redis-server` with the project's redis.conf on a free port (never 6379).
Node's side is tests/node's pinned bullmq + ioredis (`npm ci` there on first use).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.venv import use_project_venv  # noqa: E402

use_project_venv()

from bench.common import ensure_node_modules, start_redis  # noqa: E402
from bench.sections.aof import section_aof  # noqa: E402
from bench.sections.core import Run  # noqa: E402
from bench.sections.drain import section_drain  # noqa: E402
from bench.sections.enqueue import section_enqueue  # noqa: E402
from bench.sections.latency import section_latency, section_trickle  # noqa: E402
from bench.sections.realistic import section_realistic  # noqa: E402
from slackq.settings import usable_cpus  # noqa: E402

REPORTS = ROOT / "reports"

SECTIONS: dict[str, Callable[[Run], Any]] = {
    "enqueue": section_enqueue, "drain": section_drain, "latency": section_latency,
    "aof": section_aof, "realistic": section_realistic, "trickle": section_trickle,
}


def describe_machine(run: Run) -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               "unknown CPU")
    client = run.sync()
    version = client.info("server").get("redis_version")
    client.close()
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()
    run.print(f"Machine: {usable_cpus()} usable CPUs ({cpu}), Redis {version} on loopback "
              f"(project redis.conf), Python {sys.version.split()[0]}, Node {node}; "
              f"load average at start {load[0]:.2f}.")
    run.print()
    run.results["machine"] = {"cpus": usable_cpus(), "cpu": cpu, "redis": version,
                              "python": sys.version.split()[0], "node": node, "load": load}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions per measurement")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply job counts")
    default = ",".join(name for name in SECTIONS if name != "realistic")
    parser.add_argument("--only", "--sections", default=default,
                        help=f"comma-separated sections of {', '.join(SECTIONS)} (default: all "
                             "but realistic, which needs .venv-bench)")
    parser.add_argument("--base", type=Path, default=None,
                        help="another checkout (e.g. main's worktree) whose slackq worker also "
                             "runs, as `slackq@base` / `dyno@base`, in the latency, trickle and "
                             "realistic sections: a before/after in one run")
    args = parser.parse_args(argv)
    ensure_node_modules()
    REPORTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slackq-bench-") as tmp:
        server = start_redis(Path(tmp) / "redis")
        assert server.process is not None
        run = Run(url=server.url, server_pid=server.process.pid, workdir=Path(tmp),
                  reps=args.reps, scale=args.scale,
                  base=args.base.resolve() if args.base else None)
        started = time.perf_counter()
        try:
            describe_machine(run)
            for name in args.only.split(","):
                SECTIONS[name](run)
        finally:
            server.kill()
        run.print(f"(bench took {time.perf_counter() - started:.0f} s)")
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    (REPORTS / f"bench-{stamp}.json").write_text(json.dumps(run.results, indent=2))
    (REPORTS / f"bench-{stamp}.md").write_text("\n".join(run.lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
