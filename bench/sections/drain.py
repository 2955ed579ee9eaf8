"""Drain section: a paused-then-resumed queue, no-op processor, concurrency 1/10/100 per
dyno; RSS idle and busy."""

from __future__ import annotations

import time
from collections import defaultdict

from bench.common import median
from bench.sections.core import Run, dyno_shape, fmt, measure_drain, ratio, settle, table, workers
from slackq.settings import usable_cpus


def section_drain(run: Run) -> None:
    impls = ["node", "port", "nofetch", "slackq", "dyno-1conn", "dyno"]
    medians: dict[int, dict[str, float]] = {}
    rss: dict[str, dict[str, int]] = {}
    for concurrency in (1, 10, 100):
        count = int((3000 if concurrency == 1 else 10000) * run.scale)
        single = dyno_shape(concurrency, usable_cpus())[0] == 1
        chosen = [i for i in impls if not (i.startswith("dyno") and single)
                  and not (i in ("nofetch", "dyno-1conn") and concurrency != 100)]
        samples: dict[str, list[float]] = defaultdict(list)
        busy: dict[str, list[int]] = defaultdict(list)
        with workers(run, chosen, concurrency) as started:
            if concurrency == 100:
                time.sleep(1.0)  # let start-up garbage settle before the idle reading
                rss = {impl: {"idle": w.rss_kb()} for impl, w in started.items()}
            for _ in range(run.reps):
                for impl, worker in started.items():
                    samples[impl].append(measure_drain(
                        run, worker, f"q-{impl}-{concurrency}", count, busy[impl]))
        settle(run)
        medians[concurrency] = {impl: median(values) for impl, values in samples.items()}
        if concurrency == 100:
            for impl, values in busy.items():
                rss[impl]["busy"] = max(values) if values else 0
    run.results["drain"] = medians
    run.results["rss_kb"] = rss
    processes = usable_cpus()
    run.print(f"### Drain, no-op processor (jobs/s, median of {run.reps}; the dyno runs "
              f"{processes} processes sharing the concurrency)")
    run.print()
    rows = []
    nan = float("nan")
    for concurrency, m in medians.items():
        dyno = m.get("dyno", m["slackq"])
        rows.append([str(concurrency), fmt(m["node"]), fmt(m["port"]), fmt(m.get("nofetch", nan)),
                     fmt(m["slackq"]), fmt(m.get("dyno-1conn", nan)), fmt(dyno),
                     ratio(m["port"], m["node"]), ratio(m["slackq"], m["node"]),
                     ratio(m.get("dyno-1conn", nan), m["node"]), ratio(dyno, m["node"])])
    table(run, ["concurrency per dyno", "Node", "port Worker",
                "slackq 1 proc, port's fetching + 1 connection", "slackq 1 proc",
                "slackq dyno, 1 connection/proc", "slackq dyno", "port/Node", "1 proc/Node",
                "dyno 1 conn/Node", "dyno/Node"], rows)
    run.print("### Memory (RSS, MB; busy = peak while draining at concurrency 100)")
    run.print()
    rows = [[impl, f"{v['idle'] / 1024:.1f}", f"{v.get('busy', 0) / 1024:.1f}"]
            for impl, v in rss.items()]
    table(run, ["worker", "idle", "busy"], rows)
