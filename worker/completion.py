"""How a job's end reaches Redis: its effect records and lease with its completion, retried
until Redis takes them.

Once Slack accepted a call, its effect must not be repeated while this process lives. So the
run's answers (kept in memory by `EffectRun`) travel with the job's completion, in the same
transaction as the port's `moveToFinished` (`slackq.bullmq_seam.complete_with`: one round trip),
and a completion Redis refuses (memory full, unreachable, failing over) is sent again with the
process's backoff (`worker/outage.py`) while the port keeps renewing the job's lock. It stops
when Redis takes it, or when a forced shutdown cancels the job. A job that ends otherwise
(failed, deferred) settles its effects the same way before the port moves it
(`EffectLog.settle_durably`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.effects import EffectLog, EffectRun
from worker.outage import RedisOutage, is_transient


class Completion:
    """`CompletionHooks` for `complete_with`: the runs in flight and their effects."""

    def __init__(self, effects: EffectLog | None, outage: RedisOutage) -> None:
        self.effects = effects
        self.outage = outage
        self.runs: dict[tuple[str, str], EffectRun] = {}

    def begin(self, run: EffectRun) -> None:
        self.runs[(run.job_id, run.token)] = run

    def commands(self, job_id: str, token: str) -> Sequence[tuple[Any, ...]]:
        run = self.runs.get((job_id, token))
        if run is None or self.effects is None:
            return ()
        command = self.effects.settle_command(run)
        return () if command is None else (command,)

    async def retry(self, error: Exception) -> None:
        if not is_transient(error):
            raise error
        await self.outage.backoff(error, "completion")

    async def unapplied(self, job_id: str, token: str, error: Exception) -> None:
        """The job completed but its effects' settle was refused (`NOSCRIPT` after a Redis
        restart): send it alone, retried until Redis takes it, before the completion returns.
        The job stays in this process's hands meanwhile, so the guarantee is the same as for a
        run that ends without a completion."""
        run = self.runs.get((job_id, token))
        if run is not None and self.effects is not None:
            self.effects.log_unapplied(run, error)
            await self.effects.settle_durably(run)

    def settled(self, job_id: str, token: str) -> None:
        self.outage.succeeded()
        run = self.runs.pop((job_id, token), None)
        if run is not None and self.effects is not None:
            self.effects.settled(run)

    async def end(self, run: EffectRun) -> None:
        """The run ends without a completion (failed, deferred): settle its effects first."""
        try:
            if self.effects is not None:
                await self.effects.settle_durably(run)
        finally:
            self.runs.pop((run.job_id, run.token), None)
