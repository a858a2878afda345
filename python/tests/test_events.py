"""The live event stream, sync and async: a snapshot, then changes, and resumption with
``Last-Event-ID`` after the connection is cut (by a proxy, over real sockets).

No test waits on a clock: each event is produced before it is read. Reads are bounded by
a short stream read timeout and few reconnect attempts, so a missing event fails the test
instead of hanging it.
"""

from __future__ import annotations

import anyio
import pytest

from concord import AsyncClient, Client, NotFound
from support import Proxy

BOUNDED = {"stream_read_timeout": 10.0, "stream_attempts": 3}


def add(item: str):
    return [{"op": "add", "path": "/items/-", "value": item}]


def test_events_see_changes_and_resume_after_a_cut(url: str, proxy: Proxy) -> None:
    with Client(url, agent="writer") as direct, Client(proxy.url, **BOUNDED) as live:
        doc = direct.create({"items": []})
        with live.events(doc.id) as events:
            snapshot = next(events)
            assert (snapshot.type, snapshot.value, snapshot.version) == (
                "snapshot",
                {"items": []},
                doc.version,
            )
            assert snapshot.id == doc.version

            one = direct.patch(doc.id, add("one"))
            change = next(events)
            assert (change.type, change.version, change.previous) == (
                "change",
                one.version,
                doc.version,
            )
            assert change.agent == "writer"
            assert change.patch == [{"op": "add", "path": "/items/0", "value": "one"}]
            assert events.last_event_id == one.version and events.reconnects == 0

            assert proxy.cut() == 1
            two = direct.patch(doc.id, add("two"))  # made while the stream is down

            resumed = next(events)
            assert (resumed.type, resumed.version, resumed.previous) == (
                "change",
                two.version,
                one.version,
            )
            assert events.reconnects == 1
            # The second connection asked for what came after the last event seen.
            assert f"last-event-id: {one.version}" in proxy.sent(1).lower()

            three = direct.patch(doc.id, add("three"))
            assert next(events).version == three.version


def test_events_since_a_version_and_the_end_of_a_deleted_document(url: str) -> None:
    with Client(url, **BOUNDED) as client:
        doc = client.create({"items": []})
        one = client.patch(doc.id, add("one"))
        with client.events(doc.id, since=doc.version) as events:
            first = next(events)
            assert (first.type, first.version) == ("change", one.version)
            client.delete(doc.id)
            assert next(events).type == "deleted"
            with pytest.raises(StopIteration):
                next(events)


def test_events_of_an_unknown_document(url: str) -> None:
    with Client(url, **BOUNDED) as client:
        with pytest.raises(NotFound):
            next(iter(client.events("00000000-0000-4000-8000-000000000000")))


@pytest.mark.anyio
async def test_async_events_see_changes_and_resume_after_a_cut(url: str, proxy: Proxy) -> None:
    async with (
        AsyncClient(url, agent="writer") as direct,
        AsyncClient(proxy.url, **BOUNDED) as live,
    ):
        doc = await direct.create({"items": []})
        with anyio.fail_after(30):
            async with live.events(doc.id) as events:
                snapshot = await events.__anext__()
                assert (snapshot.type, snapshot.version) == ("snapshot", doc.version)

                one = await direct.patch(doc.id, add("one"))
                change = await events.__anext__()
                assert (change.type, change.version) == ("change", one.version)

                assert proxy.cut() == 1
                two = await direct.patch(doc.id, add("two"))
                resumed = await events.__anext__()
                assert (resumed.type, resumed.version, resumed.previous) == (
                    "change",
                    two.version,
                    one.version,
                )
                assert events.reconnects == 1 and events.last_event_id == two.version
                assert f"last-event-id: {one.version}" in proxy.sent(1).lower()

                await direct.delete(doc.id)
                kinds = [event.type async for event in events]
                assert kinds == ["deleted"]
