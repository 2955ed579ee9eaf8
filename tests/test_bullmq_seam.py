"""slackq/bullmq_seam.py: the port is the version it was written for, still has every internal
it relies on, and nothing else in slackq touches the port's internals.

Each check fails with the name of the seam function that would break. No Redis is needed: the
port builds its clients without connecting. (Behaviour over a real Redis is covered by
test_worker_fast_path.py, test_producer_batching.py and the worker tests.)
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from bullmq import Job, Queue, Worker
from packaging.requirements import Requirement

from slackq import bullmq_seam
from slackq.bullmq_seam import STANDARD_JOB_KEYS, standard_add_calls

ROOT = Path(__file__).resolve().parent.parent
SEAM_NAME = "slackq.bullmq_seam"
DEAD_URL = "redis://127.0.0.1:1/0"  # never connected to: the port connects lazily


def pinned(package: str) -> Requirement:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for line in dependencies:
        requirement = Requirement(line)
        if requirement.name == package:
            return requirement
    raise AssertionError(f"pyproject.toml does not list {package}")


def test_the_installed_port_is_the_pinned_version_the_seam_was_written_for() -> None:
    installed = importlib.metadata.version("bullmq")
    specifier = str(pinned("bullmq").specifier)
    assert specifier == f"=={bullmq_seam.PORT_VERSION}", (
        f"pyproject.toml pins bullmq{specifier}, slackq/bullmq_seam.py was written for "
        f"{bullmq_seam.PORT_VERSION}: re-check every seam function, then update PORT_VERSION")
    assert installed == bullmq_seam.PORT_VERSION, (
        f"bullmq {installed} is installed, slackq/bullmq_seam.py was written for "
        f"{bullmq_seam.PORT_VERSION}: every seam function may break")


# (seam function, "module:qualified.name" in the port, its parameters as the seam calls them)
SIGNATURES: list[tuple[str, str, list[str]]] = [
    ("FetchNextWorker", "bullmq.worker:Worker.__init__", ["self", "name", "processor", "opts"]),
    ("FetchNextWorker", "bullmq.worker:Worker.getNextJob", ["self", "token"]),
    ("FetchNextWorker", "bullmq.worker:Worker.processJob", ["self", "job", "token"]),
    ("FetchNextWorker", "bullmq.worker:Worker.nextJobFromJobData",
     ["self", "job_data", "job_id", "limit_until", "delay_until", "token"]),
    ("FetchNextWorker", "bullmq.backends.redis_backend:RedisBackend.moveToCompleted",
     ["self", "job", "return_value", "remove_on_complete", "token", "fetch_next"]),
    ("FetchNextWorker", "bullmq.event_emitter:EventEmitter.emit",
     ["self", "event_name", "args", "kwargs"]),
    # FetchNextWorker.run: what the port's run() does before and around its loop.
    ("FetchNextWorker", "bullmq.worker:Worker.run", ["self"]),
    ("FetchNextWorker", "bullmq.worker:Worker.retryIfFailed", ["self", "fn", "opts"]),
    ("FetchNextWorker", "bullmq.worker:Worker._ensure_client_names", ["self"]),
    ("FetchNextWorker", "bullmq.worker:Worker.runStalledJobsCheck", ["self"]),
    ("FetchNextWorker", "bullmq.timer:Timer.__init__",
     ["self", "interval", "callback", "emit_callback", "args", "kwargs"]),
    ("FetchNextWorker", "bullmq.lock_manager:LockManager.start", ["self"]),
    ("load_server_capabilities", "bullmq.redis_connection:RedisConnection.getRedisVersion",
     ["self"]),
    ("standard_add_calls", "bullmq.scripts:Scripts.getKeys", ["self", "keys"]),
    ("standard_add_calls", "bullmq.scripts:Scripts.addJobArgs", ["self", "job"]),
    ("standard_add_calls", "bullmq.scripts:Scripts.addStandardJob",
     ["self", "job", "timestamp", "pipe"]),
    ("set_retry_delay", "bullmq.job:Job.moveToFailed", ["self", "err", "token", "fetchNext"]),
    ("renew_locks_until_jobs_end", "bullmq.lock_manager:LockManager.close", ["self"]),
]

# (seam function, "module:qualified.name", text its source must contain: what the seam relies on)
SOURCE_FACTS: list[tuple[str, str, str]] = [
    # The override of backend.moveToCompleted is what processJob calls, with fetch_next=False.
    ("FetchNextWorker", "bullmq.worker:Worker.processJob",
     "await self.backend.moveToCompleted(job, result, job.opts.get(\"removeOnComplete\", False), "
     "token, fetch_next=False)"),
    # What moveToFinished returns with fetchNext: the job to process next.
    ("FetchNextWorker", "bullmq.worker:Worker.moveToActive",
     "job_data, id, limit_until, delay_until = result"),
    ("FetchNextWorker", "bullmq.backends.redis_backend:RedisBackend.moveToCompleted",
     'return {"result": result, "finishedOn": args[1]}'),
    # FetchNextWorker.run does what the port's run() does around its loop...
    ("FetchNextWorker", "bullmq.worker:Worker.run", "await self._ensure_client_names()"),
    ("FetchNextWorker", "bullmq.worker:Worker.run", "self.lockManager.start()"),
    ("FetchNextWorker", "bullmq.worker:Worker.run",
     'self.stalledCheckTimer = Timer(self.opts.get( "stalledInterval") / 1000, '
     "self.runStalledJobsCheck, self.emit)"),
    ("FetchNextWorker", "bullmq.worker:Worker.run", "await self.resume_event.wait()"),
    ("FetchNextWorker", "bullmq.worker:Worker.run", '"only_emit_error": True'),
    # ...and its slots are the tasks pause() and close() wait for and a forced close cancels.
    ("FetchNextWorker", "bullmq.worker:Worker.pause",
     "asyncio.wait(self.processing, return_when=asyncio.ALL_COMPLETED)"),
    ("FetchNextWorker", "bullmq.worker:Worker.close",
     "await asyncio.wait(self.processing, return_when=asyncio.ALL_COMPLETED)"),
    ("FetchNextWorker", "bullmq.worker:Worker.close", "self.cancelProcessing()"),
    ("FetchNextWorker", "bullmq.worker:Worker.cancelProcessing", "for job in self.processing:"),
    ("FetchNextWorker", "bullmq.worker:Worker.resume", "self.resume_event.set()"),
    ("in_flight_jobs", "bullmq.worker:Worker.processJob", "self.jobs.add((job, token))"),
    ("load_server_capabilities", "bullmq.redis_connection:RedisConnection.getRedisVersion",
     "IMPORTANT! Eviction policy"),
    ("set_retry_delay", "bullmq.job:Job.moveToFailed", "self.opts.get('backoff')"),
    ("standard_add_calls", "bullmq.scripts:Scripts.addStandardJob", "args.append(timestamp)"),
    # The lock manager's close is what run() and close() call to stop renewing locks.
    ("renew_locks_until_jobs_end", "bullmq.worker:Worker.run", "await self.lockManager.close()"),
    ("renew_locks_until_jobs_end", "bullmq.worker:Worker.close",
     "await self.lockManager.close()"),
    ("renew_locks_until_jobs_end", "bullmq.worker:Worker.close", "self.forceClosing = True"),
]


def resolve(path: str) -> Any:
    module_name, _, qualified = path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualified.split("."):
        target = getattr(target, part)
    return target


def signature_problem(seam: str, path: str, expected: list[str]) -> str | None:
    """Why `seam` would break on `path`'s signature, or None."""
    try:
        parameters = list(inspect.signature(resolve(path)).parameters)
    except (AttributeError, ImportError) as exc:
        return f"slackq.bullmq_seam.{seam} would break: the port has no {path} ({exc})"
    if parameters != expected:
        return (f"slackq.bullmq_seam.{seam} would break: {path} takes {parameters}, "
                f"the seam was written for {expected}")
    return None


