#!/usr/bin/env python3
"""The two commands of slackq, for a fresh clone with only Python >= 3.11 and git.

    python3 dev.py run     set up .venv, then run web + worker (embedded Redis if no REDIS_URL)
    python3 dev.py test    set up .venv and the Node interop deps, then run the test suite

Extra arguments after `test` go to pytest (`python3 dev.py test -m durability -x`). Without test
paths the suite runs on pytest-xdist workers (`parallel_options`); `-n 0` runs it in one process.
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
    # --no-compile: pip would byte-compile all ~4,000 installed modules, a CPU cost each fresh
    # clone pays; Python compiles the ones a run imports (and caches them) anyway.
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--no-compile"]
    print(f"dev.py: installing {lock.name}", flush=True)
    subprocess.run([*pip, "--require-hashes", "-r", str(lock)], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    stamp.write_text(wanted)


def start_node_modules() -> subprocess.Popen[bytes] | None:
    """Start `npm ci` of the pinned Node BullMQ used by the interop tests and benchmarks.

    It runs while pip installs (mostly network and disk for npm, CPU for pip); the caller waits
    for it with `finish_node_modules` before the tests start. None: nothing to do.
    """
    lock = NODE_DIR / "package-lock.json"
    if not lock.exists():
        return None
    if shutil.which("npm") is None:
        print("dev.py: npm not found; Node interop tests will be skipped", flush=True)
        return None
    stamp = NODE_DIR / "node_modules" / ".slackq-installed"
    if stamp.exists() and stamp.read_text() == _digest(lock):
        return None
    print("dev.py: npm ci (tests/node)", flush=True)
    return subprocess.Popen(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR)


def finish_node_modules(npm: subprocess.Popen[bytes] | None) -> None:
    if npm is None:
        return
    if npm.wait() != 0:
        raise subprocess.CalledProcessError(npm.returncode, npm.args)
    lock = NODE_DIR / "package-lock.json"
    (NODE_DIR / "node_modules" / ".slackq-installed").write_text(_digest(lock))


def missing_system_packages() -> list[str]:
    """Debian packages the tests need and this machine lacks.

    fuse3: the power-loss durability tests. chromium: the dashboard's browser tests;
    fonts-liberation is only a Recommends of chromium, and without it the screenshots show boxes
    instead of text. Where they cannot be installed (not root, not Debian-like) those tests skip
    with the reason, and under CI=true fail instead.
    """
    import ctypes.util

    missing = []
    if ctypes.util.find_library("fuse3") is None:
        missing.append("fuse3")
    if shutil.which("chromium") is None:
        missing += ["chromium", "fonts-liberation"]
    return missing


def ensure_system_packages() -> None:
    """apt-get install what `missing_system_packages` names, when we may (root, apt-get)."""
    missing = missing_system_packages()
    if not missing:
        return
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"dev.py: {' '.join(missing)} missing; the tests needing them will be skipped",
              flush=True)
        return
    print(f"dev.py: apt-get install {' '.join(missing)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Another apt-get (a shared machine's) may hold the lock: wait for it rather than fail.
    lock_wait = ["-o", "DPkg::Lock::Timeout=300"]
    for command in (["apt-get", *lock_wait, "update", "-qq"],
                    ["apt-get", *lock_wait, "install", "-y", "-qq", "--no-install-recommends",
                     *missing]):
        subprocess.run(command, check=False, env=env, stdout=subprocess.DEVNULL)


def parallel_options(args: list[str]) -> list[str]:
    """pytest-xdist options for a run of the whole suite; none when `args` name tests or choose.

    Many tests wait (on a fault's duration, sentinels electing, campaign traffic), so two
    workers on two cores overlap those waits with other tests. One worker per core, not more:
    the suite also starts many Python processes (~2 s of CPU each for the web), and with one more on
    a shared 2-core machine their start-up and the 3 s webhook budget test ran past their
    deadlines. Each test module is one unit of work, long modules first (tests/scheduling.py,
    which replaces loadgroup's scheduler); `--no-loadscope-reorder` keeps that order instead of
    xdist's largest-group-first.
    """
    chooses = any(arg.startswith(("-n", "--numprocesses", "--dist")) or arg == "no:xdist"
                  for arg in args)
    names_tests = any("::" in arg or (ROOT / arg).exists() for arg in args
                      if not arg.startswith("-"))
    if chooses or names_tests:
        return []
    workers = max(2, os.cpu_count() or 1)
    return ["-n", str(workers), "--dist", "loadgroup", "--no-loadscope-reorder"]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"run", "test"}:
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        ensure_venv(ROOT / "requirements.lock")
        return subprocess.call([str(PYTHON), "-m", "slackq.run", *rest], cwd=ROOT)
    npm = start_node_modules()
    ensure_venv(ROOT / "requirements-test.lock")
    finish_node_modules(npm)
    ensure_system_packages()
    return subprocess.call([str(PYTHON), "-m", "pytest", *parallel_options(rest), *rest],
                           cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
