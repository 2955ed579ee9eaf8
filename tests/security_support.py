"""Security test helpers: test certificates, a TLS-only redis-server, the Procfile stack."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import redis

from harness.procfile import procfile_stack as harness_stack
from harness.slack_standin import FakeSlack
from slackq.embedded import RedisProcess, free_port
from tests.processes import Proc, process_env
from tests.slack_requests import BOT_TOKEN, SIGNING_SECRET


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path


def tls_unavailable_reason() -> str | None:
    """Why TLS cannot be tested here, or None: needs `openssl` and a TLS-enabled redis-server."""
    if shutil.which("openssl") is None:
        return "openssl CLI not found (needed to make test certificates)"
    binary = shutil.which("redis-server")
    if binary is None:
        return "no redis-server on PATH"
    # Built with TLS, this exits at once with "not listen anywhere"; without, `tls-port` is
    # a bad directive.
    probe = subprocess.run([binary, "--port", "0", "--tls-port", "0"], capture_output=True,
                           text=True, timeout=10)
    output = probe.stdout + probe.stderr
    if "Configured to not listen anywhere" not in output:
        return f"redis-server has no TLS support: {output.strip()[-200:]}"
    return None


def make_certificates(directory: Path) -> Certificates:
    """A throwaway CA and a server certificate for 127.0.0.1 (EC P-256: fast to make)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for args in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1",
         "-subj", "/CN=slackq test CA"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "1", "-extfile", ext],
    ):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)
    return Certificates(ca=ca, cert=cert, key=key)


@dataclass
class TLSRedis(RedisProcess):
    """A redis-server that listens on a TLS port only (the plain port is 0), with a password."""

    certs: Certificates | None = None
    password: str = ""
    tls_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        assert self.certs is not None
        self.overrides = {
            "port": "0", "tls-port": str(self.tls_port), "tls-cert-file": str(self.certs.cert),
            "tls-key-file": str(self.certs.key), "tls-ca-cert-file": str(self.certs.ca),
            "tls-auth-clients": "no", "requirepass": self.password, **self.overrides,
        }

    @property
    def url(self) -> str:
        assert self.certs is not None
        return (f"rediss://:{self.password}@127.0.0.1:{self.tls_port}/0"
                f"?ssl_ca_certs={self.certs.ca}")

    def wait_ready(self, timeout: float) -> float:
        started = time.monotonic()
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited early: {self._log_tail()}")
                with suppress(redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    if client.ping():
                        return time.monotonic() - started
                if time.monotonic() - started > timeout:
                    raise TimeoutError(f"TLS redis-server not ready: {self._log_tail()}")
                time.sleep(0.02)
        finally:
            client.close()


@contextmanager
def procfile_stack(redis_url: str, fake_slack: FakeSlack, log_dir: Path,
                   **extra_env: str) -> Iterator[tuple[str, Proc, Proc]]:
    """The Procfile's web and worker against `redis_url`; yields (base_url, web, worker).

    One worker process unless `extra_env` sets WORKER_PROCESSES (the machine is shared).
    """
    with harness_stack(redis_url, fake_slack.base_url, log_dir, secret=SIGNING_SECRET,
                       token=BOT_TOKEN, env=extra_env, start_timeout=20.0) as stack:
        yield stack.base, stack.web, stack.worker


def start_fails(name: str, redis_url: str, log_dir: Path, timeout: float = 30) -> tuple[int, str]:
    """Start one Procfile process that must refuse to start; return (exit code, its output)."""
    env = process_env(REDIS_URL=redis_url, SLACK_SIGNING_SECRET=SIGNING_SECRET,
                      SLACK_BOT_TOKEN=BOT_TOKEN, PORT=str(free_port()), WORKER_PROCESSES="1")
    proc = Proc(name, env, log_dir)
    try:
        code = proc.wait(timeout)
    finally:
        proc.stop()
    return code, proc.output()


def run_cli(redis_url: str, *args: str) -> tuple[int, str]:
    """`slackq <args>` in this process with REDIS_URL set; returns (exit code, stdout + stderr)."""
    from slackq.cli import main

    saved = os.environ.get("REDIS_URL")
    os.environ["REDIS_URL"] = redis_url
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            code = main(list(args))
    finally:
        if saved is None:
            del os.environ["REDIS_URL"]
        else:
            os.environ["REDIS_URL"] = saved
    return code, output.getvalue()
