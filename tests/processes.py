"""Start the Procfile's processes as real subprocesses, exactly as a dyno would run them.

The code lives in `harness.procfile` (the end-to-end harness runs the same processes); the
names stay importable from here for the tests.
"""

from harness.procfile import START_DEADLINE, Proc, process_env, procfile_commands, wait_http_ok

__all__ = ["START_DEADLINE", "Proc", "process_env", "procfile_commands", "wait_http_ok"]
