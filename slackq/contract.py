"""The job contract shared by the producer, the worker and the Node services on the same queue.

A job is a BullMQ job on queue `QUEUE_NAME` under prefix `QUEUE_PREFIX`:

* `name`: the Slack event type for Events API callbacks (`app_mention`, `message`, ...).
* `data`: the Slack payload as received (the whole `event_callback` envelope), without the
  fields in `DROPPED_DATA_FIELDS`.
* `id`: Slack's `event_id`, so a redelivery cannot create a second job.

See docs/job-contract.md for the full, generated contract.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from slackq.retry_policy import RetryPolicy
from slackq.settings import Settings

# The tracebacks a failed job keeps (BullMQ `stackTraceLimit`): the last attempt's. Each attempt
# appends one (~2 KB) and `failedReason` already says what went wrong; five of them made a
# failed job ~14 KB. A constant, not a setting: nobody tunes how much of a traceback to keep.
STACK_TRACE_LIMIT = 1


class InvalidJobId(ValueError):
    """A job id that Node BullMQ would reject (integer-like or containing ':')."""


def validate_job_id(job_id: str) -> str:
    """Return `job_id` if both BullMQ for Node and the Python port accept it.

    Node BullMQ rejects ids that parse as integers (they collide with its own counter ids) and ids
    containing ':' (the key separator); the Python port checks neither. Node's integer test is
    `String(parseInt(id, 10)) === id`, which also refuses the id "NaN".
    """
    if not job_id:
        raise InvalidJobId("job id is empty")
    if ":" in job_id:
        raise InvalidJobId(f"job id {job_id!r} contains ':'")
    if job_id.lstrip("-").isdigit() or job_id == "NaN":
        raise InvalidJobId(f"job id {job_id!r} is integer-like")
    if _js_negative_number(job_id):
        raise InvalidJobId(f"job id {job_id!r} reads as a negative number")
    return job_id


# JavaScript's `Number(text)` for a signed decimal, after trimming white space (the BOM too).
_JS_SIGNED_DECIMAL = re.compile(
    r"[\s\ufeff]*-(Infinity|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)[\s\ufeff]*")


def _js_negative_number(job_id: str) -> bool:
    """Would JavaScript read `job_id` as a number below zero (`" -5" < 0`, `"-1e3" < 0`)?

    Node BullMQ's `addJob` takes a reply below zero for one of its scripts' error codes, so such
    an id, which passes its own validation, makes Node's `Queue.add` fail ("Unknown code -5").
    """
    match = _JS_SIGNED_DECIMAL.fullmatch(job_id)
    if match is None:
        return False
    return float(match.group(1).replace("Infinity", "inf")) != 0


# Slack's legacy verification `token` comes with every event, command and interaction: one
# shared secret of the app (anyone holding it could once forge requests). It has no use once the
# signature is checked, and a job's data is read by every consumer, logged on failure, shown by
# dashboards: it is never stored.
DROPPED_DATA_FIELDS = ("token",)


def stored_data(payload: dict[str, Any]) -> dict[str, Any]:
    """The job data of a Slack payload: the payload without `DROPPED_DATA_FIELDS` (a copy)."""
    return {key: value for key, value in payload.items() if key not in DROPPED_DATA_FIELDS}


@dataclass(frozen=True)
class JobOptions:
    """The options every job of this deployment carries, from the settings (`JOB_*`)."""

    retry: RetryPolicy
    keep_completed_seconds: int
    keep_completed_count: int
    keep_failed_seconds: int
    keep_failed_count: int
    deduplication_ttl_ms: int

    @classmethod
    def from_settings(cls, settings: Settings) -> JobOptions:
        return cls(
            retry=RetryPolicy.from_settings(settings),
            keep_completed_seconds=settings.job_keep_completed_seconds,
            keep_completed_count=settings.job_keep_completed_count,
            keep_failed_seconds=settings.job_keep_failed_seconds,
            keep_failed_count=settings.job_keep_failed_count,
            deduplication_ttl_ms=settings.job_deduplication_ttl_ms,
        )

    def for_job(self, job_id: str) -> dict[str, Any]:
        """BullMQ options for one Slack job (the same keys Node's `JobsOptions` uses)."""
        validate_job_id(job_id)
        return {
            "jobId": job_id,
            **self.retry.to_opts(),
            "removeOnComplete": {"age": self.keep_completed_seconds,
                                 "count": self.keep_completed_count},
            "removeOnFail": {"age": self.keep_failed_seconds, "count": self.keep_failed_count},
            "stackTraceLimit": STACK_TRACE_LIMIT,
            "deduplication": {"id": job_id, "ttl": self.deduplication_ttl_ms},
        }


def job_options(job_id: str, settings: Settings) -> dict[str, Any]:
    """BullMQ options for one Slack job under `settings` (`JobOptions.for_job`)."""
    return JobOptions.from_settings(settings).for_job(job_id)
