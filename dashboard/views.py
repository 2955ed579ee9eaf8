"""The pages (GET) and the actions (POST) of the dashboard.

Every POST is refused (403) to the read-only login, to a cross-site request and without a valid
CSRF token, in that order, before anything is read from the form's values.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from dashboard.actions import BULK_ACTIONS, ActionRefused, describe
from dashboard.history import PERIODS, health, sparkline, throughput, waits
from dashboard.queries import MAX_CANDIDATES, MAX_PAGE, QUEUED_STATES, STATES
from dashboard.security import Login, same_origin
from dashboard.timeline import job_view
from slackq.job_index import FIELDS, Filters

if TYPE_CHECKING:
    from dashboard.app import Dashboard

MAX_FORM_BYTES = 16_384
MAX_FIELD_CHARS = 200
QUERY_SECONDS = 10.0  # a page that cannot be read in this time is an error, not a hang
TEAMS_SHOWN = 20
TEAM_SCAN = 200  # newest jobs counted per team: the page stays cheap with many teams


def _dash(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard


def _login(request: Request) -> Login:
    login: Login = request.state.login
    return login


async def _render(request: Request, template: str, **context: Any) -> Response:
    """Render in a worker thread: a big page must not hold the event loop the webhook runs on
    for the whole rendering (the thread and the loop take turns on the GIL)."""
    dash, login = _dash(request), _login(request)
    context.update(request=request, login=login, readonly=login.role != "admin",
                   csrf=dash.csrf.issue(login.user), queue=dash.settings.queue_name,
                   local=dash.trust_loopback)
    page = dash.templates.get_template(template)
    return HTMLResponse(await asyncio.to_thread(page.render, context))


def _filters(values: dict[str, str]) -> Filters:
    return Filters(**{key: values.get(key, "")[:MAX_FIELD_CHARS] for key in (*FIELDS, "text")})


def _page(values: dict[str, str]) -> int:
    raw = values.get("page", "1")
    return max(1, min(int(raw), 10_000)) if raw.isdigit() else 1


async def overview(request: Request) -> Response:
    dash = _dash(request)
    async with asyncio.timeout(QUERY_SECONDS):
        counts = await dash.reader.counts()
        try:
            workers: list[dict[str, Any]] | None = await dash.reader.workers()
        except RedisError:  # CLIENT LIST denied by a stricter ACL
            workers = None
        facts = await health(dash.client, dash.settings.redis_url)
        history = await throughput(dash.client, dash.reader.index, dash.reader.key_base)
        waited_history = await waits(dash.client, dash.reader.wait_keys)
        paused = bool(await dash.reader.queue.isPaused())
        oldest = await dash.reader.oldest_waiting_ms()
    waited = round(time.time() - oldest / 1000, 1) if oldest else None
    charts = {period: [(series, sparkline(series.bars)) for series in history[period]]
              for period, _, _ in PERIODS}
    wait_charts = {period: (series, sparkline(series.bars))
                   for period, series in waited_history.items()}
    return await _render(request, "overview.html", counts=counts, workers=workers, health=facts,
                   charts=charts, wait_charts=wait_charts, paused=paused, waited=waited)


async def jobs(request: Request) -> Response:
    dash, values = _dash(request), dict(request.query_params)
    filters = _filters(values)
    state = values.get("state", "failed")
    if state not in STATES and not (state == "all" and filters):
        state = "failed"
    page, per_page = _page(values), MAX_PAGE // 2
    async with asyncio.timeout(QUERY_SECONDS):
        counts = await dash.reader.counts()
        if filters:
            listing = await dash.reader.search_jobs(state, filters, page, per_page)
        else:
            listing = await dash.reader.list_jobs(state, page, per_page, counts[state])
    query = {key: value for key, value in filters.as_dict().items() if value}
    return await _render(request, "jobs.html", listing=listing, state=state, states=STATES,
                   counts=counts, filters=filters, query=query, fields=FIELDS,
                   bulk=[a for a, states in BULK_ACTIONS.items() if state in states],
                   max_candidates=MAX_CANDIDATES)


async def job_detail(request: Request) -> Response:
    dash = _dash(request)
    job_id = request.path_params["job_id"]
    async with asyncio.timeout(QUERY_SECONDS):
        job, state = await dash.reader.job(job_id)
        if job is None:
            return await _render(request, "missing.html", job_id=job_id)
        effects = await dash.reader.effects(job_id)
        logs = await dash.reader.logs(job_id)
    return await _render(request, "job.html", job=job_view(job, state, effects, logs))


async def teams(request: Request) -> Response:
    dash = _dash(request)
    async with asyncio.timeout(QUERY_SECONDS):
        names = await dash.reader.index.recent_teams(TEAMS_SHOWN)
        rows = [await _team_row(dash, team) for team in names]
        channels = await dash.reader.index.channels_of(names)
        holds = await dash.reader.holds((team, ch) for team in names for ch in channels[team])
    pacing = {"per_channel": dash.settings.worker_rate_per_channel,
              "per_team": dash.settings.worker_rate_per_team}
    return await _render(request, "teams.html", teams=rows, holds=holds, pacing=pacing)


async def _team_row(dash: Dashboard, team: str) -> dict[str, Any]:
    """A team's newest `TEAM_SCAN` jobs counted by state."""
    states = [st for _, st in await dash.reader.matching("all", Filters(team=team), TEAM_SCAN)]
    return {"team": team, "queued": sum(st in QUEUED_STATES for st in states),
            "active": states.count("active"), "failed": states.count("failed"),
            "completed": states.count("completed"), "capped": len(states) >= TEAM_SCAN}


