"""Helpers for the worker tests: put jobs on a real queue, wait on their state with deadlines."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from bullmq import Queue

from slackq.contract import JobOptions
from slackq.settings import Settings
from tests.processes import START_DEADLINE, Proc
from tests.slack_requests import app_mention_envelope

# The webhook's job options, with the settings' defaults.
JOBS = JobOptions.from_settings(Settings.model_construct())
STATES = ("wait", "active", "delayed", "completed", "failed", "prioritized")


async def add_mention(queue: Queue, event_id: str, *, name: str = "app_mention",
                      opts: dict[str, Any] | None = None, **envelope: Any) -> str:
    """Enqueue an `app_mention` envelope the way the webhook does (contract options)."""
    data = app_mention_envelope(event_id, **envelope)
    job = await queue.add(name, data, {**JOBS.for_job(event_id), **(opts or {})})
    return str(job.id)


def make_queue(settings: Settings) -> Queue:
    return Queue(settings.queue_name, {"connection": settings.redis_url,
                                       "prefix": settings.queue_prefix})


def job_key(settings: Settings, job_id: str) -> str:
    return f"{settings.queue_prefix}:{settings.queue_name}:{job_id}"


def state_key(settings: Settings, state: str) -> str:
    return f"{settings.queue_prefix}:{settings.queue_name}:{state}"


async def job_state(client: aioredis.Redis, settings: Settings, job_id: str) -> str | None:
    for state in STATES:
        key = state_key(settings, state)
        if state in {"wait", "active"}:
            if job_id in await client.lrange(key, 0, -1):
                return state
        elif await client.zscore(key, job_id) is not None:
            return state
    return None


def sync_job_state(client: redis.Redis, settings: Settings, job_id: str) -> str | None:
    for state in STATES:
        key = state_key(settings, state)
        if state in {"wait", "active"}:
            if job_id in client.lrange(key, 0, -1):
                return state
        elif client.zscore(key, job_id) is not None:
            return state
    return None


def log_events(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a process's output."""
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


class WorkerProc(Proc):
    """`python -m tests.worker_app` (the worker runtime with test handlers) as a real process."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(name, env, log_dir, [sys.executable, "-m", "tests.worker_app"])

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return [e for e in log_events(self.output()) if name is None or e.get("event") == name]

    def wait_for_event(self, name: str, timeout: float = START_DEADLINE,
                       **fields: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for event in self.events(name):
                if all(event.get(k) == v for k, v in fields.items()):
                    return event
            return None

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = found()
            if event is not None:
                return event
            if self.popen.poll() is not None:
                event = found()
                if event is not None:
                    return event
                raise AssertionError(
                    f"{self.name} exited {self.popen.returncode}:\n{self.output()}")
            time.sleep(0.02)
        raise AssertionError(f"{self.name} did not log {name} {fields} in {timeout}s:\n"
                             f"{self.output()[-4000:]}")
