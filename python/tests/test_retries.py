"""Retries over real sockets: a write whose answer is lost is retried with the same
``Idempotency-Key`` and applied once; a 503 is retried after ``Retry-After``."""

from __future__ import annotations

import socket
from typing import List

import httpx
import pytest

from concord import AsyncClient, Client, Retry, RetryEvent, TransportError
from support import Proxy, Server, holding_connection

FAST = Retry(attempts=4, backoff=0.01, max_backoff=0.05, max_retry_after=0.2, jitter=False)


def add(item: str):
    return [{"op": "add", "path": "/items/-", "value": item}]


def test_a_write_whose_answer_was_lost_is_applied_once(url: str, proxy: Proxy) -> None:
    retries: List[RetryEvent] = []
    with Client(proxy.url, retry=FAST, on_retry=retries.append) as client:
        doc = client.create({"items": []})
        proxy.drop_next_response()
        written = client.patch(doc.id, add("once"))
        assert proxy.dropped == 1
        # The retry carried the same key and was answered from the server's record.
        assert written.replayed and written.value == {"items": ["once"]}
        (retry,) = retries
        assert retry.status is None and retry.attempt == 1
        key = retry.request.header("idempotency-key")
        sent = [proxy.sent(i).lower() for i in range(len(proxy.requests))]
        # Sent twice, once on the cut connection and once on a new one.
        assert key and [s.count(f"idempotency-key: {key}") for s in sent][-2:] == [1, 1]
        assert len(client.history(doc.id).changes) == 2


def test_every_write_gets_a_fresh_key(url: str) -> None:
    keys = []

    def record(request):
        keys.append(request.headers.get("idempotency-key"))

    transport = httpx.HTTPTransport()
    with Client(url) as client, Client(url, transport=_Recording(transport, record)) as spy:
        doc = client.create({"items": []})
        spy.patch(doc.id, add("a"))
        spy.patch(doc.id, add("b"))
        spy.read(doc.id)
    assert len(keys) == 3 and keys[2] is None and keys[0] != keys[1]


class _Recording:
    """An httpx transport that shows each request to a callback, then sends it."""

    def __init__(self, inner, seen) -> None:
        self._inner, self._seen = inner, seen

    def handle_request(self, request):
        self._seen(request)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def test_a_refused_connection_is_retried_after_retry_after(small_server: Server) -> None:
    held = holding_connection(small_server.url)
    retries: List[RetryEvent] = []

    def release(event: RetryEvent) -> None:
        retries.append(event)
        held.close()  # the server has room again

    with Client(
        small_server.url, retry=Retry(attempts=8, max_retry_after=0.1), on_retry=release
    ) as client:
        # A write over the limit: refused before it was read, retried with its key.
        doc = client.create({"items": []})
        assert retries[0].status == 503 and retries[0].retry_after == 1.0
        assert retries[0].delay == 0.1  # Retry-After, cut to max_retry_after
        assert retries[0].error is not None and retries[0].error.kind == "too-many-connections"
        assert [d.id for d in client.list()] == [doc.id]


def test_no_answer_after_every_attempt_is_a_transport_error() -> None:
    # A bound socket that does not listen: every connection to it is refused.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        retries: List[RetryEvent] = []
        with Client(url, retry=FAST, on_retry=retries.append) as client:
            with pytest.raises(TransportError) as failed:
                client.read("00000000-0000-4000-8000-000000000000")
    assert failed.value.status is None and failed.value.__cause__ is not None
    assert len(retries) == FAST.attempts - 1


@pytest.mark.anyio
async def test_async_a_write_whose_answer_was_lost_is_applied_once(url: str, proxy: Proxy) -> None:
    retries: List[RetryEvent] = []

    async def record(event: RetryEvent) -> None:  # hooks may be coroutine functions
        retries.append(event)

    async with AsyncClient(proxy.url, retry=FAST, on_retry=record) as client:
        doc = await client.create({"items": []})
        proxy.drop_next_response()
        written = await client.write(doc, {"items": ["once"]})
        assert written.replayed and written.value == {"items": ["once"]}
        assert len(retries) == 1
        assert len((await client.history(doc.id)).changes) == 2
