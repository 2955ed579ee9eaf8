"""One typed settings object, read from the environment once at each entry point."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from slackq.ack import AckDurability
from slackq.errors import ConfigError
from slackq.redis_url import (
    URL_SCHEMES,
    cluster_address,
    has_hash_tag,
    is_cluster,
    sentinel_address,
    with_sentinel_option,
    with_sentinel_password,
)

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_QUEUE_PREFIX = "bull"
DEFAULT_CLUSTER_QUEUE_PREFIX = "{bull}"  # a hash tag: every key of the queue in one slot
# One Slack workspace (a bot token) or many (an OAuth app's client id and secret).
WorkspaceMode = Literal["single", "multi"]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class Settings(BaseSettings):
    """Everything slackq reads from the environment (names are the upper-case field names)."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, frozen=True)

    redis_url: str = Field(
        default=DEFAULT_REDIS_URL,
        description="The Redis that holds the queue: `redis://`, `rediss://` (TLS) or `unix://`, "
                    "with user and password when it needs them. `python3 dev.py run` starts an "
                    "embedded Redis when this is not set. Behind Sentinel: "
                    "`redis+sentinel://[[user]:password@]host:port[,host:port…]/<master-name>"
                    "[/<db>]` (`rediss+sentinel://` for TLS), listing the sentinels; the "
                    "credentials are the data nodes'. Redis Cluster: "
                    "`redis+cluster://[[user]:password@]host:port[,host:port…]` "
                    "(`rediss+cluster://` for TLS), listing any of its nodes; QUEUE_PREFIX must "
                    "then hold a hash tag (docs/high-availability.md).")
    redis_sentinel_password: SecretStr | None = Field(
        default=None,
        description="The sentinels' own password, when they have one (`requirepass` in "
                    "sentinel.conf). Only with a `redis+sentinel://` REDIS_URL.")
    redis_sentinel_check_seconds: float = Field(
        default=1.0, ge=0, le=60,
        description="Behind Sentinel, how often each process asks the sentinels which node is "
                    "the primary, and moves all its Redis clients off the one they are on when "
                    "a majority of them names another. A primary cut off from its sentinels but "
                    "not from its clients gives them no error until the partition heals: "
                    "without this check the web and the workers stay on it, and what the "
                    "workers complete there is discarded with it. One `SENTINEL "
                    "GET-MASTER-ADDR-BY-NAME` per sentinel per process; `0` turns the check off "
                    "(docs/high-availability.md).")
    ack_durability: str = Field(
        default="memory",
        description="What a 200 to Slack promises about the stored job. `memory`: it is in the "
                    "primary's memory (AOF `everysec` writes it to disk within a second). "
                    "`replicas:N`: also on at least N replicas (`WAIT`), so it survives a "
                    "failover. `fsync`: also in the primary's AOF on disk; `fsync+replicas:N`: "
                    "and in N replicas' AOF (`WAITAOF`: Redis 7.2 or later with `appendfsync "
                    "always`; the web process refuses to start otherwise). Not confirmed within "
                    "ACK_TIMEOUT_MS: 503 (docs/high-availability.md).")
    ack_timeout_ms: int = Field(
        default=500, ge=1, le=2_500,
        description="How long the webhook waits for ACK_DURABILITY's confirmation before it "
                    "answers 503 (the job may be stored; Slack's redelivery of it stores "
                    "nothing new). Below WEBHOOK_ENQUEUE_BUDGET_SECONDS. `fsync+replicas:N` "
                    "needs more than 1000: replicas report their AOF fsync once a second.")
    slack_signing_secret: SecretStr | None = Field(
        default=None,
        description="Your Slack app's signing secret: the web process verifies every request "
                    "with it. Required by the web process.")
    slack_bot_token: SecretStr | None = Field(
        default=None,
        description="The bot token (`xoxb-…`) the worker calls the Slack Web API with: "
                    "single-workspace mode. Set either this or `SLACK_CLIENT_ID` + "
                    "`SLACK_CLIENT_SECRET`; the worker needs one of them.")
    slack_client_id: str | None = Field(
        default=None,
        description="Your Slack app's client id. With `SLACK_CLIENT_SECRET` (and no "
                    "`SLACK_BOT_TOKEN`) it turns on multi-workspace mode: installs through "
                    "`/slack/install`, one bot token per workspace (docs/multi-workspace.md).")
    slack_client_secret: SecretStr | None = Field(
        default=None,
        description="Your Slack app's client secret (multi-workspace mode): exchanges install "
                    "codes and refresh tokens with `oauth.v2.access`.")
    slack_scopes: str = Field(
        default="app_mentions:read,chat:write,commands",
        description="Bot scopes asked for at install, comma-separated (multi-workspace mode).")
    slack_user_scopes: str = Field(
        default="",
        description="User scopes asked for at install, comma-separated; usually none.")
    slack_redirect_uri: str | None = Field(
        default=None,
        description="The OAuth redirect URL sent to Slack (`https://<host>/slack/oauth_redirect`)."
                    " Not set: Slack uses the app's only configured redirect URL.")
    slack_authorize_url: str = Field(
        default="https://slack.com/oauth/v2/authorize",
        description="Where `/slack/install` sends the browser to approve the app (tests point "
                    "it at a stand-in).")
    slack_install_success_url: str | None = Field(
        default=None,
        description="Where the browser goes after a successful install. Not set: a short "
                    "success page.")
    slack_token_refresh_seconds: int = Field(
        default=7_200, ge=0, le=43_200,
        description="With token rotation on, a bot token is refreshed when it expires within "
                    "this many seconds (Slack's tokens live 12 hours).")
    database_url: SecretStr | None = Field(
        default=None,
        description="The installation store (multi-workspace mode): `postgresql://user:pass@host:"
                    "port/db` (also `postgres://`, as Heroku and Railway give it) or "
                    "`sqlite:////absolute/path.db`. `python3 dev.py run` defaults it to "
                    "`var/slackq.db`.")
    token_key: SecretStr | None = Field(
        default=None, validation_alias="SLACKQ_TOKEN_KEY",
        description="Fernet key(s) that encrypt the stored tokens, comma-separated; the first "
                    "encrypts, all decrypt (rotate by prepending a new key, then run "
                    "`slackq installations reencrypt`). Required in multi-workspace mode; "
                    "`python3 dev.py run` creates one in `var/token.key`.")
    installation_cache_seconds: float = Field(
        default=10.0, ge=0, le=3600, validation_alias="SLACKQ_INSTALLATION_CACHE_SECONDS",
        description="How long a worker process reuses a workspace's bot token before reading "
                    "the installation store again (an uninstall drops it at once in every "
                    "worker, announced over Redis pub/sub). `0` reads it for every job.")
    slack_api_url: str = Field(
        default="https://slack.com/api/",
        description="Base URL of the Slack Web API. Point it at a local stand-in to run "
                    "without a Slack workspace.")
    port: int = Field(default=3000, ge=1, le=65535,
                      description="The port the web process listens on (Heroku and Railway "
                                  "set it).")
    web_max_concurrency: int = Field(
        default=1000, ge=2, le=100_000,
        description="Connections (and requests in progress) the web process serves at once; "
                    "a request beyond it gets 503 at once rather than a slower answer for "
                    "everyone. Slack redelivers events after a 503, not commands or clicks: "
                    "size it for the busiest burst.")
    web_header_timeout_seconds: float = Field(
        default=5.0, gt=0, le=300,
        description="How long the web process waits for a request's headers, from the "
                    "connection's start or the end of the previous answer; a connection "
                    "that sends them slower (or nothing) is closed.")
    web_body_timeout_seconds: float = Field(
        default=5.0, gt=0, le=300,
        description="How long the web process waits for a request's whole body; a client "
                    "slower than this gets 408 and its connection is closed. Slack sends "
                    "its body at once and gives up on an answer after 3 s.")
    queue_name: str = Field(default="slack-events", min_length=1,
                            description="The BullMQ queue the jobs go to; Node BullMQ services "
                                        "sharing the queue use the same name. No `:`.")
    queue_prefix: str = Field(
        default=DEFAULT_QUEUE_PREFIX, min_length=1,
        description="BullMQ's key prefix: every key of the queue (and every key slackq keeps "
                    "beside it) is `<prefix>:…`. No `:`. With a `redis+cluster://` REDIS_URL "
                    f"the default is `{DEFAULT_CLUSTER_QUEUE_PREFIX}`, and a prefix without a "
                    "hash tag (`{name}`) is refused: BullMQ's scripts need all of a queue's "
                    "keys in one slot. Node BullMQ services must use the same prefix.")
    worker_concurrency: int = Field(default=10, ge=1, le=1000,
                                    description="Jobs in flight at once in each worker process.")
    worker_processes: int = Field(
        default_factory=usable_cpus, ge=1, le=64,
        description="Worker processes per worker dyno, under one supervisor that forwards "
                    "signals and restarts a process that dies. `1` runs no supervisor and spends "
                    "less CPU on a quiet queue.")
    worker_restart_delay_seconds: float = Field(
        default=0.5, gt=0, le=3600,
        description="Wait before restarting a worker process that died or could not be started; "
                    "it doubles with each quick failure in a row.")
    worker_restart_max_delay_seconds: float = Field(
        default=30.0, gt=0, le=3600,
        description="The longest wait between restarts of a worker process; one that ran at "
                    "least this long before dying starts the doubling over.")
    worker_fetch_next: bool = Field(
        default=True,
        description="Fetch jobs as Node BullMQ does: each completion also fetches the next job, "
                    "and fetches take turns. Off runs the BullMQ port's own fetch loop.")
    worker_redis_connections: int = Field(
        default=4, ge=1, le=64,
        description="BullMQ command connections per worker process, a pool shared by its jobs "
                    "(plus one for the blocking wait). `1` keeps the port's single connection.")
    worker_metrics_points: int = Field(
        default=10080, ge=0, le=100_000,
        description="Minutes of BullMQ's per-minute completed and failed counts the workers keep "
                    "in Redis for the dashboard's charts (its `metrics` option, written by the "
                    "completion's own script: no extra command). 10080 is a week, ~2 small "
                    "lists of that many numbers; `0` keeps none.")
    log_format: Literal["json", "console"] | None = Field(
        default=None,
        description="`json` (one JSON object per line) or `console` (readable lines). Not set: "
                    "`console` when stderr is a terminal, `json` otherwise.")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        default="info",
        description="The lowest level logged. `warning` drops the `job_completed` line each "
                    "job writes.")
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="When set, the worker dyno serves Prometheus metrics of all its processes "
                    "on this port (docker-compose sets 9100).")
    command_ack_text: str = Field(
        default="", validation_alias="SLACKQ_COMMAND_ACK_TEXT",
        description="The immediate reply to a stored slash command, shown only to the user who "
                    "ran it. Empty: Slack shows nothing.")
    webhook_enqueue_budget_seconds: float = Field(
        default=2.0, gt=0, le=2.9,
        description="How long the webhook may spend storing one job, retries included, before "
                    "it answers 503 (Slack redelivers events); Slack gives up after 3 s.")
    webhook_redis_timeout_seconds: float = Field(
        default=0.5, gt=0,
        description="The webhook's timeout for one Redis command and for connecting; below the "
                    "enqueue budget, so that a stalled attempt leaves time for a retry.")
    webhook_retry_backoff_seconds: float = Field(
        default=0.02, gt=0,
        description="The webhook's first wait between attempts to store a job (jittered, "
                    "doubling).")
    webhook_retry_backoff_max_seconds: float = Field(
        default=0.25, gt=0,
        description="The longest wait between two of the webhook's attempts to store a job.")
    allow_eviction: bool = Field(
        default=False, validation_alias="SLACKQ_ALLOW_EVICTION",
        description="Development only: let the worker start on a Redis whose "
                    "`maxmemory-policy` is not `noeviction`, where an evicted job is a lost "
                    "event.")
    # worker/runner.py explains why these defaults differ from BullMQ's.
    worker_fetch_turn_file: str | None = Field(
        default=None,
        description="Set by the worker supervisor for its worker processes, not by hand: the "
                    "lock file on which they take turns to wait for new jobs, so that at a "
                    "trickle one process takes the jobs and the others sleep "
                    "(worker/fetch_turn.py).")
    worker_grace_seconds: float = Field(
        default=25.0, ge=0, le=3600,
        description="How long a worker waits for in-flight jobs after SIGTERM/SIGINT before it "
                    "force-closes; keep it under the platform's limit (Heroku: 30 s).")
    worker_lock_duration_ms: int = Field(
        default=20_000, ge=100,
        description="BullMQ's job lock: a crashed worker's job is run again by another worker "
                    "once its lock has expired.")
    worker_stalled_interval_ms: int = Field(
        default=5_000, ge=100,
        description="How often each worker looks for stalled jobs (locks that expired).")
    worker_max_stalled_count: int = Field(
        default=1, ge=0, le=1000,
        description="How many times a job may be found stalled (its worker lost the job's lock) "
                    "and put back to wait before it fails instead.")
    worker_run_retry_delay_ms: int = Field(
        default=1_000, ge=10,
        description="The pause between fetch attempts while Redis is unreachable.")
    worker_rate_per_channel: float = Field(
        default=1.0, ge=0,
        description="Outbound Slack calls per second per channel, across all worker processes. "
                    "`0` turns the limit off.")
    worker_rate_per_team: float = Field(
        default=10.0, ge=0,
        description="Outbound Slack calls per second per team (workspace), with one second's "
                    "burst, across all worker processes. `0` turns the limit off.")
    # Options of every job this deployment enqueues (slackq/contract.py). A job enqueued by
    # another producer (a Node service) carries its own; the worker follows the job's.
    job_attempts: int = Field(
        default=5, ge=1, le=1000,
        description="How many times a job runs at most, retries included (BullMQ `attempts`).")
    job_backoff_delay_ms: int = Field(
        default=1_000, ge=0,
        description="Wait before the first retry; it doubles for each later retry "
                    "(BullMQ `backoff.delay`, type `exponential`).")
    job_backoff_jitter: float = Field(
        default=0.5, ge=0, le=1,
        description="Fraction of each retry's wait that is random, so that jobs failing together "
                    "do not retry together (BullMQ `backoff.jitter`).")
    job_keep_completed_seconds: int = Field(
        default=3_600, ge=1,
        description="How long a completed job stays in Redis (BullMQ `removeOnComplete.age`).")
    job_keep_completed_count: int = Field(
        default=1_000, ge=0,
        description="At most this many completed jobs stay in Redis "
                    "(BullMQ `removeOnComplete.count`).")
    job_keep_failed_seconds: int = Field(
        default=86_400, ge=1,
        description="How long a failed job stays in Redis for inspection, with its error "
                    "(BullMQ `removeOnFail.age`).")
    job_keep_failed_count: int = Field(
        default=10_000, ge=0,
        description="At most this many failed jobs stay in Redis (BullMQ `removeOnFail.count`): "
                    "with `JOB_KEEP_FAILED_SECONDS` alone, a revoked token failing every job "
                    "fills Redis. `0` keeps none.")
    job_deduplication_ttl_ms: int = Field(
        default=3_600_000, ge=1,
        description="How long a Slack delivery's id is remembered, even after its job is gone, so "
                    "that a redelivery (Slack retries for ~6 minutes) adds nothing "
                    "(BullMQ `deduplication.ttl`).")
    admin_user: str = Field(
        default="admin", min_length=1,
        description="The dashboard's login that may act (retry, remove, pause...).")
    admin_password: SecretStr | None = Field(
        default=None,
        description="Turns the dashboard on at `/admin` in the web process, behind HTTP Basic "
                    "auth as `ADMIN_USER`. Not set: `/admin` is not served at all (404).")
    admin_readonly_password: SecretStr | None = Field(
        default=None,
        description="When set, user `readonly` with this password may look at the dashboard "
                    "but not act.")

    @model_validator(mode="after")
    def _attempt_fits_budget(self) -> Settings:
        if self.webhook_redis_timeout_seconds >= self.webhook_enqueue_budget_seconds:
            raise ValueError("WEBHOOK_REDIS_TIMEOUT_SECONDS must be below "
                             "WEBHOOK_ENQUEUE_BUDGET_SECONDS")
        if self.ack_timeout_ms / 1000 >= self.webhook_enqueue_budget_seconds:
            raise ValueError("ACK_TIMEOUT_MS must be below WEBHOOK_ENQUEUE_BUDGET_SECONDS (the "
                             "confirmation is part of storing the job)")
        return self

    @model_validator(mode="after")
    def _sentinel_options_in_url(self) -> Settings:
        """Every client is built from REDIS_URL alone: the sentinels' password and the primary
        watch's period ride in it."""
        url = self.redis_url
        password = self.redis_sentinel_password
        if password is not None and password.get_secret_value():
            if sentinel_address(url) is None:
                raise ValueError("REDIS_SENTINEL_PASSWORD needs a redis+sentinel:// REDIS_URL")
            url = with_sentinel_password(url, password.get_secret_value())
        if self.redis_sentinel_check_seconds and sentinel_address(url) is not None:
            url = with_sentinel_option(url, "sentinel_check_seconds",
                                       f"{self.redis_sentinel_check_seconds:g}")
        object.__setattr__(self, "redis_url", url)  # frozen: set once, while validating
        return self

    @model_validator(mode="after")
    def _cluster_prefix(self) -> Settings:
        """On a cluster every key of the queue must hash to one slot: a hash-tagged prefix."""
        if not is_cluster(self.redis_url):
            return self
        if "queue_prefix" not in self.model_fields_set:
            object.__setattr__(self, "queue_prefix", DEFAULT_CLUSTER_QUEUE_PREFIX)  # frozen
        elif not has_hash_tag(self.queue_prefix):
            raise ValueError(
                f"QUEUE_PREFIX {self.queue_prefix[:64]!r} has no hash tag, which a "
                f"redis+cluster:// REDIS_URL needs (e.g. {DEFAULT_CLUSTER_QUEUE_PREFIX}: BullMQ's "
                "scripts need all of a queue's keys in one slot)")
        return self

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(URL_SCHEMES):
            raise ValueError("must start with " + ", ".join(URL_SCHEMES))
        sentinel_address(value)  # ValueError names the expected form
        cluster_address(value)
        return value

    @field_validator("ack_durability")
    @classmethod
    def _ack_durability(cls, value: str) -> str:
        AckDurability.parse(value)  # ValueError names the accepted forms
        return value.strip().lower()

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

    def workspace_mode(self) -> WorkspaceMode | None:
        """`single` (a bot token), `multi` (client id + secret) or None (neither).

        Raises ConfigError when both are set, or half of the client credentials.
        """
        token = _given(self.slack_bot_token)
        client = {"SLACK_CLIENT_ID": bool(self.slack_client_id),
                  "SLACK_CLIENT_SECRET": _given(self.slack_client_secret)}
        if token and any(client.values()):
            named = " + ".join(name for name, given in client.items() if given)
            raise ConfigError(f"SLACK_BOT_TOKEN and {named} are set together: use SLACK_BOT_TOKEN "
                              "for one workspace or SLACK_CLIENT_ID + SLACK_CLIENT_SECRET for "
                              "many, not both")
        if token:
            return "single"
        if all(client.values()):
            return "multi"
        if any(client.values()):
            missing = next(name for name, given in client.items() if not given)
            raise ConfigError(f"missing required environment variable {missing} "
                              "(multi-workspace mode needs SLACK_CLIENT_ID and "
                              "SLACK_CLIENT_SECRET)")
        return None

    def client_secret(self) -> str:
        """The app's client secret (multi-workspace mode)."""
        return _required(self.slack_client_secret, "SLACK_CLIENT_SECRET")

    def database(self) -> str:
        """The installation store's URL (multi-workspace mode); never log it."""
        return _required(self.database_url, "DATABASE_URL")

    def token_keys(self) -> str:
        """The Fernet key(s) of the stored tokens (multi-workspace mode)."""
        return _required(self.token_key, "SLACKQ_TOKEN_KEY")

    def bot_token(self) -> str:
        """The bot token; the worker cannot call Slack without it."""
        return _required(self.slack_bot_token, "SLACK_BOT_TOKEN")


