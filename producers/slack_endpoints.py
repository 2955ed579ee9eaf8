"""The Slack endpoints as plain ASGI apps: verify, store the job, and only then acknowledge.

Every request ends in one of: 2xx (the job is stored in Redis, or the request needs no job),
a 4xx from `producers.errors` (bad input: nothing is stored), or 503 (the job could not be stored
within the budget: Slack delivers it again).

* `POST /slack/events`: Events API JSON (`producers.events`); a form posted here is dispatched
  like the two endpoints below, for apps that point every Slack feature at one URL.
* `POST /slack/commands`: slash commands (`producers.commands`).
* `POST /slack/interactivity`: interactivity payloads (`producers.interactivity`).

Each is an ASGI app of its own, which `producers.app.WebhookApp` calls before Starlette's
middleware and router (Starlette still routes its other methods, for the 405): a webhook request
needs none of Starlette's layers, its `Request` or its `Response` call, which cost ~10 % of the
request's CPU (py-spy, bench/README.md). The headers a request needs are read from the ASGI
scope once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from starlette.datastructures import State
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from producers.body import FORM, JSON, media_type, parse_form, parse_json_object, read_body
from producers.commands import command_job
from producers.errors import MalformedRequest, RequestRejected, Unauthorized
from producers.events import event_outcome
from producers.interactivity import interactive_job
from producers.jobs import Outcome, SlackJob
from producers.metrics import ProducerMetrics
from slackq.errors import RedisUnavailable

log = structlog.get_logger(__name__)

# The request headers the endpoints read, as ASGI names them (lower-case bytes).
_HEADERS = frozenset({b"content-type", b"content-length", b"x-slack-request-timestamp",
                      b"x-slack-signature", b"x-slack-retry-num", b"x-slack-retry-reason"})


class SlackRequest:
    """What an endpoint reads from one request besides its body: its path, the headers above (the
    first of each name, as Starlette's `Headers.get` gives), and the app's state (settings,
    verifier, metrics, enqueuer: read per request, so a test can swap one)."""

    __slots__ = ("headers", "path", "state")

    def __init__(self, scope: Scope, state: State) -> None:
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name in _HEADERS and (key := name.decode("latin-1")) not in headers:
                headers[key] = value.decode("latin-1")
        self.headers = headers
        self.path: str = scope["path"]
        self.state = state

    def verify(self, body: bytes) -> None:
        if not self.state.verifier.is_valid(body, self.headers):
            raise Unauthorized("invalid or missing signature or timestamp")


# A verified form's job: (kind, job) from the request and its fields.
FormHandler = Callable[[SlackRequest, dict[str, str]], tuple[str, SlackJob]]


class SlackEndpoint:
    """One endpoint as an ASGI app: a body of an `accepted` media type becomes a job (JSON: an
    Events API request; a form: `form`'s), stored before the answer; or a 4xx if rejected.

    In order: 415 for another media type, the body read within its deadline (413, 408), a form's
    `ssl_check` answered, the signature verified (401), the body parsed and checked (400).
    """

    def __init__(self, accepted: tuple[str, ...], form: FormHandler, state: State) -> None:
        self.accepted = accepted
        self.form = form
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = SlackRequest(scope, self.state)
        try:
            media = media_type(request.headers, self.accepted)
            body = await read_body(receive, request.headers,
                                   self.state.settings.web_body_timeout_seconds)
            if media == FORM and _is_ssl_check(body):
                response = Response(status_code=200)  # whatever its signature, as in Bolt
            else:
                request.verify(body)
                response = await _store(request, *self._outcome(request, media, body))
        except RequestRejected as exc:
            response = rejected(exc, request.path, self.state.metrics)
        # What Starlette's `Response.__call__` sends, without its own layers.
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})

    def _outcome(self, request: SlackRequest, media: str, body: bytes) -> tuple[str, Outcome]:
        """What a verified body becomes: (kind, job or answer)."""
        if media == JSON:
            return "event", event_outcome(parse_json_object(body), self.state.metrics)
        return self.form(request, parse_form(body))


def rejected(exc: RequestRejected, path: str, metrics: ProducerMetrics) -> Response:
    """The answer to a rejected request (counted and logged): its 4xx with a JSON reason."""
    metrics.count("any", exc.reason)
    log.warning("slack_request_rejected", path=path, status=exc.status,
                reason=exc.reason, detail=exc.message)
    headers = {"Connection": "close"} if exc.close_connection else None
    return JSONResponse({"ok": False, "error": exc.reason, "detail": exc.message},
                        status_code=exc.status, headers=headers)


def _command_outcome(request: SlackRequest, form: dict[str, str]) -> tuple[str, SlackJob]:
    return "command", command_job(form, request.state.settings.command_ack_text)


def _interactive_outcome(_request: SlackRequest, form: dict[str, str]) -> tuple[str, SlackJob]:
    return "interactive", interactive_job(form)


def _any_form_outcome(request: SlackRequest, form: dict[str, str]) -> tuple[str, SlackJob]:
    # By field, never by searching the raw body: a command whose text mentions "payload=" is
    # still a command (Bolt for Python's body parser gets this wrong).
    if "command" in form:
        return _command_outcome(request, form)
    if "payload" in form:
        return _interactive_outcome(request, form)
    raise MalformedRequest("form is neither a slash command nor an interactivity payload")


def slack_endpoints(state: State) -> dict[str, SlackEndpoint]:
    """The three endpoints (path -> ASGI app) over the app's `state`:

    * `POST /slack/events`: Events API JSON; a form is dispatched by its fields (a command or an
      interactivity payload).
    * `POST /slack/commands`: one job per slash-command invocation.
    * `POST /slack/interactivity`: one job per interactivity payload.
    """
    return {
        "/slack/events": SlackEndpoint((JSON, FORM), _any_form_outcome, state),
        "/slack/commands": SlackEndpoint((FORM,), _command_outcome, state),
        "/slack/interactivity": SlackEndpoint((FORM,), _interactive_outcome, state),
    }


def _is_ssl_check(body: bytes) -> bool:
    if b"ssl_check=1" not in body:
        return False
    try:
        return parse_form(body).get("ssl_check") == "1"
    except RequestRejected:
        return False


async def _store(request: SlackRequest, kind: str, outcome: Outcome) -> Response:
    """Store the job (if any), then answer: the ack if stored, 503 if not."""
    metrics: ProducerMetrics = request.state.metrics
    if isinstance(outcome, Response):
        metrics.count(kind, "answered")
        return outcome
    # Ids passed to each line, not bound as contextvars: binding costs on every request, and the
    # Enqueuer binds them itself on its (rare) retry path.
    ids = {**outcome.log_context, "job_id": outcome.job_id}
    try:
        stored_id = await request.state.enqueuer.add(outcome)
    except RedisUnavailable as exc:
        metrics.count(kind, "not_stored")
        log.error("job_not_stored", job_name=outcome.name, error=str(exc), **ids)
        return JSONResponse({"ok": False, "error": "not_stored"}, status_code=503)
    metrics.count(kind, "stored")
    log.info("job_stored", job_name=outcome.name, **ids, **_delivery(request, outcome, stored_id))
    return outcome.ack


def _delivery(request: SlackRequest, job: SlackJob, stored_id: str) -> dict[str, Any]:
    """What a log line adds about a delivery: Slack's retry headers and an existing job's id,
    only when there are some (every field costs on the hot path)."""
    fields = {}
    if (retry_num := request.headers.get("x-slack-retry-num")) is not None:
        fields["retry_num"] = retry_num
        fields["retry_reason"] = request.headers.get("x-slack-retry-reason", "")
    if stored_id != job.job_id:
        fields["stored_as"] = stored_id
    return fields
