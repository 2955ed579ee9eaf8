"""The verdict: compare what producers were told was stored with what workers did.

Pure functions over a `LedgerData`, unit-tested without Redis.

* lost: acknowledged ids with neither an effect nor a `failed` entry.
* duplicates: ids with two or more effects (expected: BullMQ is at-least-once).
* phantoms: effects for ids that were never sent (must be 0).
* For `powerloss`, a lost id is allowed when it was acknowledged at most `loss_window_seconds`
  before the kill that ended the server incarnation that stored it; anything older is
  `lost_outside_window`, a failure. For `crash` every lost id is a failure.
* The window of one power cut is longer only when the disk measurably made it so: `everysec`
  loses what was written after the last fsync that completed before the cut began, and a write
  follows its ack by at most one fsync (Redis postpones it while one runs). So every ack older
  than the second-to-last completed AOF fsync before the cut was durable, whatever the disk's
  speed; when that fsync lies further back than `loss_window_seconds` (a starved or slow disk:
  fsyncs late), that distance is the cut's window (`kill_windows_seconds`). Without two such
  fsyncs (`appendfsync no`: none) the window stays `loss_window_seconds`.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from harness.ledger import Ack, LedgerData

Mode = Literal["crash", "powerloss"]
SAMPLE = 20


@dataclass(frozen=True)
class CheckInput:
    """What the campaign knows besides the ledger."""

    mode: Mode
    loss_window_seconds: float = 2.0
    kills_planned: int = 0
    undrained: dict[str, int] = field(default_factory=dict)


@dataclass
class CheckResult:
    acknowledged: int
    completed: int
    failed: int
    lost: int
    lost_outside_window: int
    duplicates: int
    phantoms: int
    kills: int
    # Per kill: seconds between the second-to-last AOF fsync that completed before the power
    # cut and the kill; None where unknown (crash mode, or fewer than two fsyncs).
    kill_windows_seconds: list[float | None]
    max_ready_seconds: float | None
    loss_window_seconds: float | None
    lost_ids: list[str]
    verdict: Literal["pass", "fail"]
    reasons: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def next_kill(ack: Ack, kills: list[float]) -> int | None:
    """Index of the first kill after the successful attempt began; None when none followed."""
    index = bisect.bisect_right(kills, ack.sent_t)
    return None if index == len(kills) else index


def loss_age(ack: Ack, kills: list[float]) -> float | None:
    """Seconds between the ack and the first kill after the successful attempt began.

    None when no kill followed: nothing can excuse that loss. An ack that arrived just after
    the kill (the reply was already on its way) counts as age 0.
    """
    index = next_kill(ack, kills)
    return None if index is None else max(0.0, kills[index] - ack.t)


def kill_windows(data: LedgerData) -> list[float | None]:
    """Per kill: how far back the disk's durability lagged (see the module docstring)."""
    windows: list[float | None] = []
    for number, killed_at in enumerate(data.kills, 1):
        windows.append(fsync_lag(killed_at, data.aof_fsyncs.get(number, [])))
    return windows


def fsync_lag(killed_at: float, fsyncs: list[float]) -> float | None:
    """Seconds from the second-to-last AOF fsync completed before a power cut to the kill (every
    fsync recorded completed before the cut; one may have finished after the kill); None
    without two."""
    ordered = sorted(fsyncs)
    return round(killed_at - ordered[-2], 3) if len(ordered) >= 2 else None


def allowed_age(given: CheckInput, window: float | None) -> float:
    return given.loss_window_seconds if window is None else max(given.loss_window_seconds, window)


def check(data: LedgerData, given: CheckInput) -> CheckResult:
    """Classify every acknowledged id and decide the verdict."""
    effected = {job_id for job_id, effects in data.effects.items() if effects}
    lost = sorted(set(data.acked) - effected - set(data.failed))
    ages = {job_id: loss_age(data.acked[job_id], data.kills) for job_id in lost}
    windows: list[float | None] = (kill_windows(data) if given.mode == "powerloss"
                                   else [None] * len(data.kills))

    def outside_window(job_id: str) -> bool:
        index = next_kill(data.acked[job_id], data.kills)
        age = ages[job_id]
        return (given.mode == "crash" or index is None or age is None
                or age > allowed_age(given, windows[index]))

    outside = [job_id for job_id in ages if outside_window(job_id)]
    known_ages = [age for age in ages.values() if age is not None]
    phantoms = sorted(effected - data.sent)
    duplicates = sum(1 for effects in data.effects.values() if len(effects) >= 2)
    result = CheckResult(
        acknowledged=len(data.acked),
        completed=len(set(data.acked) & effected),
        failed=len(set(data.acked) & set(data.failed)),
        lost=len(lost),
        lost_outside_window=len(outside),
        duplicates=duplicates,
        phantoms=len(phantoms),
        kills=len(data.kills),
        kill_windows_seconds=windows,
        max_ready_seconds=round(max(data.ready_seconds), 3) if data.ready_seconds else None,
        loss_window_seconds=round(max(known_ages), 3) if known_ages else None,
        lost_ids=sorted(outside)[:SAMPLE] or lost[:SAMPLE],
        verdict="pass",
        reasons=[],
    )
    result.reasons = _reasons(result, given, phantoms)
    result.verdict = "fail" if result.reasons else "pass"
    return result


def _reasons(result: CheckResult, given: CheckInput, phantoms: list[str]) -> list[str]:
    reasons = []
    if given.mode == "crash" and result.lost:
        reasons.append(f"{result.lost} acknowledged job(s) lost after a crash (allowed: 0)")
    if given.mode == "powerloss" and result.lost_outside_window:
        reasons.append(f"{result.lost_outside_window} acknowledged job(s) lost that were acked "
                       f"more than {given.loss_window_seconds:g} s before a kill (or than the "
                       f"disk's measured fsync lag, per kill: {result.kill_windows_seconds})")
    if phantoms:
        reasons.append(f"{len(phantoms)} effect(s) for ids never sent, e.g. {phantoms[:3]}")
    if result.kills < given.kills_planned:
        reasons.append(f"only {result.kills} of {given.kills_planned} planned kills happened")
    if result.acknowledged == 0:
        reasons.append("no job was acknowledged: nothing was tested")
    if given.undrained:
        reasons.append(f"queue did not drain: {given.undrained}")
    return reasons
