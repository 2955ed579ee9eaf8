"""`slackq`: the operator's command line, reading the same settings as the web and worker.

    slackq status               counts per state, worker connections, Redis version, memory,
                                eviction policy, AOF and fsync state
    slackq doctor               checks the Redis for production; exits 1 with the reasons
    slackq failed [--limit N]   failed jobs with their reasons
    slackq retry (--all | --name NAME)
    slackq clean --state STATE --age SECONDS [--limit N]
    slackq installations        installed workspaces and their token expiry (multi-workspace
                                mode; never a token)
    slackq installations reencrypt
                                re-encrypt the stored tokens with SLACKQ_TOKEN_KEY's first key

Every command takes `--json` for scripts. Exit codes: 0 fine, 1 doctor found problems,
2 configuration or connection problem (one line on stderr, never a password).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from bullmq import Queue
from redis.exceptions import RedisError

from slackq.connection import OPERATOR, redis_client
from slackq.doctor import Level, evaluate, gather_facts
from slackq.errors import SlackqError
from slackq.logging import redact
from slackq.preflight import describe, redis_location
from slackq.settings import Settings, load_settings

STATES = ("wait", "active", "delayed", "prioritized", "waiting-children", "paused",
          "completed", "failed")
CLEANABLE = ("completed", "failed", "wait", "delayed", "prioritized", "paused")


class Ops:
    """One Redis client and one BullMQ Queue for a command's lifetime."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = redis_client(settings.redis_url, OPERATOR)
        self.queue = Queue(settings.queue_name,
                           {"connection": self.client, "prefix": settings.queue_prefix})

    async def close(self) -> None:
        await self.queue.close()


def _emit(args: argparse.Namespace, data: Any, lines: list[str]) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else "\n".join(lines))


def _mb(value: int) -> str:
    return f"{value / 1024 / 1024:.1f} MB"


async def cmd_status(ops: Ops, args: argparse.Namespace) -> int:
    counts = await ops.queue.getJobCounts(*STATES)
    try:
        # Named connections: the port's Worker holds two (blocking + commands); a slackq worker
        # process up to WORKER_REDIS_CONNECTIONS + 1 (its pool, named as connections open).
        workers: int | None = len(await ops.queue.get_workers())
    except RedisError:  # CLIENT LIST denied (e.g. a stricter ACL than docs/security.md)
        workers = None
    facts = await gather_facts(ops.client, ops.settings.redis_url)
    memory = (f"{_mb(facts.used_memory)} of {_mb(facts.maxmemory)} "
              f"({facts.used_memory / facts.maxmemory:.0%})" if facts.maxmemory
              else f"{_mb(facts.used_memory)} (no maxmemory)")
    lines = [f"queue {ops.settings.queue_prefix}:{ops.settings.queue_name} on "
             f"{redis_location(ops.settings.redis_url)}"]
    lines += [f"  {state:<17}{counts.get(state, 0)}" for state in STATES]
    lines += [
        f"worker connections {'unknown (CLIENT LIST denied)' if workers is None else workers}",
        f"redis version      {facts.version}",
        f"memory             {memory}",
        f"eviction policy    {facts.eviction_policy}",
        f"aof                {'on' if facts.aof_enabled else 'off'}, appendfsync "
        f"{facts.appendfsync or 'unknown'}, last write {facts.aof_last_write_status}, "
        f"delayed fsyncs {facts.aof_delayed_fsync}",
    ]
    _emit(args, {"counts": counts, "worker_connections": workers, "redis": facts.as_dict()},
          lines)
    return 0


async def cmd_doctor(ops: Ops, args: argparse.Namespace) -> int:
    checks = evaluate(await gather_facts(ops.client, ops.settings.redis_url))
    failed = [check for check in checks if check.level is Level.FAIL]
    lines = [f"{check.level.value:<5} {check.name}: {check.detail}" for check in checks]
    lines.append(f"{len(failed)} problem(s)" if failed else "ready for production")
    _emit(args, {"ok": not failed, "checks": [
        {"name": c.name, "level": c.level.value, "detail": c.detail} for c in checks]}, lines)
    return 1 if failed else 0


