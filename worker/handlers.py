"""Built-in handlers. Add your own with `@registry.register("<event type>")` the same way."""

from __future__ import annotations

from typing import Any

from worker.context import bounded
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
    # One line per job: the reply's channel, thread and whether a re-run found it posted
    # already go on `job_completed`; the handler's own line is for debugging.
    replied = {"channel": bounded(event["channel"]), "thread_ts": bounded(thread_ts),
               "skipped": bool(response.get("skipped"))}
    ctx.annotate(**replied)
    ctx.log.debug("slack_reply_posted", **replied)
    return {"channel": response.get("channel"), "ts": response.get("ts")}


async def app_uninstalled(ctx: JobContext) -> dict[str, Any]:
    """`app_uninstalled`: forget the workspace's (or org's) installation, so that its later jobs
    fail with `no_installation`. Needs no token (there is none any more)."""
    if ctx.workspaces is None or ctx.envelope is None:
        return {"ignored": True, "reason": "single-workspace mode"}
    key = await ctx.workspaces.uninstall(ctx.envelope)
    ctx.log.info("slack_app_uninstalled", enterprise_id=key[0], team_id=key[1])
    return {"uninstalled": {"enterprise_id": key[0], "team_id": key[1]}}


async def tokens_revoked(ctx: JobContext) -> dict[str, Any]:
    """`tokens_revoked`: drop the revoked tokens. Slack lists user ids, not tokens: `oauth` for
    users' tokens, `bot` for the bot's (the bot keeps working unless it is listed)."""
    if ctx.workspaces is None or ctx.envelope is None:
        return {"ignored": True, "reason": "single-workspace mode"}
    tokens = ctx.event.get("tokens")
    tokens = tokens if isinstance(tokens, dict) else {}
    users = [str(user) for user in tokens.get("oauth") or [] if isinstance(user, str)]
    bot = bool(tokens.get("bot"))
    key = await ctx.workspaces.revoke(ctx.envelope, user_ids=users, bot=bot)
    ctx.log.info("slack_tokens_revoked", enterprise_id=key[0], team_id=key[1],
                 users=len(users), bot=bot)
    return {"revoked": {"users": len(users), "bot": bot}}


def default_registry() -> HandlerRegistry:
    """The registry the worker dyno runs with: the built-in handlers."""
    registry = HandlerRegistry()
    registry.register("app_mention")(reply_to_mention)
    registry.register("app_uninstalled")(app_uninstalled)
    registry.register("tokens_revoked")(tokens_revoked)
    return registry
