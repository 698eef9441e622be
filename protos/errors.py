"""Domain errors shared by every service, and the one table mapping them to gRPC status codes.

Servers raise these from domain code; servicers turn them into statuses (``protos.rpc``) and
clients turn statuses back into the same exceptions, so callers handle one set of errors.
"""

from __future__ import annotations


class NasError(Exception):
    """Base of the errors that cross service boundaries."""


class NotFoundError(NasError, KeyError):
    """The named thing (job, layout, trial) does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class InvalidArgumentError(NasError, ValueError):
    """The request is malformed; the message names the field."""


class FailedPreconditionError(NasError):
    """The request is well-formed but not valid in the current state (e.g. a stale push)."""


class AlreadyExistsError(NasError):
    """Creating something that exists, with different contents."""


class ResourceExhaustedError(NasError):
    """Too large, or too many at once."""


class UnavailableError(NasError):
    """The service cannot answer now; retry later."""


class UnauthenticatedError(NasError):
    """No or wrong credentials."""


class PermissionDeniedError(NasError):
    """Authenticated, but not allowed."""


class DeadlineExceededError(NasError):
    """The call ran out of time."""


# error class <-> gRPC status-code name (grpc.StatusCode[name]); the only such table.
STATUS_NAMES: dict[type[NasError], str] = {
    NotFoundError: "NOT_FOUND",
    InvalidArgumentError: "INVALID_ARGUMENT",
    FailedPreconditionError: "FAILED_PRECONDITION",
    AlreadyExistsError: "ALREADY_EXISTS",
    ResourceExhaustedError: "RESOURCE_EXHAUSTED",
    UnavailableError: "UNAVAILABLE",
    UnauthenticatedError: "UNAUTHENTICATED",
    PermissionDeniedError: "PERMISSION_DENIED",
    DeadlineExceededError: "DEADLINE_EXCEEDED",
}
ERRORS_BY_STATUS: dict[str, type[NasError]] = {v: k for k, v in STATUS_NAMES.items()}


def status_name(exc: NasError) -> str:
    """The status-code name for a domain error (its nearest mapped base class)."""
    for cls in type(exc).__mro__:
        if cls in STATUS_NAMES:
            return STATUS_NAMES[cls]
    return "INTERNAL"
