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
