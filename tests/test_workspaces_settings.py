"""Workspace modes: a bot token (one workspace) or an OAuth app's client credentials (many)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

import slackq.run
from slackq.errors import ConfigError
from slackq.run import local_store_defaults, prepare_environment
from slackq.settings import load_settings
from tests.processes import process_env

MULTI = {"SLACK_CLIENT_ID": "111.222", "SLACK_CLIENT_SECRET": "s3cret",
         "DATABASE_URL": "sqlite:////tmp/x.db", "SLACKQ_TOKEN_KEY": Fernet.generate_key().decode()}
VARIABLES = ("SLACK_BOT_TOKEN", *MULTI)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        # setenv first: monkeypatch then restores the variable (or its absence) afterwards,
        # also when the code under test wrote it (the run command does).
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_bot_token_is_single_workspace_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    assert load_settings(workspace=True).workspace_mode() == "single"


def test_client_credentials_are_multi_workspace_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in MULTI.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(workspace=True)
    assert settings.workspace_mode() == "multi"
    assert settings.slack_scopes == "app_mentions:read,chat:write,commands"
    assert settings.slack_authorize_url == "https://slack.com/oauth/v2/authorize"


def test_no_credentials_is_allowed_only_where_no_workspace_is_needed() -> None:
    assert load_settings().workspace_mode() is None
    with pytest.raises(ConfigError, match=r"SLACK_BOT_TOKEN.*SLACK_CLIENT_ID"):
        load_settings(workspace=True)


def test_bot_token_with_client_credentials_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    monkeypatch.setenv("SLACK_CLIENT_ID", "111.222")
    with pytest.raises(ConfigError, match="SLACK_BOT_TOKEN and SLACK_CLIENT_ID are set together"):
        load_settings()


@pytest.mark.parametrize("missing", ["SLACK_CLIENT_SECRET", "DATABASE_URL", "SLACKQ_TOKEN_KEY"])
def test_multi_mode_names_what_is_missing(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    for name, value in MULTI.items():
        if name != missing:
            monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=missing):
        load_settings(workspace=True)


@pytest.mark.parametrize("module", ["worker", "producers"])
def test_both_modes_at_once_stop_each_process_with_one_line(module: str) -> None:
    env = process_env(SLACK_SIGNING_SECRET="x", SLACK_BOT_TOKEN="xoxb-1", **MULTI)
    result = subprocess.run([sys.executable, "-m", module], env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    named = "SLACK_BOT_TOKEN and SLACK_CLIENT_ID + SLACK_CLIENT_SECRET are set together"
    assert named in result.stderr
    assert "xoxb-1" not in result.stderr and "s3cret" not in result.stderr


def test_worker_with_neither_mode_stops_with_one_line() -> None:
    result = subprocess.run([sys.executable, "-m", "worker"], env=process_env(),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "SLACK_BOT_TOKEN" in result.stderr and "SLACK_CLIENT_ID" in result.stderr


def test_run_command_defaults_the_store_in_multi_mode_only(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(slackq.run, "VAR_DIR", tmp_path / "var")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "x")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    assert "DATABASE_URL" not in prepare_environment()
    assert not (tmp_path / "var").exists()
    monkeypatch.delenv("SLACK_BOT_TOKEN")
    monkeypatch.setenv("SLACK_CLIENT_ID", "111.222")
    monkeypatch.setenv("SLACK_CLIENT_SECRET", "s3cret")
    env = prepare_environment()
    assert env["DATABASE_URL"] == f"sqlite:///{tmp_path / 'var' / 'slackq.db'}"
    assert (tmp_path / "var" / "token.key").read_text().strip() == env["SLACKQ_TOKEN_KEY"]


def test_run_command_creates_a_local_store_once(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    local_store_defaults(env, tmp_path / "var")
    key_file = tmp_path / "var" / "token.key"
    assert env["DATABASE_URL"] == f"sqlite:///{tmp_path / 'var' / 'slackq.db'}"
    assert Fernet(env["SLACKQ_TOKEN_KEY"].encode())
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    again: dict[str, str] = {}
    local_store_defaults(again, tmp_path / "var")
    assert again == env  # the same key on every start: the stored tokens stay readable
    given = {"DATABASE_URL": "postgresql://db/x", "SLACKQ_TOKEN_KEY": "k"}
    local_store_defaults(given, tmp_path / "other")
    assert given == {"DATABASE_URL": "postgresql://db/x", "SLACKQ_TOKEN_KEY": "k"}
    assert not (tmp_path / "other").exists()


def _start(module: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module], capture_output=True, text=True,
                          timeout=60, env=process_env(SLACK_SIGNING_SECRET="x", **{**MULTI, **env}))


@pytest.mark.parametrize("module", ["worker", "producers"])
def test_a_malformed_token_key_stops_start_up_with_one_line(module: str, tmp_path: Path) -> None:
    result = _start(module, DATABASE_URL=f"sqlite:///{tmp_path / 's.db'}",
                    SLACKQ_TOKEN_KEY="not-a-fernet-key")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "SLACKQ_TOKEN_KEY" in result.stderr and "not-a-fernet-key" not in result.stderr


def test_an_unreachable_database_stops_start_up_without_its_password() -> None:
    from slackq.embedded import free_port

    url = f"postgresql://slackq:hunter2-secret@127.0.0.1:{free_port()}/slackq"
    result = _start("worker", DATABASE_URL=url)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "DATABASE_URL" in result.stderr and "hunter2" not in result.stderr


async def test_a_key_that_cannot_read_the_stored_tokens_stops_start_up(tmp_path: Path) -> None:
    from slack_sdk.oauth.installation_store import Installation

    from slackq.installations import open_db
    from slackq.settings import Settings

    url = f"sqlite:///{tmp_path / 's.db'}"
    db = open_db(Settings(slack_client_id="111.222", slack_client_secret="s", database_url=url,
                          SLACKQ_TOKEN_KEY=Fernet.generate_key().decode()))
    await db.create_tables()
    await db.installations.async_save(Installation(app_id="A", team_id="T1", bot_token="xoxb-1",
                                                   bot_id="B", bot_user_id="U", user_id="U1"))
    await db.close()
    result = _start("producers", DATABASE_URL=url)  # MULTI's key is another one
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "cannot be decrypted with SLACKQ_TOKEN_KEY" in result.stderr
