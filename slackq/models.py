"""Pydantic models of the Slack payloads slackq stores as job data.

Three envelopes reach slackq: Events API callbacks (`event_callback`, JSON), slash commands
(form-encoded fields) and interactivity payloads (the JSON inside the `payload` form field).
The models require what slackq relies on and keep every other field Slack sends
(`extra="allow"`): Slack adds fields over time and the job data must round-trip unchanged.
`parse_envelope` picks the model from the payload's shape. JSON Schema comes from
`Model.model_json_schema()`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator
from pydantic.config import JsonDict


class SlackModel(BaseModel):
    """Base: unknown fields are kept, instances are immutable."""

    model_config = ConfigDict(extra="allow", frozen=True)


class AppMentionEvent(SlackModel):
    """`app_mention`: someone mentioned the app in a channel."""

    type: Literal["app_mention"]
    channel: str = Field(min_length=1)
    ts: str = Field(min_length=1)
    event_ts: str | None = None
    user: str | None = None
    text: str = ""
    thread_ts: str | None = None


class MessageEvent(SlackModel):
    """`message` (and its subtypes, e.g. `message_changed`, which carry no `user`/`text`)."""

    type: Literal["message"]
    channel: str = Field(min_length=1)
    ts: str = Field(min_length=1)
    event_ts: str | None = None
    subtype: str | None = None
    user: str | None = None
    bot_id: str | None = None
    text: str | None = None
    thread_ts: str | None = None
    channel_type: str | None = None


class OtherEvent(SlackModel):
    """Any other event type: only `type` is required; handlers validate what they read."""

    type: str = Field(min_length=1)


def _event_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in {"app_mention", "message"} else "other"


SlackEvent = Annotated[
    Annotated[AppMentionEvent, Tag("app_mention")]
    | Annotated[MessageEvent, Tag("message")]
    | Annotated[OtherEvent, Tag("other")],
    Discriminator(_event_tag),
]


class Authorization(SlackModel):
    """One installation the event is delivered for."""

    team_id: str | None = None
    enterprise_id: str | None = None
    user_id: str | None = None
    is_bot: bool | None = None
    is_enterprise_install: bool | None = None


# An `event_callback` names the workspace (`team_id`) or, for an org-wide install on Enterprise
# Grid, only the org: Slack sends `app_uninstalled` / `tokens_revoked` of an org-wide app with
# `enterprise_id` and no `team_id`. One of the two is required (JSON Schema: `anyOf`).
_TEAM_OR_ENTERPRISE: JsonDict = {"anyOf": [
    {"required": ["team_id"], "properties": {"team_id": {"type": "string"}}},
    {"required": ["enterprise_id"], "properties": {"enterprise_id": {"type": "string"}}},
]}


class EventCallback(SlackModel):
    """An Events API `event_callback` envelope, as POSTed to `/slack/events`; it names
    `team_id` or `enterprise_id` or both (an org-wide install's events may name the org only)."""

    model_config = ConfigDict(json_schema_extra=_TEAM_OR_ENTERPRISE)

    type: Literal["event_callback"]
    event_id: str = Field(min_length=1)
    team_id: str | None = Field(default=None, min_length=1)
    api_app_id: str | None = None
    event_time: int | None = None
    event: SlackEvent
    authorizations: list[Authorization] | None = None
    enterprise_id: str | None = None
    is_ext_shared_channel: bool | None = None
    event_context: str | None = None

    @model_validator(mode="after")
    def _names_a_team_or_an_enterprise(self) -> EventCallback:
        if not self.team_id and not self.enterprise_id:
            raise ValueError("an event_callback needs team_id or enterprise_id")
        return self


class SlashCommand(SlackModel):
    """A slash command invocation (the form fields Slack POSTs)."""

    command: str = Field(pattern=r"^/")
    team_id: str = Field(min_length=1)
    channel_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)
    text: str = ""
    response_url: str | None = None
    trigger_id: str | None = None
    api_app_id: str | None = None
    team_domain: str | None = None
    channel_name: str | None = None
    user_name: str | None = None
    enterprise_id: str | None = None
    is_enterprise_install: str | bool | None = None


class Team(SlackModel):
    id: str = Field(min_length=1)
    domain: str | None = None


class User(SlackModel):
    id: str = Field(min_length=1)
    username: str | None = None
    name: str | None = None
    team_id: str | None = None


class Channel(SlackModel):
    id: str = Field(min_length=1)
    name: str | None = None


class InteractionPayload(SlackModel):
    """An interactivity payload (`block_actions`, `view_submission`, `shortcut`, ...)."""

    type: str = Field(min_length=1)
    team: Team | None = None
    user: User
    api_app_id: str | None = None
    trigger_id: str | None = None
    response_url: str | None = None
    channel: Channel | None = None
    actions: list[dict[str, Any]] | None = None
    view: dict[str, Any] | None = None
    callback_id: str | None = None
    enterprise: dict[str, Any] | str | None = None  # `{"id": …}`, or the id (Bolt reads both)
    is_enterprise_install: bool | None = None


Envelope = EventCallback | SlashCommand | InteractionPayload


def parse_envelope(data: Any) -> Envelope:
    """Validate job data as the envelope its shape says it is.

    Raises `pydantic.ValidationError` (or `TypeError` for non-objects); the worker turns either
    into a permanent failure.
    """
    if not isinstance(data, dict):
        raise TypeError(f"job data is {type(data).__name__}, not a JSON object")
    if data.get("type") == "event_callback":
        return EventCallback.model_validate(data)
    if "command" in data:
        return SlashCommand.model_validate(data)
    return InteractionPayload.model_validate(data)


def team_of(envelope: Envelope) -> str | None:
    """The workspace (team) id an envelope belongs to."""
    if isinstance(envelope, InteractionPayload):
        return envelope.team.id if envelope.team else envelope.user.team_id
    return envelope.team_id
