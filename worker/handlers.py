"""Built-in handlers. Add your own with `@registry.register("<event type>")` the same way."""

from __future__ import annotations

from typing import Any

from worker.registry import HandlerRegistry, JobContext


async def reply_to_mention(ctx: JobContext) -> dict[str, Any]:
    """`app_mention`: reply in the mention's thread (once per job, even across re-runs)."""
    event = ctx.event
    thread_ts = event.get("thread_ts") or event["ts"]
    user = event.get("user")
    text = f"<@{user}> got it!" if user else "Got it!"
    response = await ctx.slack.call(
        "chat.postMessage", effect="reply", channel=event["channel"], thread_ts=thread_ts, text=text
    )
    ctx.log.info("slack_reply_posted", channel=event["channel"], thread_ts=thread_ts,
                 skipped=bool(response.get("skipped")))
    return {"channel": response.get("channel"), "ts": response.get("ts")}


def default_registry() -> HandlerRegistry:
    """The registry the worker dyno runs with: the built-in handlers."""
    registry = HandlerRegistry()
    registry.register("app_mention")(reply_to_mention)
    return registry
