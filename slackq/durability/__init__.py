"""Durability harness: kill Redis while jobs flow, restart it, and prove what was kept.

Producers add BullMQ jobs with deterministic ids and record `sent`/`acked` in a ledger outside the
Redis under test; workers record an `effect` per execution; a chaos controller kills the server at
seeded random moments (SIGKILL, or SIGKILL plus dropping every byte that was not fsynced) and
restarts it on the same data directory. The checker then compares the ledger with what happened.

Run a campaign with `python -m slackq.durability --help`.
"""
