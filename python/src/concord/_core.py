"""The client's one implementation, without IO.

Every operation of the API is written once here, as a generator that *yields commands*
(send this request, sleep this long, call this function, open this stream, read a line,
hand this event to the caller) and is *sent their outcomes*. The synchronous
:class:`~concord.Client` and the asynchronous :class:`~concord.AsyncClient` are two thin
drivers that carry the commands out with ``httpx``, one blocking and one awaiting. So
request building, response parsing, retries, ``update``'s read-modify-write and the event
stream's reconnects exist once, and the core is testable with no network at all.

An operation's generator returns its result (``StopIteration.value``) or raises a
:class:`~concord.ConcordError`.
"""

from __future__ import annotations

import copy
import email.utils
import json
import random
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import (
    Any,
    Callable,
    Dict,
    Generator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)
from urllib.parse import quote

from . import errors
from ._sse import SseParser
from .models import Doc, DocInfo, Event, History, Lease

__version__ = "0.1.0"

# ---------------------------------------------------------------------------------------
# Commands (yielded by operations) and outcomes (sent back by drivers).

#: How a request may be retried when its outcome is unknown (connection cut after
#: sending, or a 503 that says "may or may not have been applied").
SAFE = "safe"  # reads: retrying is harmless
IDEMPOTENT = "idempotent"  # DELETE: a repeat finds nothing to do
KEYED = "keyed"  # writes with an Idempotency-Key: the server applies them once
UNSAFE = "unsafe"  # anything else: retried only when it surely did not reach the server


@dataclass(frozen=True)
class Request:
    """An HTTP request to make, relative to the client's base URL."""

    method: str
    path: str
    params: Tuple[Tuple[str, str], ...] = ()
    headers: Tuple[Tuple[str, str], ...] = ()
    content: Optional[bytes] = None
    retry: str = SAFE
    timeout: Optional[float] = None
    """Overrides the client's read timeout (a lock request that waits, an event stream)."""

    def header(self, name: str) -> Optional[str]:
        """The value of a header of this request, by case-insensitive name."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


@dataclass(frozen=True)
class Response:
    """An HTTP answer: status, headers (lowercased names) and the whole body."""

    status: int
    headers: Mapping[str, str]
    content: bytes


@dataclass(frozen=True)
class Failure:
    """No answer: the exception, and whether the request may have reached the server
    (``False`` only when the connection was never made)."""

    error: BaseException
    sent: bool


@dataclass(frozen=True)
class Sleep:
    """Wait this many seconds."""

    seconds: float


@dataclass(frozen=True)
class Call:
    """Call ``fn(arg)`` and send back its result (awaited first, by the async driver, if
    it is awaitable): the user's function of ``update``, or a retry hook."""

    fn: Callable[[Any], Any]
    arg: Any


@dataclass(frozen=True)
class Open:
    """Open a streamed request. The driver sends back :class:`Opened` for a 2xx answer,
    a :class:`Response` with the whole body for any other, or a :class:`Failure`."""

    request: Request


@dataclass(frozen=True)
class Opened:
    """An open stream: ``handle`` is the driver's own object, passed back in
    :class:`ReadLine` and :class:`Close`."""

    handle: Any
    status: int
    headers: Mapping[str, str]


@dataclass(frozen=True)
class ReadLine:
    """Read the next line of an open stream: the driver sends back the line (a ``str``
    without its terminator), :data:`EOF`, or a :class:`Failure`."""

    handle: Any


@dataclass(frozen=True)
class Close:
    """Close an open stream (drivers also close whatever is left open when the caller
    stops iterating)."""

    handle: Any


@dataclass(frozen=True)
class Emit:
    """Hand ``item`` to the caller iterating over a stream operation."""

    item: Any


class _Eof:
    def __repr__(self) -> str:
        return "EOF"


EOF = _Eof()
"""The end of a stream, as the answer to :class:`ReadLine`."""

Command = Union[Request, Sleep, Call, Open, ReadLine, Close, Emit]
Op = Generator[Command, Any, Any]

# ---------------------------------------------------------------------------------------
# Retries.


