"""The async client against the real server: the core cases of test_sync.py."""

from __future__ import annotations

import uuid

import anyio
import pytest

from concord import AsyncClient, BadRequest, NotFound, PreconditionFailed, Unprocessable

pytestmark = pytest.mark.anyio


async def test_create_read_write_round_trip(url: str) -> None:
    async with AsyncClient(url, agent="tester") as client:
        created = await client.create({"items": []})
        read = await client.read(created.id)
        assert (read.value, read.version) == ({"items": []}, created.version)
        written = await client.write(read, {"items": ["one"]})
        assert written.value == {"items": ["one"]}
        assert (await client.read(created.id)).version == written.version
        assert (await client.read(created.id, at=created.version)).value == {"items": []}


async def test_a_stale_write_keeps_what_was_written_since(url: str) -> None:
    async with AsyncClient(url, agent="agent-a") as a, AsyncClient(url, agent="agent-b") as b:
        doc = await a.create({"findings": []})
        seen_by_a = await a.read(doc.id)
        await b.write(await b.read(doc.id), {"findings": ["B"]})
        merged = await a.write(seen_by_a, {"findings": ["A"]})
        assert sorted(merged.value["findings"]) == ["A", "B"]
        assert (await a.history(doc.id)).agents == ["agent-a", "agent-b", "agent-a"]


async def test_a_patch_at_a_stale_base(url: str) -> None:
    async with AsyncClient(url) as client:
        doc = await client.create({"items": ["a", "b"]})
        await client.patch(doc.id, [{"op": "add", "path": "/items/0", "value": "z"}])
        merged = await client.patch(doc, [{"op": "replace", "path": "/items/1", "value": "B!"}])
        assert merged.value == {"items": ["z", "a", "B!"]}


async def test_concurrent_updates_with_async_thinking_lose_nothing(url: str) -> None:
    async with AsyncClient(url, agent="agent-a") as a, AsyncClient(url, agent="agent-b") as b:
        doc = await a.create({"findings": []})
        both_read = anyio.Event()
        readers = 0

        def agent(client: AsyncClient, finding: str):
            async def think(value):
                nonlocal readers
                readers += 1
                if readers == 2:
                    both_read.set()
                await both_read.wait()  # each writes only once both have read
                value["findings"].append(finding)

            return client.update(doc.id, think)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(agent, a, "from a")
                tasks.start_soon(agent, b, "from b")
        final = await a.read(doc.id)
        assert sorted(final.value["findings"]) == ["from a", "from b"]


async def test_the_same_idempotency_key_applies_once(url: str) -> None:
    async with AsyncClient(url) as client:
        doc = await client.create({"items": []})
        key = str(uuid.uuid4())
        ops = [{"op": "add", "path": "/items/-", "value": "x"}]
        first = await client.patch(doc, ops, idempotency_key=key)
        again = await client.patch(doc, ops, idempotency_key=key)
        assert (first.replayed, again.replayed) == (False, True)
        assert (await client.read(doc.id)).value == {"items": ["x"]}
        with pytest.raises(Unprocessable):
            await client.patch(doc, ops + ops, idempotency_key=key)


async def test_typed_errors(url: str) -> None:
    async with AsyncClient(url) as client:
        with pytest.raises(NotFound) as missing:
            await client.read(str(uuid.uuid4()))
        assert missing.value.kind == "not-found"
        doc = await client.create({"a": 1})
        with pytest.raises(PreconditionFailed) as unknown:
            await client.write(doc.id, {"a": 2}, base="cd" * 32)
        assert (unknown.value.status, unknown.value.kind) == (412, "unknown-version")
        with pytest.raises(BadRequest) as bad:
            await client.write(doc.id, {"a": 2}, base="not a version")
        assert bad.value.kind == "invalid-version"
        await client.delete(doc)
        with pytest.raises(NotFound):
            await client.read(doc.id)
