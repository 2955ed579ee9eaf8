"""A fast loopback Slack stand-in for the realistic drain: `python bench/slack_fast.py PORT`.

harness.slack_standin.FakeSlack is a thread-per-connection `http.server` that records every call;
at the drain's rates it, not the workers, would set the pace (bench/README.md). This one is a
single aiohttp process that answers every Web API method `{"ok": true, ...}` at once and counts
`chat.postMessage` calls: `GET /_stats` gives the count and the first and last call's time
(`time.time()`), which is what the benchmark times a drain by.
"""

from __future__ import annotations

import json
import sys
import time

from aiohttp import web

STATS = {"count": 0, "first": 0.0, "last": 0.0}


async def api(request: web.Request) -> web.Response:
    await request.read()
    now = time.time()
    if request.match_info["method"] == "chat.postMessage":
        STATS["first"] = STATS["first"] or now
        STATS["count"] += 1
        STATS["last"] = now
    body = {"ok": True, "channel": "C0CHAN001", "ts": f"{now:.6f}"}
    return web.Response(text=json.dumps(body), content_type="application/json")


async def stats(_request: web.Request) -> web.Response:
    return web.json_response(STATS)


async def reset(_request: web.Request) -> web.Response:
    STATS.update(count=0, first=0.0, last=0.0)
    return web.json_response(STATS)


def main(argv: list[str]) -> int:
    app = web.Application()
    app.router.add_post("/api/{method}", api)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)
    print("slack_ready", flush=True)
    web.run_app(app, host="127.0.0.1", port=int(argv[0]), print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
