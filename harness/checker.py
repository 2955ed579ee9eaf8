"""The verdict: compare what producers were told was stored with what workers did.

Pure functions over a `LedgerData`, unit-tested without Redis.

* lost: acknowledged ids with neither an effect nor a `failed` entry.
* duplicates: ids with two or more effects (expected: BullMQ is at-least-once).
* phantoms: effects for ids that were never sent (must be 0).
* For `powerloss`, a lost id is allowed when it was acknowledged at most `loss_window_seconds`
  before the kill that ended the server incarnation that stored it; anything older is
  `lost_outside_window`, a failure. For `crash` every lost id is a failure.
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
    max_ready_seconds: float | None
    loss_window_seconds: float | None
    lost_ids: list[str]
    verdict: Literal["pass", "fail"]
    reasons: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def loss_age(ack: Ack, kills: list[float]) -> float | None:
    """Seconds between the ack and the first kill after the successful attempt began.

    None when no kill followed: nothing can excuse that loss. An ack that arrived just after
    the kill (the reply was already on its way) counts as age 0.
    """
    index = bisect.bisect_right(kills, ack.sent_t)
    if index == len(kills):
        return None
    return max(0.0, kills[index] - ack.t)


def check(data: LedgerData, given: CheckInput) -> CheckResult:
    """Classify every acknowledged id and decide the verdict."""
    effected = {job_id for job_id, effects in data.effects.items() if effects}
    lost = sorted(set(data.acked) - effected - set(data.failed))
    ages = {job_id: loss_age(data.acked[job_id], data.kills) for job_id in lost}
    outside = [job_id for job_id, age in ages.items()
               if given.mode == "crash" or age is None or age > given.loss_window_seconds]
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
                       f"more than {given.loss_window_seconds:g} s before a kill")
    if phantoms:
        reasons.append(f"{len(phantoms)} effect(s) for ids never sent, e.g. {phantoms[:3]}")
    if result.kills < given.kills_planned:
        reasons.append(f"only {result.kills} of {given.kills_planned} planned kills happened")
    if result.acknowledged == 0:
        reasons.append("no job was acknowledged: nothing was tested")
    if given.undrained:
        reasons.append(f"queue did not drain: {given.undrained}")
    return reasons
