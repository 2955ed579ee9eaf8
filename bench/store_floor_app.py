"""The floor of *store before ack* for bench/webhook.py: the least a Python server can do.

A bare ASGI app under uvicorn (no framework, no validation beyond the signature, no log line,
no metrics): it checks the v0 signature with `hmac`, and stores the raw body in Redis before
answering 200 (401 on a bad signature). `FLOOR_STORE` says how:

* `bullmq` (default): the port's own `Queue.add` of the parsed envelope with slackq's job options
  and the event id as job id, over slackq's lean pool: the least a BullMQ-compatible webhook
  does, whatever its framework;
* `rpush`: one `RPUSH` of the raw body: the least any store-before-ack webhook does.

Its latency bounds what slackq can reach on the same machine; Bolt (bench/bolt_app.py) bounds an
acknowledgement without I/O.

Run: SLACK_SIGNING_SECRET=... REDIS_URL=... PORT=... python bench/store_floor_app.py
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bullmq import Queue

from slackq.contract import JobOptions
from slackq.pool import lean_client
from slackq.settings import Settings

SECRET = os.environ["SLACK_SIGNING_SECRET"].encode()
KEY = "floor:events"
STORE = os.environ.get("FLOOR_STORE", "bullmq")
client = lean_client(os.environ["REDIS_URL"], 8, decode_responses=True)
queue = Queue("slack-events", {"connection": client})
JOBS = JobOptions.from_settings(Settings())

Receive = Any
Send = Any


def signed(headers: dict[bytes, bytes], body: bytes) -> bool:
    timestamp = headers.get(b"x-slack-request-timestamp", b"")
    signature = headers.get(b"x-slack-signature", b"")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 300:
        return False
    digest = hmac.new(SECRET, b"v0:" + timestamp + b":" + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(b"v0=" + digest.encode(), signature)


async def store(body: bytes) -> None:
    if STORE == "rpush":
        await client.rpush(KEY, body)
        return
    envelope = json.loads(body)
    event_id = envelope["event_id"]
    await queue.add(envelope["event"]["type"], envelope, JOBS.for_job(event_id))


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    status = 401
    if signed(dict(scope["headers"]), body):
        await store(body)
        status = 200
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), lifespan="off",
                log_config=None, access_log=False)
