"""Durability harness: kill Redis while jobs flow, restart it, and prove what was kept.

A dev and test tool, not part of the runtime: it is a top-level package (not under `slackq/`) so
that `pip install .` and the Docker image leave it out, and so that it may import the apps (its
end-to-end mode runs them) while the shared core never imports it. It also holds the Slack
stand-in (`harness.slack_standin`) that the tests and the README walk-through use.

Producers add BullMQ jobs with deterministic ids and record `sent`/`acked` in a ledger outside the
Redis under test; workers record an `effect` per execution; a chaos controller kills the server at
seeded random moments (SIGKILL, or SIGKILL plus dropping every byte that was not fsynced) and
restarts it on the same data directory. The checker then compares the ledger with what happened.

Run a campaign with `python -m harness --help`.
"""
