"""slackq: durable Slack event processing on BullMQ.

`producers` puts jobs on the queue, `worker` takes them off; this package holds what both share:
settings, the job contract, Redis connections, logging and errors.
"""
