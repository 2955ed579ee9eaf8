"""Slash commands (`POST /slack/commands`, form-encoded): one job per invocation.

* name `command:<command>` (e.g. `command:/deploy`),
* id `command-<trigger_id>`: Slack issues a fresh `trigger_id` per invocation, and the prefix keeps
  the id readable and never integer-like,
* data: the form as received, as a dict of strings (`command`, `text`, `user_id`, `team_id`,
  `channel_id`, `response_url`, `trigger_id`, ...), without Slack's legacy `token`
  (`slackq.contract.DROPPED_DATA_FIELDS`).

The immediate reply is empty by default (Slack shows nothing); with `SLACKQ_COMMAND_ACK_TEXT` set
it is an ephemeral message with that text, sent only once the job is stored.
"""

from __future__ import annotations

from starlette.responses import JSONResponse, Response

from producers.body import log_text, required_text
from producers.errors import MalformedRequest
from producers.jobs import OK, SlackJob, checked_job_id
from slackq.contract import stored_data

JOB_ID_PREFIX = "command-"
JOB_NAME_PREFIX = "command:"


def command_job(form: dict[str, str], ack_text: str = "") -> SlackJob:
    """The job for one verified slash-command form."""
    command = required_text(form, "command")
    if not command.startswith("/"):
        raise MalformedRequest("field 'command' does not start with '/'")
    trigger_id = required_text(form, "trigger_id")
    return SlackJob(
        name=JOB_NAME_PREFIX + command,
        data=stored_data(form),
        job_id=checked_job_id(JOB_ID_PREFIX + trigger_id),
        log_context={"team_id": log_text(form, "team_id"),
                     "trigger_id": log_text(form, "trigger_id")},
        ack=command_ack(ack_text),
    )


def command_ack(text: str) -> Response:
    """Slack's immediate reply to a stored command: empty, or an ephemeral `text`."""
    if not text:
        return OK
    return JSONResponse({"response_type": "ephemeral", "text": text})
