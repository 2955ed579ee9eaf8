"""The job contract shared by the producer, the worker and the Node services on the same queue.

A job is a BullMQ job on queue `QUEUE_NAME` under prefix `QUEUE_PREFIX`:

* `name`: the Slack event type for Events API callbacks (`app_mention`, `message`, ...).
* `data`: the Slack payload exactly as received (the whole `event_callback` envelope).
* `id`: Slack's `event_id`, so a redelivery cannot create a second job.

See docs/job-contract.md for the full, generated contract.
"""

from __future__ import annotations

from typing import Any

ATTEMPTS = 5
BACKOFF_DELAY_MS = 1_000
# Node BullMQ applies `jitter` itself; slackq workers apply the same formula (worker/retry.py).
BACKOFF_JITTER = 0.5
# Slack redelivers a failed event up to ~6 minutes later; dedupe for an hour, past job removal.
DEDUPLICATION_TTL_MS = 3_600_000
REMOVE_ON_COMPLETE = {"age": 3600, "count": 1000}
REMOVE_ON_FAIL = {"age": 86400}


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
    return job_id


def job_options(job_id: str) -> dict[str, Any]:
    """BullMQ options for one Slack job (the same keys Node's `JobsOptions` uses)."""
    validate_job_id(job_id)
    return {
        "jobId": job_id,
        "attempts": ATTEMPTS,
        "backoff": {"type": "exponential", "delay": BACKOFF_DELAY_MS, "jitter": BACKOFF_JITTER},
        "removeOnComplete": dict(REMOVE_ON_COMPLETE),
        "removeOnFail": dict(REMOVE_ON_FAIL),
        "deduplication": {"id": job_id, "ttl": DEDUPLICATION_TTL_MS},
    }
