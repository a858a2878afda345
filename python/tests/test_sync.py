"""The blocking client against the real server: documents, stale writes, typed errors."""

from __future__ import annotations

import uuid

import pytest

from concord import (
    BadRequest,
    Client,
    Conflict,
    Locked,
    NotFound,
    PreconditionFailed,
    PreconditionRequired,
    TooLarge,
    Unprocessable,
)
from support import MAX_DOCUMENT_BYTES


@pytest.fixture
def client(url: str):
    with Client(url, agent="tester") as c:
        yield c


def agents(url: str, *names: str):
    """One client per agent name."""
    return [Client(url, agent=name) for name in names]


def test_create_read_write_round_trip(client: Client) -> None:
    created = client.create({"title": "plan", "items": []})
    assert created.strategy == "crdt" and created.value == {"title": "plan", "items": []}
    assert len(created.version) == 64 and created.new_changes == 1

    read = client.read(created.id)
    assert (read.id, read.value, read.version) == (created.id, created.value, created.version)
    assert read.url and read.url.startswith("automerge:")

    written = client.write(read, {"title": "plan", "items": ["one"]})
    assert written.value == {"title": "plan", "items": ["one"]}
    assert written.version != read.version
    assert client.read(created.id).version == written.version

    # The old value stays readable at its version.
    assert client.read(created.id, at=created.version).value["items"] == []
    assert client.read(created.id, path="/items").value == ["one"]
    assert created.id in {info.id for info in client.list()}


def test_create_with_an_id_and_options(client: Client) -> None:
    chosen = str(uuid.uuid4())
    doc = client.create({"n": 0}, id=chosen, strategy="optimistic", counters=["/n"])
    assert (doc.id, doc.strategy) == (chosen, "optimistic")


def test_a_stale_write_keeps_what_was_written_since(url: str) -> None:
    """The lost-update timeline: A reads, B reads and writes, A writes from its copy."""
    a, b = agents(url, "agent-a", "agent-b")
    with a, b:
        doc = a.create({"findings": []})
        seen_by_a = a.read(doc.id)
        seen_by_b = b.read(doc.id)
        b.write(seen_by_b, {"findings": ["B: the cache is stale"]})
        merged = a.write(seen_by_a, {"findings": ["A: the index is missing"]})
        assert sorted(merged.value["findings"]) == [
            "A: the index is missing",
            "B: the cache is stale",
        ]
        assert a.read(doc.id).value == merged.value
        assert a.history(doc.id).agents == ["agent-a", "agent-b", "agent-a"]


def test_a_patch_at_a_stale_base_means_what_it_meant_then(url: str) -> None:
    a, b = agents(url, "agent-a", "agent-b")
    with a, b:
        doc = a.create({"items": ["a", "b"]})
        v1 = a.read(doc.id)
        b.patch(doc.id, [{"op": "add", "path": "/items/0", "value": "z"}])
        # /items/1 was "b" at v1; it is at index 2 now.
        merged = a.patch(v1, [{"op": "replace", "path": "/items/1", "value": "B!"}])
        assert merged.value == {"items": ["z", "a", "B!"]}
        # An explicit base does the same as passing the Doc.
        merged = a.patch(doc.id, [{"op": "remove", "path": "/items/0"}], base=v1.version)
        assert merged.value == {"items": ["z", "B!"]}


def test_merge_patch(client: Client) -> None:
    doc = client.create({"a": 1, "b": {"c": 2}})
    assert client.merge_patch(doc, {"b": {"c": None, "d": 3}}).value == {"a": 1, "b": {"d": 3}}


def test_update_writes_at_the_version_it_read(url: str) -> None:
    a, b = agents(url, "agent-a", "agent-b")
    with a, b:
        doc = a.create({"findings": [], "count": 0})

        def slow_a(value):
            # While A "thinks", B reads and writes the document.
            b.update(doc.id, lambda v: v["findings"].append("from b"))
            value["findings"].append("from a")

        result = a.update(doc.id, slow_a)
        assert sorted(result.value["findings"]) == ["from a", "from b"]
        # A function may return a new value instead of changing the copy.
        result = a.update(doc.id, lambda v: {**v, "count": v["count"] + 1})
        assert result.value["count"] == 1 and len(result.value["findings"]) == 2


