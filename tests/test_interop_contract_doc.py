"""The written job contract (docs/job-contract.md, docs/schemas/) is what the code does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr
from starlette.routing import Route

from docgen.__main__ import DOCS_DIR, generated_files, main
from docgen.contract import default_settings, job_kinds
from producers.app import create_app
from slackq.contract import job_options
from slackq.models import AppMentionEvent, EventCallback, InteractionPayload, SlashCommand
from tests.slack_requests import SIGNING_SECRET, app_mention_envelope
from tests.webhook_client import (
    block_actions_payload,
    command_form,
    view_closed_payload,
    view_submission_payload,
)
from worker.handlers import default_registry


def test_committed_docs_are_what_the_code_generates() -> None:
    assert main(["--check"]) == 0, "run: python -m docgen"


def test_check_detects_a_stale_contract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--docs-dir", str(tmp_path)]) == 0
    assert main(["--check", "--docs-dir", str(tmp_path)]) == 0
    contract = tmp_path / "job-contract.md"
    original = contract.read_text()
    contract.write_text(original.replace('"attempts": 5', '"attempts": 3'))
    assert main(["--check", "--docs-dir", str(tmp_path)]) == 1
    assert f"{contract} is out of date" in capsys.readouterr().err
    contract.write_text(original)
    leftover = tmp_path / "schemas" / "Gone.schema.json"
    leftover.write_text("{}")
    assert main(["--check", "--docs-dir", str(tmp_path)]) == 1
    assert main(["--docs-dir", str(tmp_path)]) == 0
    assert not leftover.exists()


def test_contract_shows_the_options_every_job_carries() -> None:
    text = generated_files()[DOCS_DIR / "job-contract.md"]
    options = job_options("<job id>", default_settings())
    assert f"```json\n{json.dumps(options, indent=2)}\n```" in text


def test_every_handled_name_is_documented() -> None:
    documented = " ".join(kind.name for kind in job_kinds())
    for name in default_registry().names():
        assert f"`{name}`" in documented


def test_schemas_accept_the_payloads_the_producer_stores() -> None:
    envelope = app_mention_envelope("Ev0DOC0001", thread_ts="1700000000.000001")
    parsed = EventCallback.model_validate(envelope)
    assert isinstance(parsed.event, AppMentionEvent)
    assert parsed.model_dump(exclude_unset=True) == envelope
    reaction = {**envelope, "event": {"type": "reaction_added", "reaction": "eyes",
                                      "event_ts": "1700000000.000200"}}
    assert EventCallback.model_validate(reaction).model_dump(exclude_unset=True) == reaction


def test_every_webhook_route_that_stores_jobs_is_documented() -> None:
    app = create_app(default_settings().model_copy(
        update={"slack_signing_secret": SecretStr(SIGNING_SECRET)}))
    posted = {route.path for route in app.routes
              if isinstance(route, Route) and "POST" in (route.methods or ())}
    documented = " ".join(kind.produced_by for kind in job_kinds())
    assert posted, "the webhook has no POST route?"
    for path in posted:
        assert f"`POST {path}`" in documented, f"{path} stores jobs the contract does not list"


def test_command_and_interaction_schemas_accept_what_the_producer_stores() -> None:
    form = command_form()
    assert SlashCommand.model_validate(form).model_dump(exclude_unset=True) == form
    for payload in (block_actions_payload(), view_submission_payload(), view_closed_payload()):
        model = InteractionPayload.model_validate(payload)
        assert model.model_dump(exclude_unset=True) == payload
