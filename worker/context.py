"""What a handler gets for one job: its data, a logger, and Slack calls that are paced and
recorded (so a re-run after a crash skips what already happened)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from slack_sdk.web.async_client import AsyncWebClient
from structlog.typing import FilteringBoundLogger

from slackq.models import Envelope
from worker.effects import EffectLog, EffectRun
from worker.errors import SlackPermanentError, SlackRateLimited, WorkerError
from worker.limiter import Limiter
from worker.slack import call_slack, refused

if TYPE_CHECKING:
    from worker.tokens import WorkspaceTokens

# Longest Slack-provided value (a channel id, a message ts) a log field carries.
LOG_VALUE_CHARS = 64


def bounded(value: Any, limit: int = LOG_VALUE_CHARS) -> Any:
    """`value` cut to `limit` characters if it is a string (Slack's data is not ours to trust)."""
    return value[:limit] if isinstance(value, str) else value

# Slack's answers that a token is no longer good: the cached one is dropped at once.
DEAD_TOKEN_ERRORS = frozenset({"invalid_auth", "token_revoked", "token_expired",
                               "account_inactive", "not_authed"})

# Calls that post into a channel and therefore count against Slack's per-channel pace.
PACED_METHODS = frozenset({
    "chat.postMessage", "chat.postEphemeral", "chat.update", "chat.meMessage",
    "chat.scheduleMessage", "reactions.add",
})


@dataclass(frozen=True)
class JobSlack:
    """The Web API as one job sees it: `await ctx.slack.call("chat.postMessage", channel=...)`."""

    client: AsyncWebClient
    job_id: str
    team_id: str
    log: FilteringBoundLogger
    limiter: Limiter | None = None
    effects: EffectLog | None = None
    run: EffectRun | None = None
    # Multi-workspace mode: the token comes from the envelope's installation, per call.
    tokens: WorkspaceTokens | None = None
    envelope: Envelope | None = None

    async def call(
        self, method: str, *, effect: str | None = None, **params: Any
    ) -> dict[str, Any]:
        """Call `method` once per job.

        `effect` names the side effect (default: the method); give distinct names when a handler
        makes the same call twice. A re-run returns the recorded result instead of calling again.
        Raises `PacingLimited` when the channel or team is over its pace, `EffectLeased` /
        `EffectUnsettled` when another run of this job may be making the call (the job is
        delayed in each case).
        """
        name = effect or method
        token = await self._token()  # before any pacing or claim: no installation, no Slack call
        channel = params.get("channel")
        paced = self.limiter is not None and method in PACED_METHODS and isinstance(channel, str)
        effects, run = self.effects, self.run
        if paced and (effects is None or run is None):
            assert self.limiter is not None and isinstance(channel, str)
            await self.limiter.acquire(self.team_id, channel, self.job_id)
        if effects is not None and run is not None:
            pacing = None
            if paced:  # the pacing check and the claim: one script call
                assert self.limiter is not None and isinstance(channel, str)
                pacing = (self.limiter.keys(self.team_id, channel, self.job_id),
                          self.limiter.args())
            claim = await effects.claim(self.job_id, name, run.token, pacing)
            if claim.recorded is not None:
                self.log.info("slack_effect_skipped", effect=name, recorded=claim.recorded)
                return {"ok": True, **claim.recorded, "skipped": True}
            run.leased = True
            if claim.duplicate:
                self.log.warning("slack_effect_possible_duplicate", effect=name)
        try:
            result = await call_slack(self.client, method, params, token)
        except WorkerError as exc:
            await self._after_error(exc, name, channel)
            raise
        if effects is not None and run is not None:
            effects.accepted(run, name, result)  # kept until Redis has it, whatever happens
        return result

    async def _token(self) -> str | None:
        if self.tokens is None or self.envelope is None:
            return None  # single-workspace mode: the client's own token
        return await self.tokens.token_for(self.envelope)

    async def _after_error(self, error: WorkerError, name: str, channel: Any) -> None:
        if (isinstance(error, SlackPermanentError) and error.code in DEAD_TOKEN_ERRORS
                and self.tokens is not None and self.envelope is not None):
            self.tokens.forget(self.envelope)
        if self.effects is not None and self.run is not None and self.run.leased:
            # No answer to record: a later run must not wait for one.
            await self.effects.abandon(self.job_id, name, self.run.token, refused=refused(error))
        if isinstance(error, SlackRateLimited) and self.limiter is not None and isinstance(
                channel, str):
            await self.limiter.hold(self.team_id, channel, error.delay_seconds)


@dataclass(frozen=True)
class JobContext:
    """What a handler gets: the job's name, id, attempt and data, Slack calls and a logger."""

    name: str
    job_id: str
    attempt: int
    data: dict[str, Any]
    slack: JobSlack
    log: FilteringBoundLogger
    envelope: Envelope | None = field(default=None)
    # Multi-workspace mode: the installation store (the uninstall handlers change it).
    workspaces: WorkspaceTokens | None = field(default=None)

    def annotate(self, **fields: Any) -> None:
        """Put `fields` on this job's remaining log lines, its outcome line (`job_completed`,
        or a failure's) included: what an operator needs to know about what the job did,
        without a line of its own per job. The Dispatcher drops them when the next job starts.
        Bound Slack-provided values (`bounded`): they land in every line."""
        structlog.contextvars.bind_contextvars(**fields)

    @property
    def event(self) -> dict[str, Any]:
        """The inner Slack event of an Events API envelope."""
        event = self.data.get("event")
        return event if isinstance(event, dict) else {}
