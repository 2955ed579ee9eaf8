"""The sections of `bench/run.py`, one module each; `core` holds what they share."""
