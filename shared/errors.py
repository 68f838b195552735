"""Domain errors: raised by domain code, turned into gRPC statuses at the edge.

Each error carries its gRPC status code and an UPPER_SNAKE reason for `google.rpc.ErrorInfo`,
so clients can branch on the reason and people can act on the message. The codes are named by
string (the `grpc.StatusCode` member name) so domain code stays free of gRPC imports.
"""

from __future__ import annotations

# User input echoed in a message is cut to this many characters.
MAX_QUOTED_CHARS = 120


def quoted(value: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """`value` as a quoted literal for a message, at most `limit` characters of it: echoing
    input back must neither flood a message nor carry a whole payload."""
    text = str(value)
    if len(text) > limit:
        text = f"{text[:limit]}…"
    return repr(text)


# Where a library's message turns into a Python traceback of the thread that failed (DuckDB
# appends one when a Python scan raises): nothing from there on reaches a caller.
_TRACEBACK_MARKERS = ("Detail: Python exception", "Traceback (most recent call last)")
MAX_DETAIL_CHARS = 300


def summary(exc: BaseException, limit: int = MAX_DETAIL_CHARS) -> str:
    """A third-party error as one bounded line for a message: its first line, never the
    traceback or the stack some libraries append."""
    text = str(exc)
    for marker in _TRACEBACK_MARKERS:
        text = text.split(marker, 1)[0]
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) <= limit else f"{text[:limit]}…"


class ConfigurationError(Exception):
    """A service cannot start with the settings it was given; the message says what to set."""


class DomainError(Exception):
    """Base of every error a request can legitimately cause."""

    code: str = "INTERNAL"
    default_reason: str = "INTERNAL"

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = metadata or {}


class InvalidArgument(DomainError):
    code = "INVALID_ARGUMENT"
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str, *, reason: str | None = None) -> None:
        super().__init__(f"{field}: {message}", reason=reason, metadata={"field": field})
        self.field = field
        self.description = message


class NotFound(DomainError):
    code = "NOT_FOUND"
    default_reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    code = "ALREADY_EXISTS"
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    code = "FAILED_PRECONDITION"
    default_reason = "FAILED_PRECONDITION"


class Aborted(DomainError):
    code = "ABORTED"
    default_reason = "ABORTED"


class Unavailable(DomainError):
    code = "UNAVAILABLE"
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(DomainError):
    code = "DEADLINE_EXCEEDED"
    default_reason = "DEADLINE_EXCEEDED"


class ResourceExhausted(DomainError):
    code = "RESOURCE_EXHAUSTED"
    default_reason = "RESOURCE_EXHAUSTED"


class Unauthenticated(DomainError):
    code = "UNAUTHENTICATED"
    default_reason = "UNAUTHENTICATED"


class Internal(DomainError):
    """A failure that is nobody's request's fault and that retrying will not fix."""

    code = "INTERNAL"
    default_reason = "INTERNAL"


class PermissionDenied(DomainError):
    code = "PERMISSION_DENIED"
    default_reason = "PERMISSION_DENIED"


# How a status from another service reads to this service's caller. Codes that mean the same
# for them pass through; anything else (this service's own credentials refused, a method the
# peer lacks, a peer's INTERNAL) is this service's INTERNAL: never a retryable UNAVAILABLE,
# which would send clients retrying what no retry can fix.
_UPSTREAM_CODES: dict[str, type[DomainError]] = {
    "NOT_FOUND": NotFound,
    "ALREADY_EXISTS": AlreadyExists,
    "FAILED_PRECONDITION": FailedPrecondition,
    "ABORTED": Aborted,
    "UNAVAILABLE": Unavailable,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
}


def upstream_error(upstream: str, code: str, details: str) -> DomainError:
    """The domain error for `upstream` answering `code` (a grpc.StatusCode name)."""
    error = _UPSTREAM_CODES.get(code, Internal)
    reason = None if error is not Internal else f"UPSTREAM_{code}"
    return error(
        f"{upstream} answered {code}: {details[:MAX_DETAIL_CHARS]}",
        reason=reason,
        metadata={"upstream": upstream, "upstream_code": code},
    )


def redact(text: str, replacements: dict[str, str]) -> str:
    """`text` with each server path in `replacements` (longest first) named, not shown."""
    for path in sorted(replacements, key=len, reverse=True):
        if path:
            text = text.replace(path, replacements[path])
    return text
