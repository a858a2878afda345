"""Concord's Python client: JSON documents that many agents edit at once, where a stale
write merges instead of erasing someone else's work.

Read a document, think as long as you like, write it back *at the version you read*: the
server records only what you changed since then and merges it into the present.

    >>> from concord import Client
    >>> with Client("http://127.0.0.1:7878", agent="alice") as client:  # doctest: +SKIP
    ...     doc = client.create({"findings": []})
    ...     client.update(doc, lambda value: value["findings"].append("the index is missing"))

:class:`Client` blocks; :class:`AsyncClient` awaits. Both share one implementation
(:mod:`concord._core`), so they behave the same: every write carries an
``Idempotency-Key`` reused on its retries, 503s and dropped connections are retried with
backoff (:class:`Retry`), errors are typed from the server's problem+json bodies
(:class:`ConcordError` and its subclasses), and :meth:`Client.events` follows a
document's changes, resuming after a dropped connection with ``Last-Event-ID``.
"""

from ._core import Retry, RetryEvent, __version__
from .aio import AsyncClient, AsyncEventStream
from .client import Client, EventStream
from .errors import (
    BadRequest,
    ConcordError,
    Conflict,
    Forbidden,
    Locked,
    NotFound,
    PreconditionFailed,
    PreconditionRequired,
    ProtocolError,
    RequestTimeout,
    ServerError,
    TooLarge,
    TooManyRequests,
    TransportError,
    Unauthorized,
    Unavailable,
    Unprocessable,
    UnsupportedMediaType,
)
from .models import (
    ConflictValue,
    Doc,
    DocInfo,
    Event,
    History,
    HistoryEntry,
    Lease,
    LostEdit,
    ValueConflict,
)

__all__ = [
    "__version__",
    "AsyncClient",
    "AsyncEventStream",
    "BadRequest",
    "Client",
    "ConcordError",
    "Conflict",
    "ConflictValue",
    "Doc",
    "DocInfo",
    "Event",
    "EventStream",
    "Forbidden",
    "History",
    "HistoryEntry",
    "Lease",
    "Locked",
    "LostEdit",
    "NotFound",
    "PreconditionFailed",
    "PreconditionRequired",
    "ProtocolError",
    "RequestTimeout",
    "Retry",
    "RetryEvent",
    "ServerError",
    "TooLarge",
    "TooManyRequests",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "UnsupportedMediaType",
    "ValueConflict",
]
