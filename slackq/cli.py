"""`slackq`: the operator's command line, reading the same settings as the web and worker.

    slackq status               counts per state, worker connections, Redis version, memory,
                                eviction policy, AOF and fsync state
    slackq doctor               checks the Redis for production; exits 1 with the reasons
    slackq failed [--limit N]   failed jobs with their reasons (a job that does not parse gets
                                its own line, its problems named; text is escaped)
    slackq retry (--all | --name NAME)       attempts are kept: see `slackq retry --help`
    slackq clean --state STATE --age SECONDS [--limit N] [--yes]
    slackq installations        installed workspaces and their token expiry (multi-workspace
                                mode; never a token)
    slackq installations reencrypt
                                re-encrypt the stored tokens with SLACKQ_TOKEN_KEY's first key
    slackq sample-event [--url URL]          post one signed sample event to a webhook
    slackq dashboard [--port 8025]   the dashboard on 127.0.0.1 (`python -m dashboard`)

Every command takes `--json` for scripts. Exit codes: 0 fine, 1 doctor found problems (or the
operator declined a clean), 2 configuration or connection problem, or a clean of unprocessed
jobs without a terminal to ask at and without --yes (one line on stderr, never a password).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bullmq import Job, Queue
from redis.exceptions import RedisError

from slackq import sample_event
from slackq.connection import OPERATOR, redis_client
from slackq.doctor import Level, evaluate, gather_facts
from slackq.errors import SlackqError
from slackq.failed_jobs import FailedJobs, shown
from slackq.logging import redact
from slackq.preflight import describe, redis_location
from slackq.settings import Settings, load_settings

STATES = ("wait", "active", "delayed", "prioritized", "waiting-children", "paused",
          "completed", "failed")
CLEANABLE = ("completed", "failed", "wait", "delayed", "prioritized", "paused")
UNPROCESSED = ("wait", "delayed", "prioritized", "paused")


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


async def cmd_failed(ops: Ops, args: argparse.Namespace) -> int:
    rows = await FailedJobs(ops.client, ops.settings.queue_prefix,
                            ops.settings.queue_name).rows(args.limit)
    _emit(args, [row.as_dict() for row in rows],
          [row.line() for row in rows] or ["no failed jobs"])
    return 0


async def cmd_retry(ops: Ops, args: argparse.Namespace) -> int:
    if args.all:
        before = (await ops.queue.getJobCounts("failed"))["failed"]
        await ops.queue.retryJobs({"state": "failed", "count": 1000})
        after = (await ops.queue.getJobCounts("failed"))["failed"]
        _emit(args, {"retried": [f"{before - after} job(s)"], "skipped": []},
              [f"retried {before - after} job(s)"])
        return 0
    retried: list[str] = []
    skipped: list[dict[str, Any]] = []
    failed = FailedJobs(ops.client, ops.settings.queue_prefix, ops.settings.queue_name)
    for row in await failed.named(args.name):
        problem = "; ".join(row.problems) or await _retry_one(ops.queue, row.id)
        if problem:
            skipped.append({"id": row.id, "problem": problem})
        else:
            retried.append(row.id)
    lines = [f"retried {', '.join(map(shown, retried)) or 'nothing'}"]
    lines += [f"not retried {shown(s['id'])}: {s['problem']}" for s in skipped]
    _emit(args, {"retried": retried, "skipped": skipped}, lines)
    return 0


async def _retry_one(queue: Queue, job_id: str) -> str:
    """Retry one failed job; '' when done, else why not (one job's trouble stays its own)."""
    try:
        job = await Job.fromId(queue, job_id)
        if job is None:
            return "the job is gone"
        await job.retry("failed")
    except RedisError:
        raise
    except Exception as exc:  # a hostile job must not stop the others
        return shown(f"{type(exc).__name__}: {exc}")
    return ""


async def cmd_clean(ops: Ops, args: argparse.Namespace) -> int:
    if args.state in UNPROCESSED and not args.yes:
        count = (await ops.queue.getJobCounts(args.state))[args.state]
        if not _confirmed(f"{args.state} holds {count} job(s) never processed; remove those "
                          f"older than {args.age}s for good? [y/N] "):
            print(f"slackq clean: nothing removed ({args.state} jobs are Slack events not yet "
                  "handled; --yes removes them without asking)", file=sys.stderr)
            return 2 if not sys.stdin.isatty() else 1
    removed = await ops.queue.clean(args.age * 1000, args.limit, args.state)
    _emit(args, {"removed": list(removed)},
          [f"removed {len(removed)} {args.state} job(s) older than {args.age}s"])
    return 0


def _confirmed(question: str) -> bool:
    """The operator's yes at a terminal; never without one (a script must pass --yes)."""
    if not sys.stdin.isatty():
        return False
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


COMMANDS: dict[str, Callable[[Ops, argparse.Namespace], Awaitable[int]]] = {
    "status": cmd_status, "doctor": cmd_doctor, "failed": cmd_failed,
    "retry": cmd_retry, "clean": cmd_clean,
}


NAME_LIMIT = 100  # a team or org name in a listing line


def _installation_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in rows:
        # Ids and names come from Slack's answer (the installing org chose the names): each is
        # escaped for the terminal and bounded, so one row stays one line.
        ids = {key: shown(str(row[key] or "-"), NAME_LIMIT) for key in
               ("enterprise_id", "enterprise_name", "team_id", "team_name")}
        where = (f"org {ids['enterprise_id']} ({ids['enterprise_name']})" if row["org_wide"]
                 else f"team {ids['team_id']} ({ids['team_name']})"
                 + (f" in {ids['enterprise_id']}" if row["enterprise_id"] else ""))
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


RETRY_HELP = """Move failed jobs back to wait, as BullMQ's retry does.

Attempts are not reset: a job keeps its attemptsMade, so a job that used up its `attempts`
(JOB_ATTEMPTS) gets one more run, and fails for good if that run fails (no backoff retries).
A job that failed early keeps the retries it had left. --name reads each job on its own: a job
whose data does not parse is named on its own line and not retried; the others are.
"""

CLEAN_HELP = """Remove jobs of one state older than --age seconds (BullMQ's clean).

wait, delayed, prioritized and paused jobs are Slack events not yet handled: removing them
loses them, so clean asks first at a terminal, and refuses without one unless --yes is given.
"""

HELP = {"retry": RETRY_HELP, "clean": CLEAN_HELP}
SUMMARY = {
    "status": "jobs per state, worker connections, Redis memory, eviction policy, AOF",
    "doctor": "check the Redis for production (exit 1 with the reasons)",
    "failed": "failed jobs with their reasons",
    "retry": "move failed jobs back to wait (attempts are kept)",
    "clean": "remove jobs of one state older than --age seconds",
}


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slackq", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    installations = sub.add_parser(
        "installations", help="installed workspaces and their token expiry (multi-workspace)")
    installations.add_argument("action", nargs="?", choices=("list", "reencrypt"),
                               default="list")
    installations.add_argument("--json", action="store_true", help="machine-readable output")
    for name in COMMANDS:
        command = sub.add_parser(name, help=SUMMARY[name], description=HELP.get(name),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "failed":
            command.add_argument("--limit", type=_positive, default=50)
        elif name == "retry":
            which = command.add_mutually_exclusive_group(required=True)
            which.add_argument("--all", action="store_true", help="every failed job")
            which.add_argument("--name", help="failed jobs with this job name (event type)")
        elif name == "clean":
            command.add_argument("--state", choices=CLEANABLE, required=True)
            command.add_argument("--age", type=_positive, required=True,
                                 help="only jobs older than this many seconds (at least 1)")
            command.add_argument("--limit", type=int, default=0, help="0 = no limit")
            command.add_argument("--yes", action="store_true",
                                 help="remove unprocessed jobs without asking (for scripts)")
    sample = sub.add_parser("sample-event", description=sample_event.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            help="post one signed sample event to a webhook")
    sample_event.add_arguments(sample)
    return parser


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    ops = Ops(settings)
    try:
        return await COMMANDS[args.command](ops, args)
    finally:
        await ops.close()


def run_dashboard(argv: Sequence[str]) -> int:
    """`slackq dashboard`: becomes `python -m dashboard` (slackq imports no app package)."""
    os.execv(sys.executable, [sys.executable, "-m", "dashboard", *argv])


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["dashboard"]:
        return run_dashboard(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "sample-event":
        return sample_event.run(args)
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
