"""Bearer tokens against a server started with ``--auth``."""

from __future__ import annotations

import pytest

from concord import AsyncClient, Client, Forbidden, Unauthorized
from support import Server, token


@pytest.fixture
def admin(auth_server: Server):
    with Client(auth_server.url, token=token("admin")) as c:
        yield c


def test_a_read_only_token_may_read_but_not_write(auth_server: Server, admin: Client) -> None:
    doc = admin.create({"items": ["a"]})
    with Client(auth_server.url, token=token("reader")) as reader:
        read = reader.read(doc.id)
        assert read.value == {"items": ["a"]}
        with pytest.raises(Forbidden) as refused:
            reader.write(read, {"items": ["a", "b"]})
        assert (refused.value.status, refused.value.kind) == (403, "forbidden")
        with pytest.raises(Forbidden):
            reader.patch(doc.id, [{"op": "add", "path": "/items/-", "value": "b"}])
        # It may still follow the document live.
        with reader.events(doc.id) as events:
            assert next(events).value == {"items": ["a"]}
    assert admin.read(doc.id).version == doc.version


def test_no_token_and_a_wrong_token_are_unauthorized(auth_server: Server, admin: Client) -> None:
    doc = admin.create({})
    for secret in (None, "not-a-token-of-this-server"):
        with Client(auth_server.url, token=secret) as anonymous:
            with pytest.raises(Unauthorized) as refused:
                anonymous.read(doc.id)
        assert (refused.value.status, refused.value.kind) == (401, "unauthorized")
        assert refused.value.headers["www-authenticate"].lower().startswith("bearer")


def test_the_token_names_the_agent(auth_server: Server, admin: Client) -> None:
    doc = admin.create({"items": []})
    with Client(auth_server.url, token=token("writer"), agent="mallory") as writer:
        writer.update(doc.id, lambda v: v["items"].append("x"))
        # Creating a document needs admin.
        with pytest.raises(Forbidden):
            writer.create({})
    assert admin.history(doc.id).agents == ["ops", "planner"]


@pytest.mark.anyio
async def test_async_a_read_only_token_is_refused_a_write(
    auth_server: Server, admin: Client
) -> None:
    doc = admin.create({"n": 1})
    async with AsyncClient(auth_server.url, token=token("reader")) as reader:
        read = await reader.read(doc.id)
        with pytest.raises(Forbidden):
            await reader.write(read, {"n": 2})
