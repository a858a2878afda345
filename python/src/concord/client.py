"""The synchronous client: :class:`Client`, and :class:`EventStream` for live changes.

Every method builds its operation in :mod:`concord._core` and carries it out here with a
blocking ``httpx.Client``; :mod:`concord.aio` does the same awaiting.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import httpx

from . import _http
from ._core import (
    EOF,
    Call,
    Close,
    Core,
    DocRef,
    Emit,
    LockRef,
    Op,
    Open,
    Opened,
    ReadLine,
    Request,
    Retry,
    RetryEvent,
    Settings,
    Sleep,
    StreamState,
)
from .models import Doc, DocInfo, Event, History, Lease, ValueConflict

__all__ = ["Client", "EventStream"]


class _Stream:
    """An open streamed answer and its line iterator."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.iter_lines()

    def close(self) -> None:
        self.response.close()


class Client:
    """A blocking client of one Concord server.

    ``url`` is the server's base URL (``http://127.0.0.1:7878``). ``token`` is sent as
    ``Authorization: Bearer`` (a server started with ``--auth``; the server then takes the
    agent's name from the token). ``agent`` is sent as ``Concord-Agent``: every change
    records it. ``timeout`` (seconds) bounds connecting and each read of an answer.
    ``retry`` says how requests are retried (:class:`Retry`), ``on_retry`` is called with a
    :class:`RetryEvent` before each wait, and ``transport`` is handed to ``httpx.Client``.

    Use it as a context manager, or call :meth:`close`::

        with Client("http://127.0.0.1:7878", agent="alice") as client:
            doc = client.create({"findings": []})
            client.update(doc, lambda v: v["findings"].append("the cache is stale"))
    """

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        agent: Optional[str] = None,
        timeout: Optional[float] = 30.0,
        *,
        retry: Optional[Retry] = None,
        on_retry: Optional[Callable[[RetryEvent], Any]] = None,
        stream_attempts: int = 10,
        stream_read_timeout: float = 45.0,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        self._core = Core(
            Settings(
                agent=agent,
                token=token,
                retry=retry or Retry(),
                on_retry=on_retry,
                stream_attempts=stream_attempts,
                stream_read_timeout=stream_read_timeout,
            )
        )
        self._timeout = timeout
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout, transport=transport)

    @property
    def url(self) -> str:
        """The server's base URL."""
        return str(self._http.base_url).rstrip("/")

    @property
    def agent(self) -> Optional[str]:
        """The agent name sent as ``Concord-Agent``."""
        return self._core.settings.agent

    def close(self) -> None:
        """Closes the connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the driver ---------------------------------------------------------------------

    def _send(self, request: Request) -> Any:
        try:
            response = self._http.send(_http.build(self._http, request, self._timeout))
        except httpx.TransportError as e:
            return _http.failure(e)
        return _http.outcome(response)

    def _open(self, request: Request, streams: List[_Stream]) -> Any:
        try:
            response = self._http.send(_http.build(self._http, request, self._timeout), stream=True)
        except httpx.TransportError as e:
            return _http.failure(e)
        if response.status_code >= 300:
            try:
                response.read()
            except _http.STREAM_ERRORS as e:
                return _http.failure(e)
            finally:
                response.close()
            return _http.outcome(response)
        stream = _Stream(response)
        streams.append(stream)
        return Opened(stream, response.status_code, _http.headers(response))

    @staticmethod
    def _read_line(stream: _Stream) -> Any:
        try:
            return next(stream.lines)
        except StopIteration:
            return EOF
        except _http.STREAM_ERRORS as e:
            return _http.failure(e)

    def _perform(self, command: Any, streams: List[_Stream]) -> Any:
        if isinstance(command, Request):
            return self._send(command)
        if isinstance(command, Sleep):
            time.sleep(command.seconds)
            return None
        if isinstance(command, Call):
            result = command.fn(command.arg)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()  # never to be awaited: no "never awaited" warning
                raise TypeError(
                    "the sync Client got a coroutine function: use AsyncClient for async code"
                )
            return result
        if isinstance(command, Open):
            return self._open(command.request, streams)
        if isinstance(command, ReadLine):
            return self._read_line(command.handle)
        if isinstance(command, Close):
            if command.handle in streams:
                streams.remove(command.handle)
            command.handle.close()
            return None
        raise TypeError(f"unknown command {command!r}")

    def _run(self, op: Op) -> Any:
        """Carries out an operation to its result."""
        streams: List[_Stream] = []
        try:
            command = op.send(None)
            while True:
                command = op.send(self._perform(command, streams))
        except StopIteration as stop:
            return stop.value
        finally:
            op.close()
            for stream in streams:
                stream.close()

    def _iterate(self, op: Op) -> Iterator[Any]:
        """Carries out a stream operation, yielding what it emits."""
        streams: List[_Stream] = []
        try:
            outcome: Any = None
            while True:
                try:
                    command = op.send(outcome)
                except StopIteration:
                    return
                if isinstance(command, Emit):
                    outcome = None
                    yield command.item
                else:
                    outcome = self._perform(command, streams)
        finally:
            op.close()
            for stream in streams:
                stream.close()

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
    ) -> Doc:
        """Creates a document (``POST /v1/docs``) and returns it.

        ``value`` is its first value, a JSON object (``{}`` if absent); ``id`` a UUID of
        your choosing; ``strategy`` one of ``crdt`` (the default), ``lww``,
        ``optimistic``, ``lock``, ``queue``, ``branches``; ``text``, ``counters`` and
        ``ids`` JSON Pointer patterns (``*`` matches one token) of collaborative text
        strings, counters and list identity keys. A retried create is applied once: the
        ``Idempotency-Key`` (a fresh uuid4 unless you give one) is sent with every retry.
        """
        return self._run(
            self._core.create(
                value,
                id=id,
                strategy=strategy,
                text=text,
                counters=counters,
                ids=ids,
                idempotency_key=idempotency_key,
            )
        )

    def list(self) -> List[DocInfo]:
        """Every document (``GET /v1/docs``; admin only when auth is on)."""
        return self._run(self._core.list())

    def read(
        self,
        doc: DocRef,
        at: Optional[str] = None,
        conflicts: bool = False,
        *,
        path: Optional[str] = None,
    ) -> Doc:
        """Reads a document (``GET /v1/docs/{id}``): its value and version.

        ``at`` reads the value it had at an earlier version; ``path`` (a JSON Pointer) a
        subtree only; ``conflicts=True`` also lists every place holding concurrent values
        (``Doc.conflicts``) and the open lost edits (``Doc.lost``).
        Raises :class:`NotFound` for an unknown document or version.
        """
        return self._run(self._core.read(doc, at=at, conflicts=conflicts, path=path))

    def conflicts(self, doc: DocRef) -> List[ValueConflict]:
        """Every place of the document holding concurrent values, each value with its
        agent (settle one by writing that place, e.g. a JSON Patch ``replace``)."""
        return self._run(self._core.conflicts(doc))

    def write(
        self,
        doc: DocRef,
        value: Any,
        base: Optional[str] = None,
        *,
        lock: Optional[LockRef] = None,
        idempotency_key: Optional[str] = None,
    ) -> Doc:
        """Writes a whole value (``PUT /v1/docs/{id}``) as of version ``base``; returns the
        merged present.

        ``base`` is the version you read (sent as ``If-Match``): the server records only
        what you changed since then and merges it into the present, so nothing written
        meanwhile is lost. Pass the :class:`Doc` you read as ``doc`` and its version is
        the base; ``base="*"`` means the current version. Without any base a crdt
        document refuses the write (:class:`PreconditionRequired`); an lww document takes
        it and replaces the present. ``lock`` is the lease of a lock document.
        """
        return self._run(
            self._core.write(doc, value, base=base, lock=lock, idempotency_key=idempotency_key)
        )

    def patch(
        self,
        doc: DocRef,
        ops: Sequence[Dict[str, Any]],
        base: Optional[str] = None,
        *,
        lock: Optional[LockRef] = None,
        idempotency_key: Optional[str] = None,
    ) -> Doc:
        """Applies a JSON Patch (``PATCH``, ``application/json-patch+json``): RFC 6902
        operations plus ``{"op": "increment", "path", "value"}`` and ``{"op": "splice",
        "path", "pos", "del", "insert"}``; whole or not at all.

        With a base (``base``, or the version of a :class:`Doc` passed as ``doc``) paths
        and indexes mean what they meant at that version; without one they mean the
        present (an intent, as a ``queue`` document requires).
        """
        return self._run(
            self._core.patch(doc, ops, base=base, lock=lock, idempotency_key=idempotency_key)
        )

    def merge_patch(
        self,
        doc: DocRef,
        patch: Dict[str, Any],
        base: Optional[str] = None,
        *,
        lock: Optional[LockRef] = None,
        idempotency_key: Optional[str] = None,
    ) -> Doc:
        """Applies an RFC 7396 merge patch (``application/merge-patch+json``); the base
        works as for :meth:`patch`."""
        return self._run(
            self._core.patch(
                doc, patch, base=base, merge=True, lock=lock, idempotency_key=idempotency_key
            )
        )

    def update(
        self,
        doc: DocRef,
        fn: Callable[[Any], Any],
        *,
        attempts: int = 3,
        lock: Optional[LockRef] = None,
    ) -> Doc:
        """Read, change, write: reads the document, calls ``fn`` on a deep copy of its
        value, and writes the result at the version read. Returns the merged present.

        ``fn`` may change the copy in place and return ``None``, or return a new value.
        However long ``fn`` takes, the write is merged as of the version it read, so what
        other agents wrote meanwhile survives (on a crdt document). If nothing changed,
        nothing is written. On an ``optimistic`` document, whose stale writes are refused,
        the whole cycle is redone up to ``attempts`` times.
        """
        return self._run(self._core.update(doc, fn, attempts=attempts, lock=lock))

    def delete(self, doc: DocRef) -> None:
        """Deletes a document and its storage (``DELETE /v1/docs/{id}``; admin only when
        auth is on)."""
        return self._run(self._core.delete(doc))

    def history(self, doc: DocRef) -> History:
        """The change graph (``GET /v1/docs/{id}/history``): hash, agent, time, deps and
        op count of every change."""
        return self._run(self._core.history(doc))

    def changes(self, doc: DocRef, since: Optional[str] = None) -> bytes:
        """Raw Automerge changes (``GET /v1/docs/{id}/changes``), all or ``since`` a
        version."""
        return self._run(self._core.changes(doc, since=since))

    def apply_changes(
        self, doc: DocRef, data: bytes, *, idempotency_key: Optional[str] = None
    ) -> Doc:
        """Applies raw Automerge changes (``POST /v1/docs/{id}/changes``); idempotent by
        change hash."""
        return self._run(self._core.apply_changes(doc, data, idempotency_key=idempotency_key))

    def restore_lost(
        self,
        doc: DocRef,
        lost: Any,
        *,
        lock: Optional[LockRef] = None,
        idempotency_key: Optional[str] = None,
    ) -> Doc:
        """Writes a lost edit's value back where it was (``POST …/lost/{id}/restore``);
        ``lost`` is a :class:`LostEdit` or its id."""
        return self._run(
            self._core.settle_lost(
                doc, lost, restore=True, lock=lock, idempotency_key=idempotency_key
            )
        )

    def dismiss_lost(
        self,
        doc: DocRef,
        lost: Any,
        *,
        lock: Optional[LockRef] = None,
        idempotency_key: Optional[str] = None,
    ) -> Doc:
        """Closes a lost edit's record, leaving its value deleted (``DELETE …/lost/{id}``)."""
        return self._run(
            self._core.settle_lost(
                doc, lost, restore=False, lock=lock, idempotency_key=idempotency_key
            )
        )

    # -- strategies ---------------------------------------------------------------------

    def lock(self, doc: DocRef, ttl_ms: int = 10_000, wait_ms: int = 0) -> Lease:
        """Takes the lease of a ``lock`` document for ``ttl_ms``, waiting up to
        ``wait_ms`` for the holder (``POST /v1/docs/{id}/lock``). Raises :class:`Locked`
        if it stays held. Pass the lease as ``lock=`` to writes."""
        return self._run(self._core.lock(doc, ttl_ms=ttl_ms, wait_ms=wait_ms))

    def release(self, doc: DocRef, lease: LockRef) -> None:
        """Releases a lease (``DELETE /v1/docs/{id}/lock``)."""
        return self._run(self._core.release(doc, lease))

    def fork(self, doc: DocRef, *, idempotency_key: Optional[str] = None) -> Doc:
        """An isolated copy of a ``branches`` document (``POST …/fork``), to edit and
        :meth:`merge` back."""
        return self._run(self._core.fork(doc, idempotency_key=idempotency_key))

    def merge(self, doc: DocRef, fork: DocRef, *, idempotency_key: Optional[str] = None) -> Doc:
        """Merges a fork's changes back into ``doc`` (``POST …/merge``)."""
        return self._run(self._core.merge(doc, fork, idempotency_key=idempotency_key))

    def health(self) -> Dict[str, Any]:
        """The server's liveness answer (``GET /healthz``)."""
        return self._run(self._core.health())

    # -- live ---------------------------------------------------------------------------

    def events(self, doc: DocRef, since: Optional[str] = None) -> EventStream:
        """The document's live changes (``GET /v1/docs/{id}/events``), as an iterator of
        :class:`Event`: a ``snapshot``, then one ``change`` per change, until a
        ``deleted``.

        With ``since`` (a version) it starts after that version instead of a snapshot.
        A dropped connection is opened again with ``Last-Event-ID``: the iteration goes
        on with exactly the changes missed. Use it as a context manager (or call
        :meth:`EventStream.close`) to close the connection when you stop early.
        """
        state = StreamState(last_event_id=since)
        return EventStream(self._iterate(self._core.events(doc, state)), state)


class EventStream:
    """An iterator over a document's :class:`Event` values that reconnects by itself."""

    def __init__(self, events: Iterator[Event], state: StreamState) -> None:
        self._events = events
        self._state = state

    @property
    def last_event_id(self) -> Optional[str]:
        """The version of the last event received (resumed after on a reconnect)."""
        return self._state.last_event_id

    @property
    def reconnects(self) -> int:
        """How many times the stream connected again after a drop."""
        return self._state.reconnects

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        return next(self._events)

    def close(self) -> None:
        """Closes the connection; the iteration ends."""
        close = getattr(self._events, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
