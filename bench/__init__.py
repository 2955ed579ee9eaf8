"""Benchmarks (scripts, not tests), each one command with any Python 3 (`bench.venv`):

* `python bench/run.py`: workers and enqueue next to Node BullMQ;
* `python bench/webhook.py`: ack latency next to a store-before-ack floor and Bolt;
* `python bench/roundtrip.py`: CPU per Redis round trip next to ioredis.
"""
