"""Benchmarks (scripts, not tests): `python bench/run.py` prints slackq next to Node BullMQ."""
