"""Log lines reach stderr whole: the processes of a worker dyno share it (worker/supervisor.py)."""

from __future__ import annotations

import json
import subprocess
import sys

# A stand-in for stderr that records each write() call, installed before logging is configured.
RECORD_WRITES = """
import json, logging, sys
import structlog

class Recorder:
    def __init__(self):
        self.writes = []
    def write(self, text):
        self.writes.append(text)
        return len(text)
    def flush(self):
        pass
    def isatty(self):
        return False

recorder = Recorder()
sys.stderr = recorder
from slackq.logging import configure_logging
configure_logging("json", "info")
structlog.get_logger().info("from_structlog", job_id="Ev1x")
logging.getLogger("uvicorn.error").warning("from_stdlib")
sys.__stdout__.write(json.dumps(recorder.writes))
"""


def test_each_log_line_is_one_write_with_its_newline() -> None:
    """print() writes a line and its newline separately: two processes logging at the same
    moment then produce `{...}{...}` and an empty line (seen in CI from a dyno's two workers)."""
    out = subprocess.run([sys.executable, "-c", RECORD_WRITES], capture_output=True, text=True,
                         timeout=30, check=True)
    writes = json.loads(out.stdout)
    assert len(writes) == 2, writes
    for text in writes:
        assert text.endswith("\n") and text.count("\n") == 1, writes
        json.loads(text)
    assert [json.loads(text)["event"] for text in writes] == ["from_structlog", "from_stdlib"]
