"""Typed errors: every error answer of the server is RFC 9457 ``application/problem+json``.

:class:`ConcordError` carries the problem's fields; a subclass per common status lets a
caller catch what it can handle (``except PreconditionFailed``) and let the rest through.
The problem's ``type`` is ``urn:concord:problem:<kind>``; ``kind`` is that slug
(``stale-version``, ``not-found``, ``if-match-required``, ...).
"""

from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Optional, Type

__all__ = [
    "ConcordError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "RequestTimeout",
    "Conflict",
    "PreconditionFailed",
    "TooLarge",
    "UnsupportedMediaType",
    "Unprocessable",
    "Locked",
    "PreconditionRequired",
    "TooManyRequests",
    "ServerError",
    "Unavailable",
    "TransportError",
    "ProtocolError",
    "PROBLEM_PREFIX",
]

PROBLEM_PREFIX = "urn:concord:problem:"
"""The prefix of every problem type the server defines."""


class ConcordError(Exception):
    """An error answer of the server, or a failure to get one.

    ``status`` is the HTTP status (``None`` when no answer arrived), ``type``, ``title``
    and ``detail`` the problem's fields, ``problem`` the whole problem object as received.
    """

    status: Optional[int]
    """The HTTP status, or ``None`` when the server gave no answer."""
    type: str
    """The problem type, e.g. ``urn:concord:problem:stale-version``."""
    title: str
    """The status's reason phrase."""
    detail: str
    """What went wrong and what to do, for a person reading it."""
    problem: Dict[str, Any]
    """The problem object as received (extra members included)."""
    headers: Dict[str, str]
    """The answer's headers, lowercased names (``retry-after``, ``etag``...)."""

    def __init__(
        self,
        status: Optional[int],
        type: str = "about:blank",
        title: str = "",
        detail: str = "",
        problem: Optional[Dict[str, Any]] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.problem = dict(problem or {})
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        prefix = f"{status} " if status is not None else ""
        super().__init__(f"{prefix}{self.kind}: {detail}" if detail else f"{prefix}{self.kind}")

    @property
    def kind(self) -> str:
        """The problem's short name: the type without ``urn:concord:problem:``."""
        if self.type.startswith(PROBLEM_PREFIX):
            return self.type[len(PROBLEM_PREFIX) :]
        return self.type

    @property
    def version(self) -> Optional[str]:
        """The document's current version, when the answer names it (the ``ETag`` of a
        412, say): what to read again."""
        tag = self.headers.get("etag")
        if tag is None:
            return None
        tag = tag.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        return tag.strip('"')

    @property
    def retry_after(self) -> Optional[str]:
        """The ``Retry-After`` header, as sent."""
        return self.headers.get("retry-after")


class BadRequest(ConcordError):
    """400: the request is malformed (``invalid-version``, ``invalid-json``,
    ``invalid-id``, ``invalid-patch``...)."""


class Unauthorized(ConcordError):
    """401: no token, or an unknown one."""


class Forbidden(ConcordError):
    """403: the token lacks the scope (a read-only token writing, say)."""


class NotFound(ConcordError):
    """404: no such document (``not-found``), version (``unknown-version``), path or lost
    edit."""


class RequestTimeout(ConcordError):
    """408: the request body arrived too slowly."""


class Conflict(ConcordError):
    """409: the request conflicts with the document's state (``path-not-found``,
    ``test-failed``, ``fenced``, ``strategy-refuses``, ``already-exists``,
    ``idempotency-key-in-flight``...)."""


class PreconditionFailed(ConcordError):
    """412: ``If-Match`` did not hold (``stale-version`` on an optimistic document,
    ``unknown-version``, ``weak-etag``). :attr:`version` is the current version when the
    server names it."""


class TooLarge(ConcordError):
    """413: the body (``body-too-large``), the document it would make
    (``document-too-large``) or a JSON Patch's number of operations
    (``patch-too-large``) is over the limit."""


class UnsupportedMediaType(ConcordError):
    """415: the body's media type is not one this endpoint takes."""


class Unprocessable(ConcordError):
    """422: well-formed but not acceptable (``invalid-value``, ``wrong-type``,
    ``invalid-strategy``, ``idempotency-key-reused``...)."""


class Locked(ConcordError):
    """423: another agent holds the lock; :attr:`retry_after` says when it may be free."""


class PreconditionRequired(ConcordError):
    """428: the write needs ``If-Match`` (pass ``base=``) or a lease (``lock=``)."""


class TooManyRequests(ConcordError):
    """429: too many requests."""


class ServerError(ConcordError):
    """5xx other than 503: the server failed; its log says why."""


class Unavailable(ConcordError):
    """503: the server cannot answer now (``storage-unavailable``,
    ``too-many-connections``, ``handling-timeout``, ``writer-contended``). A write may or
    may not have been applied; the client already retried with the same
    ``Idempotency-Key`` as often as its :class:`~concord.Retry` allows."""


class TransportError(ConcordError):
    """No answer: the connection failed or was cut, after every retry allowed. The
    ``httpx`` exception is the ``__cause__``. ``status`` is ``None``."""


class ProtocolError(ConcordError):
    """An answer this client cannot understand (not JSON where JSON was due, say)."""


_BY_STATUS: Dict[int, Type[ConcordError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    408: RequestTimeout,
    409: Conflict,
    412: PreconditionFailed,
    413: TooLarge,
    415: UnsupportedMediaType,
    422: Unprocessable,
    423: Locked,
    428: PreconditionRequired,
    429: TooManyRequests,
    503: Unavailable,
}


def error_class(status: int) -> Type[ConcordError]:
    """The error class for an HTTP status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ServerError
    return ConcordError


def from_problem(
    status: int, problem: Dict[str, Any], headers: Optional[Mapping[str, str]] = None
) -> ConcordError:
    """The typed error for a problem object (an HTTP body, or an SSE ``error`` event,
    whose type is in ``type_uri``)."""
    status = int(problem.get("status") or status)
    return error_class(status)(
        status=status,
        type=str(problem.get("type") or problem.get("type_uri") or "about:blank"),
        title=str(problem.get("title") or ""),
        detail=str(problem.get("detail") or ""),
        problem=problem,
        headers=headers,
    )


def from_response(status: int, headers: Mapping[str, str], body: bytes) -> ConcordError:
    """The typed error for an error answer; a body that is not a problem (from a proxy,
    say) becomes the detail of an ``about:blank`` problem."""
    problem: Any = None
    try:
        problem = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        problem = None
    if not isinstance(problem, dict):
        text = body.decode("utf-8", "replace").strip()[:500]
        problem = {"type": "about:blank", "status": status, "detail": text}
    # The status line decides the class: a problem's own `status` member is advisory.
    problem = dict(problem)
    problem.setdefault("status", status)
    error = from_problem(status, {**problem, "status": status}, headers)
    error.problem = problem
    return error