def source_problem(seam: str, path: str, needle: str) -> str | None:
    """Why `seam` would break on what `path` does, or None."""
    try:
        source = inspect.getsource(resolve(path))
    except (AttributeError, ImportError) as exc:
        return f"slackq.bullmq_seam.{seam} would break: the port has no {path} ({exc})"
    if needle not in " ".join(source.split()):
        return (f"slackq.bullmq_seam.{seam} would break: {path} no longer does "
                f"`{needle}`")
    return None


@pytest.mark.parametrize(("seam", "path", "expected"), SIGNATURES,
                         ids=[f"{seam}:{path.partition(':')[2]}" for seam, path, _ in SIGNATURES])
def test_the_port_methods_the_seam_calls_keep_their_signatures(
    seam: str, path: str, expected: list[str]
) -> None:
    problem = signature_problem(seam, path, expected)
    assert problem is None, problem


@pytest.mark.parametrize(("seam", "path", "needle"), SOURCE_FACTS,
                         ids=[f"{seam}:{path.partition(':')[2]}" for seam, path, _ in SOURCE_FACTS])
def test_the_port_still_does_what_the_seam_relies_on(seam: str, path: str, needle: str) -> None:
    problem = source_problem(seam, path, needle)
    assert problem is None, problem


@pytest.mark.parametrize("problem", [
    signature_problem("FetchNextWorker", "bullmq.worker:Worker.noSuchMethod", []),
    signature_problem("FetchNextWorker", "bullmq.worker:Worker.getNextJob", ["self"]),
    source_problem("in_flight_jobs", "bullmq.worker:Worker.processJob", "self.jobs.add(job)"),
    source_problem("in_flight_jobs", "bullmq.no_such_module:Worker", "anything"),
], ids=["missing", "changed-signature", "changed-source", "missing-module"])
def test_a_changed_port_is_reported_with_the_seam_that_breaks(problem: str | None) -> None:
    assert problem is not None and "slackq.bullmq_seam." in problem


