"""Errors of the producer side. Each bad request maps to one 4xx status; Redis trouble to 503."""

from __future__ import annotations

from slackq.errors import SlackqError


class RequestRejected(SlackqError):
    """A request slackq will not enqueue; `status` is the 4xx answer, `reason` a short code.

    The message goes back to the caller as-is, so it never contains request data or a traceback.
    `close_connection`: the body was not read to its end, so the connection cannot serve another
    request (the answer says `Connection: close` and the server closes it).
    """

    status = 400
    reason = "bad_request"
    close_connection = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(RequestRejected):
    """Missing, malformed or wrong signature, or a timestamp outside the 5-minute window."""

    status = 401
    reason = "invalid_signature"


class MalformedRequest(RequestRejected):
    """The body is not the JSON / form Slack sends, or lacks a field the job id comes from."""

    status = 400
    reason = "malformed"


class JobNotStorable(RequestRejected):
    """The request passed its checks, but its job could not be prepared for Redis (e.g. data
    BullMQ cannot serialise). Only this request fails: the batch it would have joined goes on."""

    status = 400
    reason = "job_not_storable"


class BodyTooLarge(RequestRejected):
    """The body is larger than `producers.body.MAX_BODY_BYTES`."""

    status = 413
    reason = "body_too_large"
    close_connection = True


class BodyTimeout(RequestRejected):
    """The body did not arrive within `WEB_BODY_TIMEOUT_SECONDS`."""

    status = 408
    reason = "body_timeout"
    close_connection = True


class UnsupportedMediaType(RequestRejected):
    """The Content-Type is not one this endpoint accepts."""

    status = 415
    reason = "unsupported_media_type"
