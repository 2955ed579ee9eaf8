"""Enqueue section: sequential, 100 concurrent, addBulk of 100; Node, the port's client,
the web process's Enqueuer and a blocking pool."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict

from bench.common import BENCH_DIR, NODE_DIR, median
from bench.sections.core import ROOT, Run, base_env, fmt, ratio, settle, table


def enqueue_once(run: Run, impl: str, mode: str, count: int) -> float:
    """Jobs stored per second; adds that failed are left out of the count (and reported)."""
    queue_name = f"e-{impl}-{mode}"
    tag = run.tag()
    if impl == "node":
        argv = ["node", str(NODE_DIR / "enqueue.js"), mode, str(count), queue_name, run.url, tag]
    else:
        argv = [sys.executable, str(BENCH_DIR / "py_enqueue.py"), mode, impl, str(count),
                queue_name, run.url, tag]
    out = subprocess.run(argv, env=base_env(run), capture_output=True, text=True, check=False,
                         cwd=ROOT, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"{argv} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    failed = int(result.get("failed", 0))
    if failed:
        run.failures[f"{impl} {mode}"] = max(run.failures.get(f"{impl} {mode}", 0), failed)
    return (count - failed) / result["seconds"]


def section_enqueue(run: Run, label: str = "enqueue") -> dict[str, dict[str, float]]:
    impls = ["node", "port", "slackq", "blocking"]
    count = int(3000 * run.scale)
    medians: dict[str, dict[str, float]] = {}
    for mode in ("sequential", "concurrent", "bulk"):
        samples: dict[str, list[float]] = defaultdict(list)
        for _ in range(run.reps):
            for impl in impls:
                samples[impl].append(enqueue_once(run, impl, mode, count))
            settle(run)
        medians[mode] = {impl: median(values) for impl, values in samples.items()}
    run.results[label] = medians
    run.print(f"### Enqueue ({count} jobs of 1.1 KB, jobs/s, median of {run.reps})")
    run.print()
    rows = [[mode, fmt(m["node"]), fmt(m["port"]), fmt(m["slackq"]), fmt(m["blocking"]),
             ratio(m["port"], m["node"]), ratio(m["slackq"], m["node"]),
             ratio(m["blocking"], m["node"])]
            for mode, m in medians.items()]
    table(run, ["add", "Node", "Python, port's client", "slackq Enqueuer (web process)",
                "blocking pool of 64", "port/Node", "Enqueuer/Node", "blocking/Node"], rows)
    for what, failed in run.failures.items():
        run.print(f"- {what}: {failed} of {count} adds failed (not stored) in one run")
    if run.failures:
        run.print()
    return medians

