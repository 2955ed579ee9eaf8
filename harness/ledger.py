"""The ledger: append-only JSONL files outside the Redis under test.

Producers append `sent` (every attempt) and `acked` (once Redis answered); workers append one
`effect` per execution; the chaos controller appends `kill`, `power_cut` (with the disk's AOF
fsync times) and `ready`; the campaign appends `failed` for jobs that ended in BullMQ's failed
set. Every line is one JSON object with a `kind` and a wall-clock time `t`, so a ledger can be
re-checked later (`python -m harness check DIR`) and edited by hand to prove the checker catches
a loss.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

FILES = ("producer.jsonl", "worker.jsonl", "chaos.jsonl")


class Ledger:
    """Writes records, one flushed line each, to `producer`, `worker` and `chaos` files."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._files: dict[str, IO[str]] = {
            name: (directory / f"{name}.jsonl").open("a", encoding="utf-8", buffering=1)
            for name in ("producer", "worker", "chaos")
        }

    def _append(self, file: str, record: dict[str, Any]) -> None:
        self._files[file].write(json.dumps(record, separators=(",", ":")) + "\n")

    def sent(self, job_id: str, attempt: int) -> float:
        now = time.time()
        self._append("producer", {"kind": "sent", "id": job_id, "attempt": attempt, "t": now})
        return now

    def acked(self, job_id: str, sent_at: float) -> None:
        self._append("producer", {"kind": "acked", "id": job_id, "sent_t": sent_at,
                                  "t": time.time()})

    def effect(self, job_id: str, attempt: int, worker: str) -> None:
        self._append("worker", {"kind": "effect", "id": job_id, "attempt": attempt,
                                "worker": worker, "t": time.time()})

    def failed(self, job_id: str, reason: str) -> None:
        self._append("worker", {"kind": "failed", "id": job_id, "reason": reason[:200],
                                "t": time.time()})

    def kill(self, number: int, detail: dict[str, Any]) -> float:
        now = time.time()
        self._append("chaos", {"kind": "kill", "n": number, "t": now, **detail})
        return now

    def power_cut(self, number: int, aof_fsyncs: list[float]) -> None:
        """The power cut after kill `number`, with the times at which the disk made AOF data
        durable since the previous kill (`harness.chaos`)."""
        self._append("chaos", {"kind": "power_cut", "n": number, "aof_fsyncs": aof_fsyncs,
                               "t": time.time()})

    def ready(self, number: int, seconds: float) -> None:
        self._append("chaos", {"kind": "ready", "n": number, "seconds": seconds,
                               "t": time.time()})

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()


@dataclass(frozen=True)
class Ack:
    """When the producer's successful attempt started, and when Redis answered it."""

    sent_t: float
    t: float


@dataclass(frozen=True)
class Effect:
    attempt: int
    worker: str
    t: float


@dataclass
class LedgerData:
    """Everything the checker needs, read back from a ledger directory."""

    sent: set[str] = field(default_factory=set)
    acked: dict[str, Ack] = field(default_factory=dict)
    effects: dict[str, list[Effect]] = field(default_factory=lambda: defaultdict(list))
    failed: dict[str, str] = field(default_factory=dict)
    kills: list[float] = field(default_factory=list)
    # Power cut number (1-based, in kill order) -> AOF fsync completion times before it.
    aof_fsyncs: dict[int, list[float]] = field(default_factory=dict)
    ready_seconds: list[float] = field(default_factory=list)


def read_ledger(directory: Path) -> LedgerData:
    """Parse every ledger file in `directory` (a torn last line, if any, is ignored)."""
    data = LedgerData()
    for name in FILES:
        path = directory / name
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            _apply(data, record)
    data.kills.sort()
    return data


def _apply(data: LedgerData, record: dict[str, Any]) -> None:
    kind = record.get("kind")
    if kind == "sent":
        data.sent.add(record["id"])
    elif kind == "acked":
        data.acked[record["id"]] = Ack(sent_t=record["sent_t"], t=record["t"])
    elif kind == "effect":
        data.effects[record["id"]].append(
            Effect(attempt=record["attempt"], worker=record["worker"], t=record["t"]))
    elif kind == "failed":
        data.failed[record["id"]] = record.get("reason", "")
    elif kind == "kill":
        data.kills.append(record["t"])
    elif kind == "power_cut":
        data.aof_fsyncs[int(record["n"])] = [float(at) for at in record["aof_fsyncs"]]
    elif kind == "ready":
        data.ready_seconds.append(record["seconds"])