def test_update_leaves_the_value_read_untouched_and_skips_no_op_writes(client: Client) -> None:
    doc = client.create({"items": [1]})
    seen = []

    def look(value):
        seen.append(value)

    same = client.update(doc.id, look)
    assert same.version == doc.version and len(client.history(doc.id).changes) == 1
    seen[0]["items"].append(2)  # a deep copy: changing it changes nothing
    assert client.read(doc.id).value == {"items": [1]}


def test_update_redoes_its_work_on_an_optimistic_document(url: str) -> None:
    a, b = agents(url, "agent-a", "agent-b")
    with a, b:
        doc = a.create({"log": []}, strategy="optimistic")
        calls = []

        def work(value):
            calls.append(list(value["log"]))
            if len(calls) == 1:  # the first time, someone writes meanwhile
                b.update(doc.id, lambda v: v["log"].append("b"))
            value["log"].append("a")

        result = a.update(doc.id, work)
        assert calls == [[], ["b"]]
        assert result.value == {"log": ["b", "a"]}


def test_an_optimistic_document_refuses_a_stale_write_and_names_the_present(
    client: Client,
) -> None:
    doc = client.create({"x": 1}, strategy="optimistic")
    current = client.write(doc, {"x": 2})
    with pytest.raises(PreconditionFailed) as refused:
        client.write(doc, {"x": 3})
    assert refused.value.kind == "stale-version"
    assert refused.value.version == current.version


def test_the_same_idempotency_key_applies_once(client: Client) -> None:
    doc = client.create({"items": []})
    key = str(uuid.uuid4())
    first = client.patch(
        doc, [{"op": "add", "path": "/items/-", "value": "x"}], idempotency_key=key
    )
    again = client.patch(
        doc, [{"op": "add", "path": "/items/-", "value": "x"}], idempotency_key=key
    )
    assert (first.replayed, again.replayed) == (False, True)
    assert again.version == first.version and again.value == {"items": ["x"]}
    assert client.read(doc.id).value == {"items": ["x"]}
    assert len(client.history(doc.id).changes) == 2
    # The same key for another request is refused.
    with pytest.raises(Unprocessable) as reused:
        client.patch(doc, [{"op": "add", "path": "/items/-", "value": "y"}], idempotency_key=key)
    assert reused.value.kind == "idempotency-key-reused"


def test_conflicts_are_listed_with_their_agents(url: str) -> None:
    a, b = agents(url, "agent-a", "agent-b")
    with a, b:
        doc = a.create({"status": "open"})
        b.write(doc, {"status": "done"})
        a.write(doc, {"status": "blocked"})
        (conflict,) = a.conflicts(doc.id)
        assert conflict.path == "/status"
        assert {(v.value, v.agent) for v in conflict.values} == {
            ("done", "agent-b"),
            ("blocked", "agent-a"),
        }
        read = a.read(doc.id, conflicts=True)
        assert read.lost == [] and len(read.conflicts or []) == 1
        # Naming the place settles it.
        a.patch(doc.id, [{"op": "replace", "path": "/status", "value": "done"}])
        assert a.conflicts(doc.id) == []


def test_delete(client: Client) -> None:
    doc = client.create({})
    client.delete(doc)
    with pytest.raises(NotFound):
        client.read(doc.id)


def test_fork_and_merge(client: Client) -> None:
    doc = client.create({"notes": []}, strategy="branches")
    fork = client.fork(doc)
    assert fork.id != doc.id
    client.update(fork, lambda v: v["notes"].append("from the fork"))
    assert client.read(doc.id).value == {"notes": []}
    assert client.merge(doc, fork).value == {"notes": ["from the fork"]}


def test_lock_and_release(url: str) -> None:
    a, b = agents(url, "agent-a", "agent-b")
    with a, b:
        doc = a.create({"n": 1}, strategy="lock")
        with pytest.raises(PreconditionRequired):
            a.write(doc, {"n": 2})
        lease = a.lock(doc, ttl_ms=30_000)
        assert a.write(doc, {"n": 2}, lock=lease).value == {"n": 2}
        with pytest.raises(Locked) as held:
            b.lock(doc, ttl_ms=30_000)
        assert held.value.kind == "locked" and held.value.retry_after
        a.release(doc, lease)
        lease_b = b.lock(doc, ttl_ms=30_000)
        with pytest.raises(Conflict) as fenced:
            a.write(doc.id, {"n": 3}, base="*", lock=lease)
        assert fenced.value.kind == "fenced"
        b.release(doc, lease_b)