@pytest.fixture
async def worker() -> Iterator[Worker]:
    built = Worker("seam", None, {"connection": DEAD_URL, "autorun": False})
    yield built
    await built.close()


@pytest.fixture
async def queue() -> Iterator[Queue]:
    built = Queue("seam", {"connection": DEAD_URL, "prefix": "bull"})
    yield built
    await built.close()


async def test_a_worker_has_the_attributes_the_seam_uses(worker: Worker) -> None:
    """FetchNextWorker, set_worker_retry, load_server_capabilities, in_flight_jobs,
    renew_locks_until_jobs_end."""
    for name in ("backend", "closing", "paused", "jobs", "redisConnection",
                 "blockingRedisConnection", "lockManager", "processing", "forceClosing",
                 "closed", "running", "waiting", "resume_event", "id"):
        assert hasattr(worker, name), (
            f"{SEAM_NAME} would break: a port Worker has no `{name}` "
            "(FetchNextWorker, set_worker_retry, load_server_capabilities, in_flight_jobs, "
            "renew_locks_until_jobs_end)")
    assert worker.closing is False and worker.paused is False, (
        f"{SEAM_NAME}.FetchNextWorker would break: Worker.closing / .paused are not flags")
    assert worker.processing == set() and worker.forceClosing is False, (
        f"{SEAM_NAME}.renew_locks_until_jobs_end would break: Worker.processing is not a set "
        "of tasks, or forceClosing not a flag")
    assert inspect.iscoroutinefunction(worker.lockManager.close), (
        f"{SEAM_NAME}.renew_locks_until_jobs_end would break: the lock manager's close is not "
        "a coroutine")
    assert worker.jobs == set(), (
        f"{SEAM_NAME}.in_flight_jobs would break: Worker.jobs is not a set of (job, token)")
    assert inspect.iscoroutinefunction(worker.backend.moveToCompleted), (
        f"{SEAM_NAME}.FetchNextWorker would break: the worker's backend has no coroutine "
        "moveToCompleted to replace")
    for connection in (worker.redisConnection, worker.blockingRedisConnection):
        assert isinstance(connection.conn, aioredis.Redis), (
            f"{SEAM_NAME}.set_worker_retry would break: the port's RedisConnection has no "
            "redis-py client `.conn`")
        assert inspect.iscoroutinefunction(connection.getRedisVersion), (
            f"{SEAM_NAME}.load_server_capabilities would break: "
            "RedisConnection.getRedisVersion is not a coroutine")
    assert worker.redisConnection.conn is not worker.blockingRedisConnection.conn, (
        f"{SEAM_NAME}.set_worker_retry would break: the port no longer builds a separate "
        "blocking client from options")


async def test_a_worker_given_a_client_uses_it_for_both_connections() -> None:
    """set_worker_retry on a pooled Worker sets the retry of the pool's client."""
    client = aioredis.Redis.from_url(DEAD_URL)
    worker = Worker("seam", None, {"connection": client, "autorun": False})
    try:
        assert worker.redisConnection.conn is client, (
            f"{SEAM_NAME}.set_worker_retry would break: the commands client is not the one given")
        assert worker.blockingRedisConnection.conn is client, (
            f"{SEAM_NAME}.set_worker_retry would break: the blocking client is not the one given")
    finally:
        await worker.close()


