"""One typed settings object, read from the environment once at each entry point."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from slackq.errors import ConfigError

DEFAULT_REDIS_URL = "redis://localhost:6379/0"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class Settings(BaseSettings):
    """Everything slackq reads from the environment (names are the upper-case field names)."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, frozen=True)

    redis_url: str = DEFAULT_REDIS_URL
    slack_signing_secret: SecretStr | None = None
    slack_bot_token: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api/"
    port: int = Field(default=3000, ge=1, le=65535)
    queue_name: str = Field(default="slack-events", min_length=1)
    queue_prefix: str = Field(default="bull", min_length=1)
    worker_concurrency: int = Field(default=10, ge=1, le=1000)
    # Worker processes per dyno under one supervisor (worker/supervisor.py); 1 = no supervisor.
    worker_processes: int = Field(default_factory=usable_cpus, ge=1, le=64)
    # Worker fast paths (worker/pool.py): fetch as Node does (the next job with each completion,
    # fetches in turn); more than 1 command connection per worker process replaces the port's
    # single connection with a pool, so that the commands of different jobs overlap.
    worker_fetch_next: bool = True
    worker_redis_connections: int = Field(default=4, ge=1, le=64)
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    # The worker serves Prometheus metrics on this port when set (docker-compose uses 9100).
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # The immediate reply to a stored slash command: empty (nothing shown) or ephemeral text.
    command_ack_text: str = Field(default="", validation_alias="SLACKQ_COMMAND_ACK_TEXT")
    # Development only: let the worker start on a Redis whose maxmemory-policy may evict jobs.
    allow_eviction: bool = Field(default=False, validation_alias="SLACKQ_ALLOW_EVICTION")
    # Worker runtime (worker/runner.py explains the defaults; README "Retries, rate limits and
    # shutdown").
    worker_grace_seconds: float = Field(default=25.0, ge=0, le=3600)
    worker_lock_duration_ms: int = Field(default=20_000, ge=100)
    worker_stalled_interval_ms: int = Field(default=5_000, ge=100)
    worker_run_retry_delay_ms: int = Field(default=1_000, ge=10)
    # Outbound Slack pacing, calls per second; 0 turns a limit off.
    worker_rate_per_channel: float = Field(default=1.0, ge=0)
    worker_rate_per_team: float = Field(default=10.0, ge=0)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("queue_name", "queue_prefix")
    @classmethod
    def _no_colon(cls, value: str) -> str:
        if ":" in value:
            raise ValueError("must not contain ':' (BullMQ uses it as the key separator)")
        return value

    def signing_secret(self) -> str:
        """The signing secret; the web process cannot verify anything without it."""
        return _required(self.slack_signing_secret, "SLACK_SIGNING_SECRET")

    def bot_token(self) -> str:
        """The bot token; the worker cannot call Slack without it."""
        return _required(self.slack_bot_token, "SLACK_BOT_TOKEN")


def _required(value: SecretStr | None, env_name: str) -> str:
    if value is None or not value.get_secret_value():
        raise ConfigError(f"missing required environment variable {env_name}")
    return value.get_secret_value()


def load_settings(*, require: tuple[str, ...] = ()) -> Settings:
    """Read the environment once; raise ConfigError with a one-line message naming the variable.

    `require` lists the variables this entry point cannot start without
    (`SLACK_SIGNING_SECRET` for the web process, `SLACK_BOT_TOKEN` for the worker).
    """
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "environment"
        raise ConfigError(f"invalid environment variable {name}: {first['msg']}") from None
    for env_name in require:
        getter = {"SLACK_SIGNING_SECRET": settings.signing_secret,
                  "SLACK_BOT_TOKEN": settings.bot_token}[env_name]
        getter()
    return settings
