"""Everything that puts jobs on the queue: the Slack webhook (`producers.app`)."""