async def test_a_queue_given_a_client_sends_through_it() -> None:
    """queue_client: the batcher's pipelines go through the producer's own pool."""
    client = aioredis.Redis.from_url(DEAD_URL)
    queue = Queue("seam", {"connection": client})
    try:
        assert bullmq_seam.queue_client(queue) is client, (
            f"{SEAM_NAME}.queue_client would break: Queue.client is not the client it was given")
    finally:
        await queue.close()


async def test_a_queue_has_the_client_and_scripts_the_seam_uses(queue: Queue) -> None:
    """queue_client, standard_add_calls."""
    assert isinstance(bullmq_seam.queue_client(queue), aioredis.Redis), (
        "slackq.bullmq_seam.queue_client would break: Queue.client is not a redis-py client")
    script = queue.scripts.commands.get("addStandardJob")
    assert script is not None and re.fullmatch(r"[0-9a-f]{40}", script.sha), (
        "slackq.bullmq_seam.standard_add_calls would break: Queue.scripts.commands has no "
        "addStandardJob script with a SHA")


def test_add_standard_job_takes_the_keys_the_seam_sends() -> None:
    """standard_add_calls: addStandardJob-9.lua's KEYS, as its header documents them."""
    definitions = resolve("bullmq.redis_connection:SCRIPT_DEFINITIONS")
    assert definitions.get("addStandardJob") == f"addStandardJob-{len(STANDARD_JOB_KEYS)}.lua", (
        "slackq.bullmq_seam.standard_add_calls would break: the addStandardJob script is now "
        f"{definitions.get('addStandardJob')}")
    lua = Path(inspect.getfile(Queue)).parent / "commands" / definitions["addStandardJob"]
    header = lua.read_text().split("]]", 1)[0]  # the comment block that documents the script
    documented = [name for _, name in re.findall(r"KEYS\[(\d+)\]\s+'?([\w-]+)", header)]
    assert documented == list(STANDARD_JOB_KEYS), (
        f"slackq.bullmq_seam.standard_add_calls would break: {lua.name} takes KEYS "
        f"{documented}, the seam sends {list(STANDARD_JOB_KEYS)}")


class RecordingClient:
    """Stands in for redis-py where the port's script object sends its EVALSHA."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def evalsha(self, *args: Any) -> str:
        self.calls.append(args)
        return "recorded"


async def test_standard_add_calls_send_what_queue_add_sends(queue: Queue) -> None:
    """The same EVALSHA, byte for byte, as the port's own addStandardJob for the same job."""
    job = Job(queue, "app_mention", {"event_id": "Ev1", "text": "é"},
              {"jobId": "Ev1x", "attempts": 5, "backoff": {"type": "exponential", "delay": 1000},
               "removeOnComplete": {"age": 3600}})
    recorder = RecordingClient()
    await queue.scripts.addStandardJob(job, job.timestamp, recorder)
    assert standard_add_calls(queue, [job]) == recorder.calls, (
        "slackq.bullmq_seam.standard_add_calls would break: the port's addStandardJob sends "
        "other arguments")


# Port internals no module outside the seam may touch. Distinctive names, whatever the receiver:
INTERNAL_NAMES = frozenset({
    "scripts", "redisConnection", "blockingRedisConnection", "bclient", "getRedisVersion",
    "nextJobFromJobData", "getNextJob", "processJob", "moveToActive", "addJobArgs", "getKeys",
    "lockManager", "forceClosing", "blockUntil", "limitUntil", "drained", "resume_event",
    "set_retry", "retryIfFailed", "waitForJob", "extendLocks", "runStalledJobsCheck",
})
# Common names, internal on a port object (a receiver named like queue, worker or job):
INTERNAL_ON_PORT_OBJECTS = frozenset({
    "backend", "client", "conn", "jobs", "commands", "closing", "paused", "waiting",
    "processing", "running", "closed", "emit", "queue",
})
PORT_OBJECT = re.compile(r"(?i)(^|_)(queue|worker|job)s?$")
PUBLIC_EXPORTS = frozenset({
    "Queue", "Job", "Worker", "QueueEvents", "FlowProducer", "DelayedError",
    "UnrecoverableError", "WaitingChildrenError", "AbortController", "AbortSignal", "AbortError",
})
MUTATORS = frozenset({"update", "pop", "setdefault", "clear", "popitem", "__setitem__"})
SCANNED = ("slackq", "producers", "worker", "dashboard", "harness", "bench")
SEAM = ROOT / "slackq" / "bullmq_seam.py"


