"""Everything that takes jobs off the queue: the worker dyno (`python -m worker`)."""
