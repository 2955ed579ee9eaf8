"""The one error tree of slackq. Third-party errors are converted at the edge, `from` the cause."""


class SlackqError(Exception):
    """Base of every error slackq raises on purpose."""


class ConfigError(SlackqError):
    """A setting is missing or malformed; the message names the environment variable."""


class RedisUnavailable(SlackqError):
    """Redis could not be reached, was loading, or answered too slowly within the budget."""


class RedisMisconfigured(SlackqError):
    """Redis answers, but is set up in a way that would lose jobs (e.g. an evicting policy)."""


class RedisAuthFailed(RedisMisconfigured):
    """Redis refused the credentials or the TLS handshake of `REDIS_URL`: retrying cannot help."""


class StoreError(SlackqError):
    """The installation store (multi-workspace mode) could not be read or written: the database
    is down, or `SLACKQ_TOKEN_KEY` cannot decrypt what it holds."""