def _receiver_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _is_opts(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "opts"


def internals_used(source: str) -> list[tuple[int, str]]:
    """(line, what) for every use of the port's internals in `source`."""
    tree = ast.parse(source)
    from_port = {alias.asname or alias.name for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module == "bullmq"
                 for alias in node.names}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("bullmq."):
                found.append((node.lineno, f"imports the port's module {node.module}"))
            elif node.module == "bullmq":
                found += [(node.lineno, f"imports bullmq.{alias.name}, not public")
                          for alias in node.names if alias.name not in PUBLIC_EXPORTS]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, f"imports the port's module {alias.name}")
                      for alias in node.names if alias.name.startswith("bullmq.")]
        elif isinstance(node, ast.ClassDef):
            found += [(node.lineno, f"subclasses the port's {base.id}") for base in node.bases
                      if isinstance(base, ast.Name) and base.id in from_port]
        elif isinstance(node, ast.Attribute):
            if node.attr in INTERNAL_NAMES:
                found.append((node.lineno, f"uses .{node.attr}"))
            elif (node.attr in INTERNAL_ON_PORT_OBJECTS
                  and PORT_OBJECT.search(_receiver_name(node.value))):
                found.append((node.lineno, f"uses {_receiver_name(node.value)}.{node.attr}"))
        elif isinstance(node, ast.Subscript) and _is_opts(node.value) and not isinstance(
                node.ctx, ast.Load):
            found.append((node.lineno, "changes a job's opts in place"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in MUTATORS and _is_opts(node.func.value)):
            found.append((node.lineno, "changes a job's opts in place"))
    return found


def scanned_files() -> Iterator[Path]:
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path != SEAM and ".venv" not in path.parts and "node_modules" not in path.parts:
                yield path


def test_no_module_outside_the_seam_touches_the_port_internals() -> None:
    """slackq/, producers/, worker/, harness/ and bench/ use the port's public API only.

    A net, not a proof: it knows the port's internal names and flags them, and common names
    (`client`, `jobs`, ...) on receivers named like port objects. Tests are not scanned: they
    observe internals on purpose (counting `moveToActive` calls, waiting for `worker.waiting`).
    """
    assert len(list(scanned_files())) > 40  # the scan sees the code base
    findings = [f"{path.relative_to(ROOT)}:{line}: {what}"
                for path in scanned_files()
                for line, what in internals_used(path.read_text())]
    assert not findings, ("use slackq.bullmq_seam instead of the port's internals:\n"
                          + "\n".join(findings))


@pytest.mark.parametrize("code", [
    "from bullmq.custom_errors import UnrecoverableError",
    "import bullmq.scripts",
    "from bullmq import LockManager",
    "from bullmq import Worker\nclass Mine(Worker): pass",
    "queue.scripts.commands['addStandardJob']",
    "worker.redisConnection.conn.set_retry(retry)",
    "await worker.blockingRedisConnection.getRedisVersion()",
    "n = len(worker.jobs)",
    "client = self.queue.client",
    "worker.backend.moveToCompleted = patched",
    "job.opts['backoff'] = {'type': 'fixed', 'delay': 5}",
    "job.opts.update(backoff=5)",
], ids=["submodule", "import-submodule", "non-public-export", "subclass", "scripts",
        "set_retry", "capabilities", "worker-jobs", "queue-client", "backend", "opts-store",
        "opts-update"])
def test_the_scan_flags_internals(code: str) -> None:
    assert internals_used(code)


def test_the_scan_lets_the_public_api_and_slackqs_own_names_pass() -> None:
    code = """
from bullmq import DelayedError, Job, Queue, UnrecoverableError, Worker
queue = Queue("q", {"connection": url})
job = await queue.add("n", {}, {"jobId": "x"})
counts = await queue.getJobCounts("wait")
workers = await queue.get_workers()
worker = Worker("q", process, {"autorun": False})
worker.on("failed", on_failed)
await job.moveToDelayed(ts, token)
delay = job.opts.get("delay") or job.opts["attempts"]
self.client = client
config.jobs, args.backend
"""
    assert internals_used(code) == []
