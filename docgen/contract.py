"""The job contract the TypeScript services rely on: docs/job-contract.md and docs/schemas/.

Everything in the document comes from the code: queue defaults from `Settings`, options from
`slackq.contract.job_options`, handled names from the worker's default registry, data schemas from
pydantic models in `slackq.models`. `python -m docgen` writes it; a test runs `--check`.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from pydantic import BaseModel

from producers import commands, interactivity
from slackq import contract
from slackq.models import EventCallback, InteractionPayload, SlashCommand
from slackq.retry_policy import RetryPolicy
from slackq.settings import Settings
from worker.handlers import default_registry

TEMPLATE_PATH = Path(__file__).resolve().parent / "job_contract.md.tmpl"
NODE_BULLMQ = "6.7.0"


@dataclass(frozen=True)
class JobKind:
    """One family of job names the producers put on the queue."""

    name: str
    produced_by: str
    job_id: str
    data: type[BaseModel]
    returns: str


def job_kinds() -> tuple[JobKind, ...]:
    """Every job name the producers make, with the names and id prefixes they really use."""
    ignored = '`{"ignored": true, "reason": "no handler for <name>"}` unless a handler is added'
    return (
        JobKind(
            name="`app_mention`",
            produced_by="`POST /slack/events`, `event_callback` whose `event.type` is "
                        "`app_mention`",
            job_id="`event_id` (e.g. `Ev0123ABCD`)",
            data=EventCallback,
            returns='`{"channel": "C…", "ts": "1700000000.000100"}` (the reply in the thread)',
        ),
        JobKind(
            name="`app_uninstalled`, `tokens_revoked`",
            produced_by="`POST /slack/events`, `event_callback` (multi-workspace mode: the "
                        "worker deletes the installation / the revoked tokens)",
            job_id="`event_id`",
            data=EventCallback,
            returns='`{"uninstalled": {"enterprise_id": …, "team_id": …}}` / '
                    '`{"revoked": {"users": 1, "bot": true}}`; in single-workspace mode '
                    '`{"ignored": true, …}`',
        ),
        JobKind(
            name="`<event.type>` for every other Events API type (`message`, "
                 "`reaction_added`, …)",
            produced_by="`POST /slack/events`, `event_callback`",
            job_id="`event_id`",
            data=EventCallback,
            returns=ignored,
        ),
        JobKind(
            name=f"`{commands.JOB_NAME_PREFIX}<command>` (e.g. "
                 f"`{commands.JOB_NAME_PREFIX}/deploy`)",
            produced_by="`POST /slack/commands` (form-encoded)",
            job_id=f"`{commands.JOB_ID_PREFIX}<trigger_id>`",
            data=SlashCommand,
            returns=ignored,
        ),
        JobKind(
            name=f"`{interactivity.JOB_NAME_PREFIX}<payload.type>` (e.g. "
                 f"`{interactivity.JOB_NAME_PREFIX}block_actions`, "
                 f"`{interactivity.JOB_NAME_PREFIX}view_submission`, "
                 f"`{interactivity.JOB_NAME_PREFIX}shortcut`)",
            produced_by="`POST /slack/interactivity` (form field `payload`, JSON)",
            job_id=f"`{interactivity.JOB_ID_PREFIX}<trigger_id>`; without a `trigger_id` "
                   f"(`view_closed`, `block_suggestion`) `{interactivity.JOB_ID_PREFIX}sha256-"
                   "<first 32 hex digits of the payload's SHA-256>`",
            data=InteractionPayload,
            returns=ignored,
        ),
    )


def _json(value: Any) -> str:
    return json.dumps(value, indent=2)


def _json_inline(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))


_JOB_ID_PLACEHOLDER = "<job id>"


def _js(value: Any) -> str:
    """A JSON value as a TypeScript literal; the id placeholder becomes `envelope.event_id`."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key}: {_js(item)}" for key, item in value.items()) + " }"
    if value == _JOB_ID_PLACEHOLDER:
        return "envelope.event_id"
    if isinstance(value, str):
        return "'" + value.replace("'", "\\'") + "'"
    return json.dumps(value)


def _handled_names() -> list[str]:
    return default_registry().names()


def _names_table() -> str:
    return "\n".join(
        f"| {kind.name} | {kind.produced_by} | {kind.job_id} | "
        f"[{kind.data.__name__}](#{kind.data.__name__.lower()}) | {kind.returns} |"
        for kind in job_kinds()
    )


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema, with its dialect and a stable `$id`."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"slackq/{model.__name__}.schema.json", **model.model_json_schema()}


def _data_models() -> list[type[BaseModel]]:
    return list(dict.fromkeys(kind.data for kind in job_kinds()))


def _schemas() -> str:
    sections = []
    for model in _data_models():
        sections.append(f"### {model.__name__}\n\n{inspect.cleandoc(model.__doc__ or '')} Also in "
                        f"`docs/schemas/{model.__name__}.schema.json`.\n\n"
                        f"```json\n{_json(json_schema(model))}\n```")
    return "\n\n".join(sections)


def generated_files(docs_dir: Path) -> dict[Path, str]:
    """Every generated file and its content: the contract and one JSON Schema per data model."""
    files = {docs_dir / "job-contract.md": render()}
    for model in _data_models():
        files[docs_dir / "schemas" / f"{model.__name__}.schema.json"] = (
            _json(json_schema(model)) + "\n")
    return files


def default_settings() -> Settings:
    """Settings with every default and nothing from the environment: the documented values."""
    return Settings.model_construct()


def render(settings: Settings | None = None) -> str:
    """The whole document as markdown."""
    settings = settings or default_settings()
    options = contract.job_options(_JOB_ID_PLACEHOLDER, settings)
    delays = RetryPolicy.from_settings(settings).longest_delays_ms()
    template = Template(TEMPLATE_PATH.read_text())
    return template.substitute(
        node_bullmq=NODE_BULLMQ,
        queue=settings.queue_name,
        prefix=settings.queue_prefix,
        names_table=_names_table(),
        handled=", ".join(f"`{name}`" for name in _handled_names()),
        options_json=_json(options),
        options_ts="\n".join(f"  {key}: {_js(value)}," for key, value in options.items()),
        attempts=settings.job_attempts,
        backoff_delay=settings.job_backoff_delay_ms,
        backoff_jitter=settings.job_backoff_jitter,
        backoff_series=", ".join(str(delay) for delay in delays),
        remove_on_complete=_json_inline(options["removeOnComplete"]),
        remove_on_fail=_json_inline(options["removeOnFail"]),
        stack_trace_limit=options["stackTraceLimit"],
        dedup_ttl=settings.job_deduplication_ttl_ms,
        schemas=_schemas(),
        dropped_fields=", ".join(f"`{name}`" for name in contract.DROPPED_DATA_FIELDS),
    ).rstrip() + "\n"


def leftover_files(docs_dir: Path, generated: dict[Path, str]) -> list[Path]:
    """Schema files whose model is gone from the contract: they must go too."""
    return sorted(set((docs_dir / "schemas").glob("*.schema.json")) - set(generated))