async def audit(request: Request) -> Response:
    entries = await _dash(request).actions.audit_log()
    return await _render(request, "audit.html", entries=entries)


async def _authorized_form(request: Request) -> dict[str, str] | Response:
    """The POSTed form, or the 403 that refuses it."""
    login = _login(request)
    if login.role != "admin":
        return PlainTextResponse("read-only login: actions are not allowed", 403)
    if not same_origin(request.headers):
        return PlainTextResponse("cross-site request refused", 403)
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return PlainTextResponse("form too large", 413)
    form = dict(parse_qsl(body.decode("utf-8", "replace"), max_num_fields=50))
    if not _dash(request).csrf.valid(login.user, form.get("csrf", "")):
        return PlainTextResponse("missing or invalid CSRF token", 403)
    return form


async def job_action(request: Request) -> Response:
    form = await _authorized_form(request)
    if isinstance(form, Response):
        return form
    job_id, action = request.path_params["job_id"], request.path_params["action"]
    try:
        await _dash(request).actions.job_action(_login(request).user, action, job_id)
    except ActionRefused as exc:
        return await _render(request, "refused.html", reason=str(exc), job_id=job_id)
    target = "admin:jobs" if action == "remove" else "admin:job"
    params = {} if action == "remove" else {"job_id": job_id}
    return RedirectResponse(request.url_for(target, **params), status_code=303)


async def bulk(request: Request) -> Response:
    """A bulk action: without `confirm`, the dry run (a count and a confirm button)."""
    form = await _authorized_form(request)
    if isinstance(form, Response):
        return form
    dash, filters = _dash(request), _filters(form)
    action, state = form.get("action", ""), form.get("state", "")
    try:
        if form.get("confirm") != "yes":
            count = await dash.actions.bulk_count(action, state, filters)
            return await _render(request, "bulk.html", action=action, state=state, count=count,
                           target=describe(state, filters), filters=filters, done=False)
        count = await dash.actions.bulk(_login(request).user, action, state, filters)
    except ActionRefused as exc:
        return await _render(request, "refused.html", reason=str(exc), job_id="")
    return await _render(request, "bulk.html", action=action, state=state, count=count,
                   target=describe(state, filters), filters=filters, done=True)


async def pause(request: Request) -> Response:
    form = await _authorized_form(request)
    if isinstance(form, Response):
        return form
    paused = request.url.path.endswith("/pause")
    await _dash(request).actions.pause(_login(request).user, paused)
    return RedirectResponse(request.url_for("admin:overview"), status_code=303)


async def job_json(request: Request) -> Response:
    """The job's redacted data as JSON text (for copying), served as text/plain."""
    job, _ = await _dash(request).reader.job(request.path_params["job_id"])
    if job is None:
        return PlainTextResponse("no such job", 404)
    view = job_view(job, "", [])
    return PlainTextResponse(json.dumps(view.data, indent=2))


async def redis_unavailable(_request: Request, exc: Exception) -> Response:
    """A page whose Redis reads failed or took too long: 503 with the kind of error only (an
    exception's text may name the server's address or credentials)."""
    return PlainTextResponse(f"Redis did not answer in time ({type(exc).__name__}); "
                             "reload in a moment.", 503)


def routes() -> list[Route]:
    return [
        Route("/", overview, name="overview"),
        Route("/jobs", jobs, name="jobs"),
        Route("/jobs/{job_id}", job_detail, name="job"),
        Route("/jobs/{job_id}/data.json", job_json, name="job_json"),
        Route("/jobs/{job_id}/{action:str}", job_action, methods=["POST"], name="job_action"),
        Route("/bulk", bulk, methods=["POST"], name="bulk"),
        Route("/queue/pause", pause, methods=["POST"], name="pause"),
        Route("/queue/resume", pause, methods=["POST"], name="resume"),
        Route("/teams", teams, name="teams"),
        Route("/audit", audit, name="audit"),
    ]