@dataclass(frozen=True)
class Retry:
    """How often and how patiently a request is retried.

    A request is retried when the server answers ``503`` (and, for a keyed write, ``409
    idempotency-key-in-flight``), or when no answer arrived: always if the connection was
    never made, and otherwise only for reads, deletes and writes carrying an
    ``Idempotency-Key`` (every write this client sends carries one, reused on each retry,
    so a retried write is applied once). The wait is ``Retry-After`` when the server sends
    it (at most ``max_retry_after``), else ``backoff`` doubling up to ``max_backoff``, with
    jitter.
    """

    attempts: int = 5
    """Tries of one request in all, the first included (1 = never retry)."""
    backoff: float = 0.1
    """The wait before the first retry, in seconds; it doubles with each failure."""
    max_backoff: float = 5.0
    """The longest wait between tries without ``Retry-After``."""
    max_retry_after: float = 60.0
    """The longest ``Retry-After`` honoured; a longer one is cut to this."""
    jitter: bool = True
    """Spread waits randomly over [50 %, 100 %] of the backoff, so that clients refused
    together do not come back together."""

    def delay(self, failures: int, retry_after: Optional[float] = None) -> float:
        """The wait before the next try, after ``failures`` failed tries (1 or more)."""
        if retry_after is not None:
            return max(0.0, min(retry_after, self.max_retry_after))
        wait = min(self.backoff * (2 ** max(0, failures - 1)), self.max_backoff)
        if self.jitter:
            wait *= 0.5 + random.random() / 2
        return wait


