"""Errors of the durability harness, under slackq's one error tree."""

from slackq.errors import SlackqError


class DurabilityError(SlackqError):
    """Base of the harness's own errors."""


class ServerControlError(DurabilityError):
    """The server under test could not be started, killed or reached."""


class BackendUnavailable(DurabilityError):
    """A server backend or fault layer cannot run on this machine; the message says why."""


class PowerLossUnavailable(BackendUnavailable):
    """The FUSE power-loss layer cannot run here (no libfuse3, /dev/fuse unusable, ...)."""