def _given(value: SecretStr | None) -> bool:
    return value is not None and bool(value.get_secret_value())


def _required(value: SecretStr | None, env_name: str) -> str:
    if not _given(value):
        raise ConfigError(f"missing required environment variable {env_name}")
    assert value is not None
    return value.get_secret_value()


def load_settings(*, require: tuple[str, ...] = (), workspace: bool = False,
                  store: bool = True) -> Settings:
    """Read the environment once; raise ConfigError with a one-line message naming the variable.

    `require` lists the variables this entry point cannot start without
    (`SLACK_SIGNING_SECRET` for the web process). `workspace`: it cannot start without a Slack
    workspace mode either (the worker): `SLACK_BOT_TOKEN`, or `SLACK_CLIENT_ID` +
    `SLACK_CLIENT_SECRET`. A bot token and client credentials together are always refused, and
    multi-workspace mode needs `DATABASE_URL` and `SLACKQ_TOKEN_KEY` (unless `store` is False:
    the run command fills them in).
    """
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a check across variables; its message names them
            raise ConfigError(f"invalid environment: {first['msg']}") from None
        name = str(first["loc"][0]).upper()
        raise ConfigError(f"invalid environment variable {name}: {first['msg']}") from None
    for env_name in require:
        getter = {"SLACK_SIGNING_SECRET": settings.signing_secret,
                  "SLACK_BOT_TOKEN": settings.bot_token}[env_name]
        getter()
    mode = settings.workspace_mode()
    if mode is None and workspace:
        raise ConfigError("missing required environment variable SLACK_BOT_TOKEN (one "
                          "workspace) or SLACK_CLIENT_ID + SLACK_CLIENT_SECRET (many)")
    if mode == "multi" and store:
        settings.database()
        settings.token_keys()
    return settings
