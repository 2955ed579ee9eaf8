"""The floor for bench/webhook.py: Bolt for Python's AsyncApp on its Starlette adapter.

It verifies the signature and acknowledges `app_mention` events in process (no I/O before the
ack: that is what Bolt does), served by uvicorn exactly as `python -m producers` serves slackq.
`authorize` answers offline so Bolt never calls auth.test.

Run: SLACK_SIGNING_SECRET=... PORT=... python bench/bolt_app.py
"""

from __future__ import annotations

import os
from typing import Any

import uvicorn
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def authorize(**kwargs: Any) -> AuthorizeResult:
    return AuthorizeResult(enterprise_id=None, team_id=kwargs.get("team_id"),
                           bot_token="xoxb-fake", bot_id="B0BENCH",
                           bot_user_id="U0BOT")


def create_app(signing_secret: str) -> Starlette:
    bolt = AsyncApp(signing_secret=signing_secret, authorize=authorize)

    @bolt.event("app_mention")
    async def on_mention(ack: Any) -> None:
        await ack()

    handler = AsyncSlackRequestHandler(bolt)

    async def events(request: Request) -> Response:
        return await handler.handle(request)

    return Starlette(routes=[Route("/slack/events", events, methods=["POST"])])


if __name__ == "__main__":
    uvicorn.run(create_app(os.environ["SLACK_SIGNING_SECRET"]), host="127.0.0.1",
                port=int(os.environ["PORT"]), proxy_headers=True, forwarded_allow_ips="*",
                log_config=None, access_log=False)
