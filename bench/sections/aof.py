"""AOF section: drain and concurrent adds with `appendonly` everysec vs off."""

from __future__ import annotations

from collections import defaultdict

from bench.common import median
from bench.sections.core import Run, fmt, measure_drain, ratio, settle, table, workers
from bench.sections.enqueue import enqueue_once


def section_aof(run: Run) -> None:
    impls = ["node", "dyno"]
    count = int(10000 * run.scale)
    samples: dict[tuple[str, str], list[float]] = defaultdict(list)
    client = run.sync()
    try:
        with workers(run, impls, 100) as started:
            for _ in range(run.reps):
                for aof in ("everysec", "off"):
                    client.config_set("appendonly", "no" if aof == "off" else "yes")
                    settle(run)
                    for impl, worker in started.items():
                        samples[(impl, aof)].append(
                            measure_drain(run, worker, f"q-{impl}-100", count, []))
                    for impl in ("node", "slackq"):
                        samples[(f"add-{impl}", aof)].append(
                            enqueue_once(run, impl, "concurrent", int(3000 * run.scale)))
        client.config_set("appendonly", "yes")
    finally:
        client.close()
    settle(run)
    m = {f"{k[0]}|{k[1]}": median(v) for k, v in samples.items()}
    run.results["aof"] = m
    run.print(f"### AOF everysec vs off (jobs/s, median of {run.reps})")
    run.print()
    rows = []
    for label, key in (("drain c=100, Node", "node"), ("drain c=100, slackq dyno", "dyno"),
                       ("add x100 concurrent, Node", "add-node"),
                       ("add x100 concurrent, slackq Enqueuer", "add-slackq")):
        on, off = m[f"{key}|everysec"], m[f"{key}|off"]
        rows.append([label, fmt(on), fmt(off), ratio(on, off)])
    table(run, ["", "AOF everysec", "AOF off", "everysec/off"], rows)


