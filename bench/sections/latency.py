"""Latency section: add -> `completed` at a fixed 500 jobs/s, with the workers' and Redis'
CPU."""

from __future__ import annotations

import json
import subprocess
import time
from collections import defaultdict

from bench.common import NODE_DIR, median, percentile
from bench.sections.core import (
    ROOT,
    Run,
    base_env,
    base_label,
    dyno_shape,
    fmt,
    queue_of,
    ratio,
    server_cpu,
    settle,
    table,
    workers,
)
from slackq.settings import usable_cpus


def latency_probe(run: Run, queue_name: str, rate: float, seconds: float,
                  warmup: float) -> list[float]:
    """bench/node/latency.js: adds at `rate`/s (open loop), times each until `completed`.

    The probe is the same program for every worker under test, and a light one (Node), so that
    it perturbs the 2-core machine as little as possible.
    """
    argv = ["node", str(NODE_DIR / "latency.js"), run.url, queue_name, str(rate), str(seconds),
            str(warmup), run.tag()]
    out = subprocess.run(argv, env=base_env(run), capture_output=True, text=True, check=False,
                         cwd=ROOT, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"latency probe failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["lost"]:
        run.print(f"- {queue_name}: {result['lost']} jobs not completed 10 s after the last add")
    return [float(v) for v in result["latencies_ms"]]


TRICKLE_RATE = 20.0  # jobs/s: a quiet queue, where the dyno's second process must stay idle


def measure_at(run: Run, impls: list[str], rate: float, seconds: float,
               warmup: float) -> dict[str, dict[str, float]]:
    """Latency and CPU at a fixed `rate`; each worker `run.reps` times, workers interleaved.

    CPU is per job added (the probe adds rate * seconds jobs, the warm-up included): the
    probe's start-up and tail, when no job arrives, do not dilute it.
    """
    concurrency = 10
    jobs = int(rate * seconds)
    samples: dict[str, dict[str, list[float]]] = {impl: defaultdict(list) for impl in impls}
    for _ in range(run.reps):
        for impl in impls:
            with workers(run, [impl], concurrency) as started:
                worker = started[impl]
                time.sleep(0.5)
                cpu_before, server_before = worker.cpu_seconds(), server_cpu(run)
                latencies = latency_probe(run, queue_of(impl, concurrency), rate, seconds, warmup)
                cpu_us = (worker.cpu_seconds() - cpu_before) / jobs * 1e6
                redis_us = (server_cpu(run) - server_before) / jobs * 1e6
            settle(run)
            for key, value in (("p50", percentile(latencies, 0.5)),
                               ("p99", percentile(latencies, 0.99)), ("cpu_us", cpu_us),
                               ("redis_us", redis_us), ("n", len(latencies))):
                samples[impl][key].append(value)
    return {impl: {key: median(values) for key, values in by_key.items()}
            for impl, by_key in samples.items()}


def _labels(impls: list[str]) -> dict[str, str]:
    processes, per_process = dyno_shape(10, usable_cpus())
    names = {"node": "Node", "port": "port Worker as shipped", "slackq": "slackq, 1 process",
             "dyno": f"slackq dyno ({processes} processes x {per_process})"}
    return {impl: base_label(impl, names[impl.removesuffix("@base")]) for impl in impls}


def section_latency(run: Run) -> None:
    """End-to-end latency and worker CPU at 500 jobs/s (`section_trickle`: at 20 jobs/s)."""
    rate, seconds, warmup = 500.0, max(3.0, 8.0 * run.scale), 1.0
    impls = run.with_base(["node", "port", "slackq", "dyno"], "slackq", "dyno")
    results = measure_at(run, impls, rate, seconds, warmup)
    run.results["latency"] = results
    run.print(f"### End-to-end latency at {rate:.0f} jobs/s, {int(rate * seconds)} jobs in "
              f"{seconds:.0f} s (add -> `completed` event; the first {warmup:.0f} s untimed; "
              f"worker concurrency 10 per dyno; median of {run.reps})")
    run.print()
    node, labels = results["node"], _labels(impls)
    rows = [[labels[impl], f"{r['p50']:.2f}", f"{r['p99']:.2f}", ratio(r["p99"], node["p99"]),
             f"{r['cpu_us'] * rate / 1e4:.0f}%", fmt(r["cpu_us"]),
             ratio(r["cpu_us"], node["cpu_us"]),
             f"{r['redis_us'] * rate / 1e4:.0f}%", str(int(r["n"]))]
            for impl, r in results.items()]
    table(run, ["worker", "p50 ms", "p99 ms", "p99/Node", "worker CPU at 500 jobs/s (of one core)",
                "worker CPU µs/job", "CPU/Node", "Redis CPU", "jobs timed"], rows)


def section_trickle(run: Run) -> None:
    """A quiet queue: does the dyno's second process wake for jobs the first one takes?"""
    rate, seconds, warmup = TRICKLE_RATE, max(5.0, 10.0 * run.scale), 1.0
    impls = run.with_base(["node", "slackq", "dyno"], "slackq", "dyno")
    results = measure_at(run, impls, rate, seconds, warmup)
    run.results["trickle"] = results
    run.print(f"### A trickle: {rate:.0f} jobs/s for {seconds:.0f} s (worker concurrency 10 per "
              f"dyno; median of {run.reps})")
    run.print()
    node, one, labels = results["node"], results["slackq"], _labels(impls)
    rows = [[labels[impl], f"{r['p50']:.2f}", f"{r['p99']:.2f}", fmt(r["cpu_us"]),
             ratio(r["cpu_us"], node["cpu_us"]), ratio(r["cpu_us"], one["cpu_us"])]
            for impl, r in results.items()]
    table(run, ["worker", "p50 ms", "p99 ms", "worker CPU µs/job", "CPU/Node",
                "CPU/slackq 1 process"], rows)