# -- typed errors --------------------------------------------------------------------------


def test_an_unknown_document_is_not_found(client: Client) -> None:
    with pytest.raises(NotFound) as missing:
        client.read(str(uuid.uuid4()))
    error = missing.value
    assert (error.status, error.kind, error.title) == (404, "not-found", "Not Found")
    assert error.type == "urn:concord:problem:not-found"
    assert error.problem["status"] == 404 and "no document" in error.detail


def test_an_unknown_version(client: Client) -> None:
    doc = client.create({"a": 1})
    unknown = "ab" * 32
    with pytest.raises(NotFound) as read:
        client.read(doc.id, at=unknown)
    assert read.value.kind == "unknown-version"
    with pytest.raises(PreconditionFailed) as write:
        client.write(doc.id, {"a": 2}, base=unknown)
    assert write.value.kind == "unknown-version"
    with pytest.raises(PreconditionFailed) as weak:
        client.write(doc.id, {"a": 2}, base=f'W/"{doc.version}"')
    assert weak.value.kind == "weak-etag"
    assert client.read(doc.id).value == {"a": 1}


@pytest.mark.parametrize(
    "call, kind",
    [
        (lambda c, d: c.read("not-a-uuid"), "invalid-id"),
        (lambda c, d: c.write(d.id, {"a": 2}, base="zz"), "invalid-version"),
        (lambda c, d: c.read(d.id, at="zz"), "invalid-version"),
        (lambda c, d: c.patch(d, [{"op": "bogus", "path": "/a"}]), "invalid-patch"),
        (lambda c, d: c.read(d.id, path="no-slash"), "invalid-pointer"),
    ],
)
def test_bad_requests(client: Client, call, kind: str) -> None:
    doc = client.create({"a": 1})
    with pytest.raises(BadRequest) as bad:
        call(client, doc)
    assert (bad.value.status, bad.value.kind) == (400, kind)
    assert client.read(doc.id).value == {"a": 1}


def test_a_write_without_a_base_is_refused_on_a_crdt_document(client: Client) -> None:
    doc = client.create({"a": 1})
    with pytest.raises(PreconditionRequired) as refused:
        client.write(doc.id, {"a": 2})
    assert (refused.value.status, refused.value.kind) == (428, "if-match-required")


def test_other_refusals_are_typed(client: Client) -> None:
    doc = client.create({"a": 1})
    with pytest.raises(Conflict) as missing_path:
        client.patch(doc, [{"op": "remove", "path": "/nope"}])
    assert missing_path.value.kind == "path-not-found"
    with pytest.raises(Unprocessable) as not_an_object:
        client.write(doc, [1, 2])
    assert not_an_object.value.kind == "invalid-value"
    with pytest.raises(TooLarge) as too_large:
        client.write(doc, {"a": "x" * (MAX_DOCUMENT_BYTES + 1)})
    assert (too_large.value.status, too_large.value.kind) == (413, "document-too-large")
    with pytest.raises(Unprocessable) as strategy:
        client.create({}, strategy="nope")
    assert strategy.value.kind == "invalid-strategy"
    assert client.read(doc.id).value == {"a": 1}


def test_an_edit_hidden_by_a_concurrent_delete_is_listed_and_can_be_restored(url: str) -> None:
    x, y = agents(url, "agent-x", "agent-y")
    with x, y:
        doc = x.create({"a": {"x": 1}, "b": 1})
        y.patch(doc.id, [{"op": "add", "path": "/a/y", "value": 2}])
        x.write(doc, {"b": 1})  # from before y's edit: deletes /a, y's edit in it
        (lost,) = x.read(doc.id, conflicts=True).lost or []
        assert (lost.path, lost.value) == ("/a", {"x": 1, "y": 2})
        assert (lost.deleted_by, lost.edited_by) == (["agent-x"], ["agent-y"])
        restored = x.restore_lost(doc.id, lost)
        assert restored.value == {"a": {"x": 1, "y": 2}, "b": 1}
        assert x.read(doc.id, conflicts=True).lost == []
