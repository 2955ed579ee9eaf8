"""docs/configuration.md's table is generated from the settings model and kept in step by a test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import Field

from docgen import config_table
from docgen.__main__ import DOCS_DIR, main
from slackq.settings import Settings


def test_every_setting_has_a_description() -> None:
    assert config_table.missing_descriptions() == []
    for name, field in Settings.model_fields.items():
        assert field.description and len(field.description) > 20, name


def test_committed_table_lists_every_variable_with_its_description() -> None:
    text = (DOCS_DIR / config_table.FILE_NAME).read_text()
    generated = text.split(config_table.BEGIN)[1].split(config_table.END)[0]
    for name, field in Settings.model_fields.items():
        [row] = [line for line in generated.splitlines()
                 if line.startswith(f"| `{config_table.env_names(name, field)[0]}`")]
        assert " ".join((field.description or "").split()) in row.replace("\\|", "|")


def test_secrets_show_no_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-111-not-a-default")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "signing-not-a-default")
    table = config_table.render_table()
    assert "not-a-default" not in table
    for variable in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"):
        [row] = [line for line in table.splitlines() if line.startswith(f"| `{variable}`")]
        assert row.split(" | ")[1:3] == ["secret", "none"]


def test_rows_show_aliases_bounds_and_computed_defaults() -> None:
    rows = {line.split(" | ")[0].strip("| `"): line.split(" | ")[1:3]
            for line in config_table.render_table().splitlines()[2:]}
    assert rows["PORT"] == ["integer, 1 to 65535", "`3000`"]
    assert rows["SLACKQ_COMMAND_ACK_TEXT"] == ["string", "empty"]
    assert rows["WORKER_GRACE_SECONDS"][1] == "`25`"
    assert rows["WORKER_PROCESSES"][1].startswith("computed: CPUs this process may run on")
    assert rows["LOG_FORMAT"] == ["`json` \\| `console`", "not set"]


def test_a_new_field_appears_without_touching_the_generator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def two() -> int:
        """Two, for the test."""
        return 2

    class More(Settings):
        worker_extra: int = Field(default_factory=two, ge=0, validation_alias="SLACKQ_EXTRA",
                                  description="A field added after the generator was written.")

    monkeypatch.setattr(config_table, "Settings", More)
    assert ("| `SLACKQ_EXTRA` | integer, ≥ 0 | computed: Two, for the test | A field added after "
            "the generator was written. |") in config_table.render_table()


def test_check_names_a_stale_table_and_write_keeps_the_prose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / config_table.FILE_NAME
    shutil.copy(DOCS_DIR / config_table.FILE_NAME, page)
    assert main(["--docs-dir", str(tmp_path)]) == 0
    assert main(["--check", "--docs-dir", str(tmp_path)]) == 0
    fresh = page.read_text()
    page.write_text(fresh.replace("Jobs in flight at once", "Jobs at once")
                    + "\nA paragraph written by hand.\n")
    assert main(["--check", "--docs-dir", str(tmp_path)]) == 1
    assert f"{page} is out of date: run python -m docgen" in capsys.readouterr().err
    assert main(["--docs-dir", str(tmp_path)]) == 0
    assert page.read_text() == fresh + "\nA paragraph written by hand.\n"


def test_a_page_without_markers_is_refused_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / config_table.FILE_NAME
    page.write_text("# Configuration\n\nProse only.\n")
    assert main(["--docs-dir", str(tmp_path)]) == 1
    assert "markers" in capsys.readouterr().err
    assert page.read_text() == "# Configuration\n\nProse only.\n"


def test_a_field_without_description_fails_the_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Undocumented(Settings):
        worker_mystery: int = 1

    monkeypatch.setattr(config_table, "Settings", Undocumented)
    assert main(["--check"]) == 1
    assert "worker_mystery" in capsys.readouterr().err
