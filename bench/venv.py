"""Run a benchmark script under the project's `.venv` whatever Python started it.

`python bench/<script>.py` with any Python 3 re-executes itself with `.venv/bin/python` (created
by `python3 dev.py test`), so each benchmark stays one command. Standard library only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def use_project_venv() -> None:
    """Re-execute this process with the project's `.venv` Python, if it is another one."""
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and VENV_PYTHON.exists():
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


BENCH_VENV = ROOT / ".venv-bench"
BENCH_LOCK = ROOT / "requirements-bench.lock"


def bench_venv_python() -> Path:
    """The Python of `.venv-bench` (arq and saq, bench/requirements-bench.in), made on first use.

    The peers need redis<6 and slackq pins redis 8.1, hence a venv of their own. Installed from
    the hash-pinned lock again whenever the lock changes (the stamp holds its contents).
    """
    import subprocess

    python = BENCH_VENV / "bin" / "python"
    stamp = BENCH_VENV / ".requirements-bench.lock"
    wanted = BENCH_LOCK.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print("bench: installing requirements-bench.lock into .venv-bench", flush=True)
    # `-m venv` from the repository root: within bench/, `import venv` is this very module.
    subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True, cwd=ROOT)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--require-hashes", "-r", str(BENCH_LOCK)], check=True)
    stamp.write_text(wanted)
    return python
