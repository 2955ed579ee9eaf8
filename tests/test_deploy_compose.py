"""docker-compose.yml, Dockerfile, .dockerignore: every reference checked without a Docker engine.

No Docker engine runs here, so the compose file cannot be brought up. Instead each reference it
makes is checked against the repository (build context, Dockerfile, mounted files, environment
variables, ports, health checks), and the Redis service's command line is run for real with the
local `redis-server` so a typo in it cannot land.
"""

from __future__ import annotations

import fnmatch
import re
import secrets
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from producers.app import create_app
from slackq.embedded import PROJECT_ROOT, RedisProcess, free_port
from slackq.settings import Settings
from tests.processes import procfile_commands

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: `${VAR}`, `${VAR:-default}`, `${VAR:?error}`, `$$` -> `$`."""

    def one(match: re.Match[str]) -> str:
        whole = match.group(0)
        name = match.group(1)
        if ":-" in whole:
            return env.get(name) or whole.split(":-", 1)[1][:-1]
        if ":?" in whole and not env.get(name):
            raise AssertionError(f"{name} is required: {whole}")
        return env.get(name, "")

    return _VAR.sub(one, text.replace("$$", "\0")).replace("\0", "$")


def referenced_variables(text: str) -> set[str]:
    return set(_VAR.findall(text.replace("$$", "")))


def test_services_and_build_context(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"redis", "web", "worker"}
    for name in ("web", "worker"):
        build = compose["services"][name]["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context.is_dir()
        assert (context / build["dockerfile"]).is_file()


def test_app_commands_are_the_procfile_lines(compose: dict[str, Any]) -> None:
    procfile = procfile_commands()
    for name in ("web", "worker"):
        assert shlex.join(compose["services"][name]["command"]) == procfile[name]


def test_mounted_files_exist_and_data_is_a_named_volume(compose: dict[str, Any]) -> None:
    redis_service = compose["services"]["redis"]
    mounts = dict(volume.rsplit(":", 2)[:2] if volume.count(":") == 2 else volume.split(":")
                  for volume in redis_service["volumes"])
    assert mounts["redis-data"] == "/data"
    assert "redis-data" in compose["volumes"]
    for source in mounts:
        if source.startswith("."):
            assert (COMPOSE.parent / source).is_file(), source
    assert mounts["./redis.conf"] == "/usr/local/etc/redis/redis.conf"
    assert "/usr/local/etc/redis/redis.conf" in " ".join(redis_service["command"])


def test_every_variable_is_documented(compose: dict[str, Any]) -> None:
    variables = referenced_variables(COMPOSE.read_text())
    assert {"REDIS_PASSWORD", "SLACK_SIGNING_SECRET", "SLACK_BOT_TOKEN"} <= variables
    example = (PROJECT_ROOT / ".env.example").read_text()
    guide = (PROJECT_ROOT / "docs" / "deploying.md").read_text()
    for name in variables:
        assert re.search(rf"^{name}=", example, re.M), f"{name} missing from .env.example"
        assert name in guide, f"{name} missing from docs/deploying.md"


def test_app_environment_names_are_settings(compose: dict[str, Any]) -> None:
    """A misspelt variable (REDIS_ULR) would be ignored silently by the settings object."""
    known = {name.upper() for name in Settings.model_fields} | {"SLACKQ_ALLOW_EVICTION"}
    for name in ("web", "worker"):
        environment = compose["services"][name]["environment"]
        assert set(environment) <= known, set(environment) - known
        assert environment["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD")
        assert environment["REDIS_URL"].endswith("@redis:6379/0")


def test_ports_and_scaling(compose: dict[str, Any]) -> None:
    web, worker = compose["services"]["web"], compose["services"]["worker"]
    [mapping] = web["ports"]
    assert mapping.rsplit(":", 1)[1] == web["environment"]["PORT"]
    # --scale worker=3: three containers cannot share a name or a host port.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["expose"] == [worker["environment"]["METRICS_PORT"]]
    assert "ports" not in compose["services"]["redis"]


def test_health_checks_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
        assert service["restart"] == "unless-stopped"
    for name in ("web", "worker"):
        assert services[name]["depends_on"] == {"redis": {"condition": "service_healthy"}}
    web_check = " ".join(services["web"]["healthcheck"]["test"])
    assert f"127.0.0.1:{services['web']['environment']['PORT']}/health/redis" in web_check
    app = create_app(Settings(slack_signing_secret="unused"))
    assert {"/health/redis", "/metrics"} <= {getattr(route, "path", "") for route in app.routes}
    worker_check = " ".join(services["worker"]["healthcheck"]["test"])
    assert f"127.0.0.1:{services['worker']['environment']['METRICS_PORT']}/metrics" in worker_check
    # Heroku-like grace: the worker drains for 25 s after SIGTERM, compose waits 30 s.
    assert services["worker"]["stop_grace_period"] == "30s"


def test_password_comes_from_the_environment_not_a_file(compose: dict[str, Any]) -> None:
    command = " ".join(compose["services"]["redis"]["command"])
    assert '--requirepass "$$REDIS_PASSWORD"' in command
    conf = (PROJECT_ROOT / "redis.conf").read_text()
    assert not re.search(r"^\s*(requirepass|masterauth|user)\s", conf, re.M)
    assert "REDISCLI_AUTH" in compose["services"]["redis"]["healthcheck"]["test"][1]


def dockerfile_copies() -> list[str]:
    sources = []
    for line in (PROJECT_ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            sources += line.split()[1:-1]
    return sources


def test_dockerfile_copies_exist_and_are_not_ignored() -> None:
    ignored = [line.strip() for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    sources = dockerfile_copies()
    assert {"requirements.lock", "slackq", "producers", "worker", "redis.conf"} <= set(sources)
    for source in sources:
        assert (PROJECT_ROOT / source).exists(), source
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source
    for must_ignore in (".git", ".venv", ".env", "var", "node_modules"):
        assert must_ignore in ignored
    text = (PROJECT_ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r requirements.lock" in text
    assert re.search(r"^USER (?!root)", text, re.M)


@pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                    reason="needs redis-server and redis-cli on PATH")
def test_redis_service_command_and_health_check_run(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """Run the compose command line with the local redis-server, bound to loopback."""
    service = compose["services"]["redis"]
    password = secrets.token_hex(16)
    env = {"REDIS_PASSWORD": password, "PATH": "/usr/bin:/bin:/usr/local/bin"}
    port = free_port()
    script = interpolate(service["command"][2], env)
    script = (script.replace("docker-entrypoint.sh ", "")
              .replace("/usr/local/etc/redis/redis.conf", str(PROJECT_ROOT / "redis.conf"))
              .replace("--dir /data", f"--dir {tmp_path}"))
    script += f" --port {port} --bind 127.0.0.1 --logfile {tmp_path / 'server.log'}"
    server = subprocess.Popen(["sh", "-c", script], env=env, start_new_session=True)
    probe = RedisProcess(data_dir=tmp_path, port=port, overrides={"requirepass": password})
    probe.process = server  # type: ignore[assignment]
    try:
        probe.wait_ready(20)
        check = interpolate(service["healthcheck"]["test"][1], env).replace(
            "redis-cli", f"redis-cli -p {port}")
        assert subprocess.run(["sh", "-c", check], env=env, timeout=10).returncode == 0
        wrong = {**env, "REDIS_PASSWORD": "not-the-password"}
        assert subprocess.run(["sh", "-c", check], env=wrong, timeout=10,
                              stderr=subprocess.DEVNULL).returncode != 0
        no_retry = Retry(NoBackoff(), 0)  # redis-py retries a refused AUTH with backoff
        with redis.Redis(port=port, retry=no_retry) as anonymous, \
                pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        with redis.Redis(port=port, password=password, decode_responses=True) as client:
            assert client.config_get("appendonly")["appendonly"] == "yes"
            assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
            assert client.config_get("dir")["dir"] == str(tmp_path)
            with pytest.raises(redis.ResponseError, match="unknown command"):
                client.flushall()
            assert client.client_setname("bullmq-worker") is True
    finally:
        probe.kill()
