#!/usr/bin/env python3
"""The two commands of slackq, for a fresh clone with only Python >= 3.11 and git.

    python3 dev.py run     set up .venv, then run web + worker (embedded Redis if no REDIS_URL)
    python3 dev.py test    set up .venv and the Node interop deps, then run the test suite

Extra arguments after `test` go to pytest (`python3 dev.py test -m durability -x`).
Set-up is repeated only when a lock file changes. Standard library only: it runs before any
dependency is installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
NODE_DIR = ROOT / "tests" / "node"


def _digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_venv(lock: Path) -> None:
    """Create .venv and install the hash-pinned lock file plus the project (no deps)."""
    stamp = VENV / f".slackq-{lock.name}"
    wanted = _digest(lock, ROOT / "pyproject.toml")
    if stamp.exists() and stamp.read_text() == wanted:
        return
    if not PYTHON.exists():
        print("dev.py: creating .venv", flush=True)
        venv.create(VENV, with_pip=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    print(f"dev.py: installing {lock.name}", flush=True)
    subprocess.run([*pip, "--require-hashes", "-r", str(lock)], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    stamp.write_text(wanted)


def ensure_node_modules() -> None:
    """`npm ci` the pinned Node BullMQ used by the interop tests and benchmarks."""
    lock = NODE_DIR / "package-lock.json"
    if not lock.exists():
        return
    if shutil.which("npm") is None:
        print("dev.py: npm not found; Node interop tests will be skipped", flush=True)
        return
    stamp = NODE_DIR / "node_modules" / ".slackq-installed"
    wanted = _digest(lock)
    if stamp.exists() and stamp.read_text() == wanted:
        return
    print("dev.py: npm ci (tests/node)", flush=True)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR, check=True)
    stamp.write_text(wanted)


def ensure_fuse3() -> None:
    """Install Debian's fuse3 for the power-loss durability tests, when we may and must.

    Only as root on a Debian-like machine (CI here); elsewhere those tests skip with the reason.
    """
    import ctypes.util

    if ctypes.util.find_library("fuse3") is not None:
        return
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        print("dev.py: libfuse3 missing; power-loss tests will be skipped", flush=True)
        return
    print("dev.py: apt-get install fuse3 (power-loss durability tests)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "fuse3"]):
        subprocess.run(command, check=False, env=env, stdout=subprocess.DEVNULL)


def ensure_chromium() -> None:
    """Install Debian's Chromium for the dashboard's browser tests, when we may and must.

    Only as root on a Debian-like machine (CI here); elsewhere those tests skip with the reason
    (under CI=true they fail instead). fonts-liberation is only a Recommends of chromium: without
    it the screenshots show boxes instead of text.
    """
    if shutil.which("chromium") is not None:
        return
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        print("dev.py: chromium missing; dashboard browser tests will be skipped", flush=True)
        return
    print("dev.py: apt-get install chromium (dashboard browser tests)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium",
                     "fonts-liberation"]):
        subprocess.run(command, check=False, env=env, stdout=subprocess.DEVNULL)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"run", "test"}:
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        ensure_venv(ROOT / "requirements.lock")
        return subprocess.call([str(PYTHON), "-m", "slackq.run", *rest], cwd=ROOT)
    ensure_venv(ROOT / "requirements-test.lock")
    ensure_node_modules()
    ensure_fuse3()
    ensure_chromium()
    return subprocess.call([str(PYTHON), "-m", "pytest", *rest], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