def _iso(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat() if ms else None


async def cmd_failed(ops: Ops, args: argparse.Namespace) -> int:
    jobs = await ops.queue.getJobs(["failed"], 0, args.limit - 1)
    rows = [{"id": job.id, "name": job.name, "attempts": job.attemptsMade,
             "failed_at": _iso(job.finishedOn),
             "reason": redact(str(job.failedReason or ""))[:300]} for job in jobs]
    lines = [f"{r['id']}  {r['name']}  attempts={r['attempts']}  {r['failed_at']}  {r['reason']}"
             for r in rows] or ["no failed jobs"]
    _emit(args, rows, lines)
    return 0


async def cmd_retry(ops: Ops, args: argparse.Namespace) -> int:
    if args.all:
        before = (await ops.queue.getJobCounts("failed"))["failed"]
        await ops.queue.retryJobs({"state": "failed", "count": 1000})
        after = (await ops.queue.getJobCounts("failed"))["failed"]
        retried = [f"{before - after} job(s)"]
    else:
        jobs = await ops.queue.getJobs(["failed"], 0, -1)
        retried = []
        for job in jobs:
            if job.name == args.name:
                await job.retry("failed")
                retried.append(str(job.id))
    _emit(args, {"retried": retried}, [f"retried {', '.join(retried) or 'nothing'}"])
    return 0


async def cmd_clean(ops: Ops, args: argparse.Namespace) -> int:
    removed = await ops.queue.clean(args.age * 1000, args.limit, args.state)
    _emit(args, {"removed": list(removed)},
          [f"removed {len(removed)} {args.state} job(s) older than {args.age}s"])
    return 0


COMMANDS: dict[str, Callable[[Ops, argparse.Namespace], Awaitable[int]]] = {
    "status": cmd_status, "doctor": cmd_doctor, "failed": cmd_failed,
    "retry": cmd_retry, "clean": cmd_clean,
}


def _installation_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in rows:
        where = (f"org {row['enterprise_id']} ({row['enterprise_name'] or '-'})" if row["org_wide"]
                 else f"team {row['team_id']} ({row['team_name'] or '-'})"
                 + (f" in {row['enterprise_id']}" if row["enterprise_id"] else ""))
        expiry = (f"token expires {row['token_expires_at']}" if row["token_expires_at"]
                  else "token does not expire")
        lines.append(redact(f"{where}  installed {row['installed_at']}  {expiry}"))
    return lines or ["no installations"]


async def cmd_installations(settings: Settings, args: argparse.Namespace) -> int:
    from slackq.installations import list_installations, open_db, reencrypt

    db = open_db(settings)
    try:
        await db.create_tables()  # a store nobody has installed into yet lists nothing
        if args.action == "reencrypt":
            count = await reencrypt(db)
            _emit(args, {"reencrypted_rows": count}, [f"re-encrypted {count} row(s)"])
        else:
            rows = await list_installations(db)
            _emit(args, rows, _installation_lines(rows))
    finally:
        await db.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slackq", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    installations = sub.add_parser("installations")
    installations.add_argument("action", nargs="?", choices=("list", "reencrypt"),
                               default="list")
    installations.add_argument("--json", action="store_true", help="machine-readable output")
    for name in COMMANDS:
        command = sub.add_parser(name)
        command.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "failed":
            command.add_argument("--limit", type=int, default=50)
        elif name == "retry":
            which = command.add_mutually_exclusive_group(required=True)
            which.add_argument("--all", action="store_true", help="every failed job")
            which.add_argument("--name", help="failed jobs with this job name (event type)")
        elif name == "clean":
            command.add_argument("--state", choices=CLEANABLE, required=True)
            command.add_argument("--age", type=int, required=True,
                                 help="only jobs older than this many seconds")
            command.add_argument("--limit", type=int, default=0, help="0 = no limit")
    return parser


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    ops = Ops(settings)
    try:
        return await COMMANDS[args.command](ops, args)
    finally:
        await ops.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SlackqError as exc:
        print(f"slackq {args.command}: {exc}", file=sys.stderr)
        return 2
    if args.command == "installations":
        return _installations(settings, args)
    try:
        return asyncio.run(_run(settings, args))
    except (RedisError, OSError) as exc:
        print(f"slackq {args.command}: {describe(settings.redis_url, exc)}", file=sys.stderr)
    return 2


def _installations(settings: Settings, args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    if settings.workspace_mode() != "multi":
        print("slackq installations: multi-workspace mode only (SLACK_CLIENT_ID + "
              "SLACK_CLIENT_SECRET)", file=sys.stderr)
        return 2
    try:
        return asyncio.run(cmd_installations(settings, args))
    except SlackqError as exc:
        print(f"slackq installations: {exc}", file=sys.stderr)
    except (SQLAlchemyError, OSError) as exc:  # the URL holds a password: the type only
        print(f"slackq installations: the database (DATABASE_URL) failed: "
              f"{type(exc).__name__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
