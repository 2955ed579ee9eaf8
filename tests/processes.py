"""Start the Procfile's processes as real subprocesses, exactly as a dyno would run them.

The code lives in `harness.procfile` (the end-to-end harness runs the same processes); the
names stay importable from here for the tests.
"""

from harness.procfile import Proc, process_env, procfile_commands, wait_http_ok

__all__ = ["Proc", "process_env", "procfile_commands", "wait_http_ok"]
