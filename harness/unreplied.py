"""What the jobs of acknowledged-but-unreplied events are doing on a server: the campaign's
post-mortem (`harness.failover` writes it to `<work>/unreplied.jsonl` while it waits).

Per job: where BullMQ holds it (wait / active / prioritized / delayed / completed / failed /
stalled set), its hash fields that say why (`attemptsMade`, `attemptsStarted`,
`stalledCounter`, `processedOn`, `finishedOn`, `failedReason`, the effect records), the TTL of
its lock and of its effect lease."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from harness.topology import ask

# The hash's own names: attemptsMade `atm`, attemptsStarted `ats`, stalledCounter `stc`, a
# failure deferred by the stalled check `defa`.
FIELDS = ("atm", "ats", "stc", "defa", "processedOn", "finishedOn", "failedReason", "delay",
          "timestamp", "pb")


def job_states(host: str, port: int, prefix: str, job_ids: list[str]) -> dict[str, Any]:
    """Each job's state on `host:port` (queue `slack-events`), plus the queue's stalled-check
    key TTL; {} when the server does not answer."""
    queue = f"{prefix}:slack-events"

    def read(client: Any) -> dict[str, Any]:
        pipe = client.pipeline(transaction=False)
        pipe.pttl(f"{queue}:stalled-check")
        pipe.lrange(f"{queue}:wait", 0, -1)
        pipe.lrange(f"{queue}:active", 0, -1)
        pipe.smembers(f"{queue}:stalled")
        for zset in ("prioritized", "delayed", "completed", "failed"):
            pipe.zrange(f"{queue}:{zset}", 0, -1)
        head = pipe.execute()
        places = {"wait": head[1], "active": head[2], "stalled": head[3],
                  "prioritized": head[4], "delayed": head[5], "completed": head[6],
                  "failed": head[7]}
        members = {name: {str(m) for m in found} for name, found in places.items()}
        pipe = client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(f"{queue}:{job_id}")
            pipe.pttl(f"{queue}:{job_id}:lock")
            pipe.pttl(f"{prefix}:slackq:slack-events:effects:{job_id}:lease")
        rows = pipe.execute()
        jobs = {}
        for i, job_id in enumerate(job_ids):
            fields, lock, lease = rows[3 * i: 3 * i + 3]
            jobs[job_id] = {
                "in": [name for name, ids in members.items() if job_id in ids],
                **{k: fields.get(k) for k in FIELDS if fields.get(k) is not None},
                "effects": {k: v for k, v in fields.items() if str(k).startswith("slackq:")},
                "lock_pttl": lock, "lease_pttl": lease}
        return {"stalled_check_pttl": head[0], "jobs": jobs}

    return ask(host, port, read) or {}


def append(path: Path, at: float, state: dict[str, Any]) -> None:
    with path.open("a") as out:
        out.write(json.dumps({"at": round(at, 3), "wall": time.time(), **state},
                             default=str) + "\n")