@dataclass(frozen=True)
class RetryEvent:
    """What a retry hook (``on_retry=``) is told before each wait."""

    request: Request
    """The request about to be sent again (the same ``Idempotency-Key`` and body)."""
    attempt: int
    """The try that failed (1 for the first)."""
    delay: float
    """How long the client waits now, in seconds."""
    status: Optional[int]
    """The status that failed, or ``None`` if no answer came."""
    error: Optional[BaseException]
    """The typed error or transport exception of the failed try."""
    retry_after: Optional[float]
    """The server's ``Retry-After``, in seconds, if it sent one."""


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def problem_kind(response: Response) -> Optional[str]:
    """The problem kind of an error answer (``stale-version``...), if it has one."""
    try:
        body = json.loads(response.content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    kind = str(body.get("type", ""))
    if kind.startswith(errors.PROBLEM_PREFIX):
        return kind[len(errors.PROBLEM_PREFIX) :]
    return kind or None


def retryable(request: Request, outcome: Union[Response, Failure]) -> bool:
    """Whether a try's outcome may be retried (see :class:`Retry`)."""
    repeatable = request.retry in (SAFE, IDEMPOTENT, KEYED)
    if isinstance(outcome, Failure):
        return repeatable or not outcome.sent
    if outcome.status == 503:
        # A connection over the limit is refused before its request is read.
        return repeatable or problem_kind(outcome) == "too-many-connections"
    if outcome.status == 409 and request.retry == KEYED:
        return problem_kind(outcome) == "idempotency-key-in-flight"
    return False


def error_of(outcome: Union[Response, Failure]) -> errors.ConcordError:
    """The typed error for a failed outcome."""
    if isinstance(outcome, Failure):
        error = errors.TransportError(
            None,
            type="about:blank",
            title="no answer",
            detail=f"{type(outcome.error).__name__}: {outcome.error}",
        )
        error.__cause__ = outcome.error
        return error
    return errors.from_response(outcome.status, outcome.headers, outcome.content)


# ---------------------------------------------------------------------------------------
# Encoding and decoding.

DocRef = Union[str, uuid.UUID, Doc]
"""A document: its id (a string or UUID), or a :class:`Doc` read from it."""

LockRef = Union[str, int, Lease]
"""A lease: its token, or the :class:`Lease`."""


def doc_id(doc: DocRef) -> str:
    """The id of a document reference."""
    if isinstance(doc, Doc):
        return doc.id
    if isinstance(doc, uuid.UUID):
        return str(doc)
    if isinstance(doc, str) and doc:
        return doc
    raise TypeError(f"expected a document id or a Doc, not {doc!r}")


def doc_path(doc: DocRef, suffix: str = "") -> str:
    """``/v1/docs/{id}`` plus ``suffix``, the id escaped."""
    return f"/v1/docs/{quote(doc_id(doc), safe='')}{suffix}"


def bare_version(tag: Optional[str]) -> Optional[str]:
    """The version inside an entity tag (``"v"`` or ``W/"v"``), or a bare version as is."""
    if tag is None:
        return None
    tag = tag.strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    if len(tag) >= 2 and tag.startswith('"') and tag.endswith('"'):
        tag = tag[1:-1]
    return tag


def if_match(base: str) -> str:
    """The ``If-Match`` value for a base: ``*``, an entity tag given as is, or a bare
    version quoted (a strong tag)."""
    base = base.strip()
    if base == "*" or base.startswith('"') or base.startswith("W/"):
        return base
    return f'"{base}"'


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON; NaN and infinities are refused here, as JSON has none."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def decode_json(response: Response) -> Any:
    """The JSON body of a successful answer."""
    try:
        return json.loads(response.content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise errors.ProtocolError(
            response.status,
            title="unexpected answer",
            detail=f"expected a JSON body: {e}",
            headers=response.headers,
        ) from None


def parse_doc(response: Response) -> Doc:
    """A read or write answer as a :class:`Doc`."""
    body = decode_json(response)
    if not isinstance(body, dict):
        raise errors.ProtocolError(response.status, detail="expected a JSON object")
    replayed = response.headers.get("idempotent-replayed", "").lower() == "true"
    return Doc.from_json(body, bare_version(response.headers.get("etag")), replayed)


def lock_token(lock: LockRef) -> str:
    """The ``Concord-Lock`` value of a lease reference."""
    if isinstance(lock, Lease):
        return lock.token
    return str(lock)


# ---------------------------------------------------------------------------------------
# The event stream's state, shared with the iterator the caller holds.


@dataclass
class StreamState:
    """What an event stream knows across reconnects; read through
    :class:`~concord.EventStream`."""

    last_event_id: Optional[str] = None
    """The version of the last event received: sent as ``Last-Event-ID`` on a reconnect."""
    reconnects: int = 0
    """How many times the stream connected again after its first connection."""
    retry_ms: Optional[int] = None
    """The reconnection delay the server asked for (SSE ``retry:``), if it did."""


# ---------------------------------------------------------------------------------------
# The operations.


@dataclass(frozen=True)
class Settings:
    """What every request of one client carries, and how it retries."""

    agent: Optional[str] = None
    token: Optional[str] = None
    retry: Retry = field(default_factory=Retry)
    on_retry: Optional[Callable[[RetryEvent], Any]] = None
    stream_attempts: int = 10
    """Failed connection attempts in a row before an event stream gives up."""
    stream_read_timeout: float = 45.0
    """Silence after which an event stream counts as dropped: the server sends a
    keep-alive every 15 s."""


class Core:
    """Builds every operation as a command generator (see the module's doc)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # -- requests -----------------------------------------------------------------------

    def headers(self, extra: Sequence[Tuple[str, str]] = ()) -> Tuple[Tuple[str, str], ...]:
        """The headers of every request, then ``extra`` (which replaces a default of the
        same name: an event stream's ``Accept``, say)."""
        defaults: List[Tuple[str, str]] = [
            ("accept", "application/json, application/problem+json"),
            ("user-agent", f"concord-python/{__version__}"),
        ]
        if self.settings.agent:
            defaults.append(("concord-agent", self.settings.agent))
        if self.settings.token:
            defaults.append(("authorization", f"Bearer {self.settings.token}"))
        replaced = {name.lower() for name, _ in extra}
        return tuple([h for h in defaults if h[0] not in replaced] + list(extra))

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[Tuple[str, str]] = (),
        headers: Sequence[Tuple[str, str]] = (),
        content: Optional[bytes] = None,
        retry: str = SAFE,
        timeout: Optional[float] = None,
    ) -> Request:
        """A request with this client's headers."""
        return Request(
            method=method,
            path=path,
            params=tuple(params),
            headers=self.headers(headers),
            content=content,
            retry=retry,
            timeout=timeout,
        )

    def write_request(
        self,
        method: str,
        path: str,
        *,
        content: Optional[bytes] = None,
        content_type: Optional[str] = "application/json",
        base: Optional[str] = None,
        lock: Optional[LockRef] = None,
        idempotency_key: Optional[str] = None,
    ) -> Request:
        """A write: ``If-Match`` from ``base``, ``Concord-Lock``, and an
        ``Idempotency-Key`` (a new uuid4 unless given), kept for every retry."""
        extra: List[Tuple[str, str]] = []
        if content is not None and content_type:
            extra.append(("content-type", content_type))
        if base is not None:
            extra.append(("if-match", if_match(base)))
        if lock is not None:
            extra.append(("concord-lock", lock_token(lock)))
        extra.append(("idempotency-key", idempotency_key or str(uuid.uuid4())))
        return self.request(method, path, headers=extra, content=content, retry=KEYED)

    def call(self, request: Request, *, gone_ok: bool = False) -> Op:
        """Sends ``request``, retrying as :class:`Retry` allows; returns the
        :class:`Response` of a success, raises the typed error of a failure. With
        ``gone_ok``, a 404 after a try whose outcome was unknown is a success (a DELETE
        that the lost try had already done)."""
        policy = self.settings.retry
        failures = 0
        uncertain = False
        while True:
            outcome = yield request
            if isinstance(outcome, Response) and outcome.status < 400:
                return outcome
            if gone_ok and uncertain and isinstance(outcome, Response) and outcome.status == 404:
                return outcome
            failures += 1
            if failures >= policy.attempts or not retryable(request, outcome):
                raise error_of(outcome)
            uncertain = uncertain or isinstance(outcome, Failure) or outcome.status == 503
            retry_after = None
            if isinstance(outcome, Response):
                retry_after = parse_retry_after(outcome.headers.get("retry-after"))
            delay = policy.delay(failures, retry_after)
            if self.settings.on_retry is not None:
                yield Call(
                    self.settings.on_retry,
                    RetryEvent(
                        request=request,
                        attempt=failures,
                        delay=delay,
                        status=outcome.status if isinstance(outcome, Response) else None,
                        error=outcome.error if isinstance(outcome, Failure) else error_of(outcome),
                        retry_after=retry_after,
                    ),
                )
            yield Sleep(delay)

    # -- documents ----------------------------------------------------------------------

    def create(
        self,
        value: Any = None,
        *,
        id: Optional[str] = None,
        strategy: Optional[str] = None,
        text: Optional[Sequence[str]] = None,
        counters: Optional[Sequence[str]] = None,
        ids: Optional[Sequence[str]] = None,
        idempotency_key: Optional[str] = None,
    ) -> Op:
        """``POST /v1/docs``."""
        body: Dict[str, Any] = {}
        if id is not None:
            body["id"] = str(id)
        if value is not None:
            body["value"] = value
        if strategy is not None:
            body["strategy"] = strategy
        for name, patterns in (("text", text), ("counters", counters), ("ids", ids)):
            if patterns:
                body[name] = list(patterns)
        request = self.write_request(
            "POST", "/v1/docs", content=encode_json(body), idempotency_key=idempotency_key
        )
        return parse_doc((yield from self.call(request)))

    def list(self) -> Op:
        """``GET /v1/docs``."""
        body = decode_json((yield from self.call(self.request("GET", "/v1/docs"))))
        return [DocInfo.from_json(d) for d in body.get("docs", [])]

    def read(
        self,
        doc: DocRef,
        *,
        at: Optional[str] = None,
        conflicts: bool = False,
        path: Optional[str] = None,
    ) -> Op:
        """``GET /v1/docs/{id}``."""
        params: List[Tuple[str, str]] = []
        if at is not None:
            params.append(("at", bare_version(at) or ""))
        if path is not None:
            params.append(("path", path))
        if conflicts:
            params.append(("conflicts", "true"))
        request = self.request("GET", doc_path(doc), params=params)
        return parse_doc((yield from self.call(request)))

    def conflicts(self, doc: DocRef) -> Op:
        """The conflicting places of the present."""
        read = yield from self.read(doc, conflicts=True)
        return list(read.conflicts or [])

    @staticmethod
    def base_of(doc: DocRef, base: Optional[str]) -> Optional[str]:
        """The base of a write: ``base`` if given, else the version of a :class:`Doc`."""
        if base is not None:
            return base
        if isinstance(doc, Doc) and doc.version:
            return doc.version
        return None

    def write(
        self,
        doc: DocRef,
        value: Any,
        *,
        base: Optional[str] = None,
        lock: Optional[LockRef] = None,
        idempotency_key: Optional[str] = None,
    ) -> Op:
        """``PUT /v1/docs/{id}``."""
        request = self.write_request(
            "PUT",
            doc_path(doc),
            content=encode_json(value),
            base=self.base_of(doc, base),
            lock=lock,
            idempotency_key=idempotency_key,
        )
        return parse_doc((yield from self.call(request)))

    def patch(
        self,
        doc: DocRef,
        ops: Any,
        *,
        base: Optional[str] = None,
        merge: bool = False,
        lock: Optional[LockRef] = None,
        idempotency_key: Optional[str] = None,
    ) -> Op:
        """``PATCH /v1/docs/{id}``: JSON Patch, or a merge patch with ``merge``."""
        media = "application/merge-patch+json" if merge else "application/json-patch+json"
        request = self.write_request(
            "PATCH",
            doc_path(doc),
            content=encode_json(ops),
            content_type=media,
            base=self.base_of(doc, base),
            lock=lock,
            idempotency_key=idempotency_key,
        )
        return parse_doc((yield from self.call(request)))

    def update(
        self,
        doc: DocRef,
        fn: Callable[[Any], Any],
        *,
        attempts: int = 3,
        lock: Optional[LockRef] = None,
    ) -> Op:
        """Read, ``fn`` on a deep copy, write at the version read (see
        :meth:`concord.Client.update`)."""
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        for attempt in range(1, attempts + 1):
            current = yield from self.read(doc)
            draft = copy.deepcopy(current.value)
            result = yield Call(fn, draft)
            value = draft if result is None else result
            if value == current.value:
                return current  # nothing to write: a PUT of the value read changes nothing
            try:
                return (yield from self.write(current, value, lock=lock))
            except errors.PreconditionFailed as e:
                # Only an optimistic document refuses a stale base: read again, redo.
                if e.kind != "stale-version" or attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def delete(self, doc: DocRef) -> Op:
        """``DELETE /v1/docs/{id}``."""
        request = self.request("DELETE", doc_path(doc), retry=IDEMPOTENT)
        yield from self.call(request, gone_ok=True)
        return None

    def history(self, doc: DocRef) -> Op:
        """``GET /v1/docs/{id}/history``."""
        body = decode_json((yield from self.call(self.request("GET", doc_path(doc, "/history")))))
        return History.from_json(body)

    def changes(self, doc: DocRef, *, since: Optional[str] = None) -> Op:
        """``GET /v1/docs/{id}/changes``: raw Automerge changes."""
        params = [("since", bare_version(since) or "")] if since is not None else []
        request = self.request(
            "GET",
            doc_path(doc, "/changes"),
            params=params,
            headers=[("accept", "application/octet-stream")],
        )
        return (yield from self.call(request)).content

    def apply_changes(
        self, doc: DocRef, data: bytes, *, idempotency_key: Optional[str] = None
    ) -> Op:
        """``POST /v1/docs/{id}/changes``: applies raw Automerge changes."""
        request = self.write_request(
            "POST",
            doc_path(doc, "/changes"),
            content=bytes(data),
            content_type="application/octet-stream",
            idempotency_key=idempotency_key,
        )
        return parse_doc((yield from self.call(request)))

    def settle_lost(
        self,
        doc: DocRef,
        lost: Any,
        *,
        restore: bool,
        base: Optional[str] = None,
        lock: Optional[LockRef] = None,
        idempotency_key: Optional[str] = None,
    ) -> Op:
        """``POST …/lost/{lost}/restore`` or ``DELETE …/lost/{lost}``."""
        lost_id = getattr(lost, "id", lost)
        suffix = f"/lost/{quote(str(lost_id), safe='')}"
        request = self.write_request(
            "POST" if restore else "DELETE",
            doc_path(doc, suffix + ("/restore" if restore else "")),
            base=base,
            lock=lock,
            idempotency_key=idempotency_key,
        )
        return parse_doc((yield from self.call(request)))

    # -- strategies ---------------------------------------------------------------------

    def lock(self, doc: DocRef, *, ttl_ms: int = 10_000, wait_ms: int = 0) -> Op:
        """``POST /v1/docs/{id}/lock``."""
        request = self.request(
            "POST",
            doc_path(doc, "/lock"),
            headers=[("content-type", "application/json")],
            content=encode_json({"ttl_ms": ttl_ms, "wait_ms": wait_ms}),
            # Not keyed on the server: a repeat could take a second lease, fencing the
            # first. Retried only when it surely did not arrive.
            retry=UNSAFE,
            # The server holds the request up to wait_ms: wait for it, and a bit more.
            timeout=None if wait_ms <= 0 else wait_ms / 1000 + 10,
        )
        return Lease.from_json(decode_json((yield from self.call(request))))

    def release(self, doc: DocRef, lock: LockRef) -> Op:
        """``DELETE /v1/docs/{id}/lock``."""
        request = self.request(
            "DELETE",
            doc_path(doc, "/lock"),
            headers=[("concord-lock", lock_token(lock))],
            retry=IDEMPOTENT,
        )
        yield from self.call(request)
        return None

    def fork(self, doc: DocRef, *, idempotency_key: Optional[str] = None) -> Op:
        """``POST /v1/docs/{id}/fork``."""
        request = self.write_request(
            "POST", doc_path(doc, "/fork"), idempotency_key=idempotency_key
        )
        return parse_doc((yield from self.call(request)))

    def merge(self, doc: DocRef, fork: DocRef, *, idempotency_key: Optional[str] = None) -> Op:
        """``POST /v1/docs/{id}/merge``."""
        request = self.write_request(
            "POST",
            doc_path(doc, "/merge"),
            content=encode_json({"fork": doc_id(fork)}),
            idempotency_key=idempotency_key,
        )
        return parse_doc((yield from self.call(request)))

    def health(self) -> Op:
        """``GET /healthz``."""
        return decode_json((yield from self.call(self.request("GET", "/healthz"))))

    # -- live ---------------------------------------------------------------------------

    def events(self, doc: DocRef, state: StreamState) -> Op:
        """``GET /v1/docs/{id}/events``, as :class:`Emit` commands of
        :class:`~concord.Event` values, reconnecting with ``Last-Event-ID``."""
        policy = self.settings.retry
        failures = 0
        first = True
        while True:
            extra = [("accept", "text/event-stream"), ("cache-control", "no-cache")]
            if state.last_event_id:
                extra.append(("last-event-id", state.last_event_id))
            request = self.request(
                "GET",
                doc_path(doc, "/events"),
                headers=extra,
                timeout=self.settings.stream_read_timeout,
            )
            if not first:
                state.reconnects += 1
            first = False
            outcome = yield Open(request)
            if isinstance(outcome, Opened):
                handle = outcome.handle
                parser = SseParser(state.last_event_id)
                while True:
                    line = yield ReadLine(handle)
                    if not isinstance(line, str):
                        break  # EOF or a Failure: connect again
                    raw = parser.feed(line)
                    if parser.retry_ms is not None:
                        state.retry_ms = parser.retry_ms
                    if raw is None:
                        continue
                    state.last_event_id = parser.last_event_id
                    failures = 0  # the stream works: count failures afresh
                    try:
                        data = json.loads(raw.data)
                    except ValueError as e:
                        yield Close(handle)
                        raise errors.ProtocolError(
                            outcome.status, detail=f"an event's data is not JSON: {e}"
                        ) from None
                    if not isinstance(data, dict):
                        data = {"data": data}
                    if raw.event == "error":
                        yield Close(handle)
                        # The data is a WebSocket-style error: its type is `type_uri`.
                        problem = {**data, "type": data.get("type_uri", "about:blank")}
                        raise errors.from_problem(int(data.get("status") or 500), problem)
                    yield Emit(Event.from_json(raw.event, raw.id, data))
                    if raw.event == "deleted":
                        yield Close(handle)
                        return None
                yield Close(handle)
                cause: Union[Response, Failure] = (
                    line
                    if isinstance(line, Failure)
                    else Failure(ConnectionError("the event stream ended"), sent=True)
                )
            else:
                cause = outcome
                if isinstance(outcome, Response):
                    kind = problem_kind(outcome)
                    resuming = state.last_event_id is not None
                    if outcome.status == 404 and resuming and kind == "unknown-version":
                        # The server cannot replay from there: start over from a snapshot.
                        state.last_event_id = None
                    elif outcome.status == 404 and resuming and kind == "not-found":
                        # Deleted while we were away: end as a connected stream would.
                        yield Emit(Event("deleted", None, data={"type": "deleted"}))
                        return None
                    elif not retryable(request, outcome):
                        raise error_of(outcome)
            failures += 1
            if failures >= self.settings.stream_attempts:
                raise error_of(cause)
            retry_after = None
            if isinstance(cause, Response):
                retry_after = parse_retry_after(cause.headers.get("retry-after"))
            if retry_after is None and state.retry_ms is not None and failures == 1:
                retry_after = state.retry_ms / 1000
            yield Sleep(policy.delay(failures, retry_after))


def with_settings(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with some fields changed."""
    return replace(settings, **changes)
