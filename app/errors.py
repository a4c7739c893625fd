"""Errors a user can cause. One handler in app.main turns them into 4xx answers."""

from __future__ import annotations


class UserError(Exception):
    status_code = 422

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(UserError):
    status_code = 404

    def __init__(self, message: str = "Not found."):
        super().__init__(message)


class NotAuthenticated(UserError):
    status_code = 401

    def __init__(self, message: str = "Please log in."):
        super().__init__(message)


class InsufficientCredits(UserError):
    status_code = 402


class CsrfFailed(UserError):
    status_code = 403


class ServiceUnavailable(UserError):
    status_code = 503


class TooManyJobs(UserError):
    """Fair sharing: the user already has as many jobs queued or running as one may.
    ``retry_after``: about how many seconds until one of them finishes."""

    status_code = 429

    def __init__(self, message: str, *, retry_after: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class LinkError(UserError):
    """A link from an email that does not work (any more): unknown, used, or expired."""

    status_code = 400

    def __init__(self, message: str, *, expired: bool = False):
        super().__init__(message)
        self.expired = expired


class AccountSuspended(UserError):
    """An operator suspended this account: it may not log in or generate."""

    status_code = 403

    def __init__(
        self, message: str = "This account is suspended. If you think this is a mistake, contact the operator."
    ):
        super().__init__(message)
