"""The asynchronous client: :class:`AsyncClient`, and :class:`AsyncEventStream`.

The same operations as :class:`concord.Client` (from :mod:`concord._core`), carried out
with an ``httpx.AsyncClient``; each method is the awaitable form of the sync method of
the same name, documented there. Runs under asyncio or trio (through anyio).
"""

from __future__ import annotations

import inspect
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Sequence

import anyio
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

__all__ = ["AsyncClient", "AsyncEventStream"]


class _Stream:
    """An open streamed answer and its line iterator."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()

    async def close(self) -> None:
        await self.response.aclose()


class AsyncClient:
    """An asyncio (or trio) client of one Concord server; the arguments are those of
    :class:`concord.Client`. ``update``'s function may be a coroutine function, and the
    retry hook too.

    Use it as an async context manager, or call :meth:`aclose`::

        async with AsyncClient("http://127.0.0.1:7878", agent="alice") as client:
            doc = await client.create({"findings": []})
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
        transport: Optional[httpx.AsyncBaseTransport] = None,
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
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/"), timeout=timeout, transport=transport
        )

    @property
    def url(self) -> str:
        """The server's base URL."""
        return str(self._http.base_url).rstrip("/")

    @property
    def agent(self) -> Optional[str]:
        """The agent name sent as ``Concord-Agent``."""
        return self._core.settings.agent

    async def aclose(self) -> None:
        """Closes the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # -- the driver ---------------------------------------------------------------------

    async def _send(self, request: Request) -> Any:
        try:
            response = await self._http.send(_http.build(self._http, request, self._timeout))
        except httpx.TransportError as e:
            return _http.failure(e)
        return _http.outcome(response)

    async def _open(self, request: Request, streams: List[_Stream]) -> Any:
        try:
            response = await self._http.send(
                _http.build(self._http, request, self._timeout), stream=True
            )
        except httpx.TransportError as e:
            return _http.failure(e)
        if response.status_code >= 300:
            try:
                await response.aread()
            except _http.STREAM_ERRORS as e:
                return _http.failure(e)
            finally:
                await response.aclose()
            return _http.outcome(response)
        stream = _Stream(response)
        streams.append(stream)
        return Opened(stream, response.status_code, _http.headers(response))

    @staticmethod
    async def _read_line(stream: _Stream) -> Any:
        try:
            return await stream.lines.__anext__()
        except StopAsyncIteration:
            return EOF
        except _http.STREAM_ERRORS as e:
            return _http.failure(e)

    async def _perform(self, command: Any, streams: List[_Stream]) -> Any:
        if isinstance(command, Request):
            return await self._send(command)
        if isinstance(command, Sleep):
            await anyio.sleep(command.seconds)
            return None
        if isinstance(command, Call):
            result = command.fn(command.arg)
            if inspect.isawaitable(result):
                result = await result
            return result
        if isinstance(command, Open):
            return await self._open(command.request, streams)
        if isinstance(command, ReadLine):
            return await self._read_line(command.handle)
        if isinstance(command, Close):
            if command.handle in streams:
                streams.remove(command.handle)
            await command.handle.close()
            return None
        raise TypeError(f"unknown command {command!r}")

    async def _run(self, op: Op) -> Any:
        """Carries out an operation to its result."""
        streams: List[_Stream] = []
        try:
            command = op.send(None)
            while True:
                command = op.send(await self._perform(command, streams))
        except StopIteration as stop:
            return stop.value
        finally:
            op.close()
            for stream in streams:
                await stream.close()

    async def _iterate(self, op: Op) -> AsyncIterator[Any]:
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
                    outcome = await self._perform(command, streams)
        finally:
            op.close()
            for stream in streams:
                await stream.close()

    # -- the API (documented on concord.Client) -----------------------------------------

    async def create(
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
        """Creates a document; see :meth:`concord.Client.create`."""
        return await self._run(
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

    async def list(self) -> List[DocInfo]:
        """Every document; see :meth:`concord.Client.list`."""
        return await self._run(self._core.list())

    async def read(
        self,
        doc: DocRef,
        at: Optional[str] = None,
        conflicts: bool = False,
        *,
        path: Optional[str] = None,
    ) -> Doc:
        """Reads a document; see :meth:`concord.Client.read`."""
        return await self._run(self._core.read(doc, at=at, conflicts=conflicts, path=path))

    async def conflicts(self, doc: DocRef) -> List[ValueConflict]:
        """The conflicting places; see :meth:`concord.Client.conflicts`."""
        return await self._run(self._core.conflicts(doc))

    async def write(
        self,
        doc: DocRef,
        value: Any,
        base: Optional[str] = None,
        *,
        lock: Optional[LockRef] = None,
        idempotency_key: Optional[str] = None,
    ) -> Doc:
        """Writes a whole value as of ``base``; see :meth:`concord.Client.write`."""
        return await self._run(
            self._core.write(doc, value, base=base, lock=lock, idempotency_key=idempotency_key)
        )

    async def patch(
        self,
        doc: DocRef,
        ops: Sequence[Dict[str, Any]],
        base: Optional[str] = None,
        *,
        lock: Optional[LockRef] = None,
        idempotency_key: Optional[str] = None,
    ) -> Doc:
        """Applies a JSON Patch; see :meth:`concord.Client.patch`."""
        return await self._run(
            self._core.patch(doc, ops, base=base, lock=lock, idempotency_key=idempotency_key)
        )

    async def merge_patch(
        self,
        doc: DocRef,
        patch: Dict[str, Any],
        base: Optional[str] = None,
        *,
        lock: Optional[LockRef] = None,
        idempotency_key: Optional[str] = None,
    ) -> Doc:
        """Applies a merge patch; see :meth:`concord.Client.merge_patch`."""
        return await self._run(
            self._core.patch(
                doc, patch, base=base, merge=True, lock=lock, idempotency_key=idempotency_key
            )
        )

    async def update(
        self,
        doc: DocRef,
        fn: Callable[[Any], Any],
        *,
        attempts: int = 3,
        lock: Optional[LockRef] = None,
    ) -> Doc:
        """Read, ``fn`` on a deep copy (a plain or a coroutine function), write at the
        version read; see :meth:`concord.Client.update`."""
        return await self._run(self._core.update(doc, fn, attempts=attempts, lock=lock))

    async def delete(self, doc: DocRef) -> None:
        """Deletes a document; see :meth:`concord.Client.delete`."""
        return await self._run(self._core.delete(doc))

    async def history(self, doc: DocRef) -> History:
        """The change graph; see :meth:`concord.Client.history`."""
        return await self._run(self._core.history(doc))

    async def changes(self, doc: DocRef, since: Optional[str] = None) -> bytes:
        """Raw Automerge changes; see :meth:`concord.Client.changes`."""
        return await self._run(self._core.changes(doc, since=since))

    async def apply_changes(
        self, doc: DocRef, data: bytes, *, idempotency_key: Optional[str] = None
    ) -> Doc:
        """Applies raw Automerge changes; see :meth:`concord.Client.apply_changes`."""
        return await self._run(self._core.apply_changes(doc, data, idempotency_key=idempotency_key))

    async def restore_lost(
        self,
        doc: DocRef,
        lost: Any,
        *,
        lock: Optional[LockRef] = None,
        idempotency_key: Optional[str] = None,
    ) -> Doc:
        """Restores a lost edit; see :meth:`concord.Client.restore_lost`."""
        return await self._run(
            self._core.settle_lost(
                doc, lost, restore=True, lock=lock, idempotency_key=idempotency_key
            )
        )

    async def dismiss_lost(
        self,
        doc: DocRef,
        lost: Any,
        *,
        lock: Optional[LockRef] = None,
        idempotency_key: Optional[str] = None,
    ) -> Doc:
        """Dismisses a lost edit; see :meth:`concord.Client.dismiss_lost`."""
        return await self._run(
            self._core.settle_lost(
                doc, lost, restore=False, lock=lock, idempotency_key=idempotency_key
            )
        )

    async def lock(self, doc: DocRef, ttl_ms: int = 10_000, wait_ms: int = 0) -> Lease:
        """Takes a lease; see :meth:`concord.Client.lock`."""
        return await self._run(self._core.lock(doc, ttl_ms=ttl_ms, wait_ms=wait_ms))

    async def release(self, doc: DocRef, lease: LockRef) -> None:
        """Releases a lease; see :meth:`concord.Client.release`."""
        return await self._run(self._core.release(doc, lease))

    async def fork(self, doc: DocRef, *, idempotency_key: Optional[str] = None) -> Doc:
        """Forks a branches document; see :meth:`concord.Client.fork`."""
        return await self._run(self._core.fork(doc, idempotency_key=idempotency_key))

    async def merge(
        self, doc: DocRef, fork: DocRef, *, idempotency_key: Optional[str] = None
    ) -> Doc:
        """Merges a fork back; see :meth:`concord.Client.merge`."""
        return await self._run(self._core.merge(doc, fork, idempotency_key=idempotency_key))

    async def health(self) -> Dict[str, Any]:
        """The liveness answer; see :meth:`concord.Client.health`."""
        return await self._run(self._core.health())

    def events(self, doc: DocRef, since: Optional[str] = None) -> AsyncEventStream:
        """The document's live changes as an async iterator; see
        :meth:`concord.Client.events`. Use ``async with`` (or :meth:`AsyncEventStream.aclose`)
        to close the connection when you stop early."""
        state = StreamState(last_event_id=since)
        return AsyncEventStream(self._iterate(self._core.events(doc, state)), state)


class AsyncEventStream:
    """An async iterator over a document's :class:`Event` values that reconnects by
    itself."""

    def __init__(self, events: AsyncIterator[Event], state: StreamState) -> None:
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

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> Event:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        """Closes the connection; the iteration ends."""
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
