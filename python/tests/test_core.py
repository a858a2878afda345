"""The sans-IO core without a server: SSE parsing, retry decisions, request building,
and the retry loop driven by hand."""

from __future__ import annotations

import json
from typing import Any, List

import pytest

from concord import Doc, Retry, Unavailable, errors
from concord._core import (
    IDEMPOTENT,
    KEYED,
    SAFE,
    UNSAFE,
    Call,
    Core,
    Failure,
    Request,
    Response,
    Settings,
    Sleep,
    bare_version,
    if_match,
    parse_retry_after,
    retryable,
)
from concord._sse import RawEvent, SseParser


def feed(parser: SseParser, text: str) -> List[RawEvent]:
    events = []
    for line in text.split("\n"):
        event = parser.feed(line)
        if event is not None:
            events.append(event)
    return events


def test_sse_parser() -> None:
    parser = SseParser()
    events = feed(
        parser,
        ": keep-alive\n\n"
        'event: snapshot\nid: v1\ndata: {"a":\ndata: 1}\n\n'
        "data:no space\n\n"
        "retry: 250\nevent: deleted\ndata: {}\n\n"
        "id\n\n",
    )
    assert events == [
        RawEvent("snapshot", "v1", '{"a":\n1}'),
        RawEvent("message", None, "no space"),
        RawEvent("deleted", None, "{}"),
    ]
    assert json.loads(events[0].data) == {"a": 1}
    assert parser.retry_ms == 250
    # An event without an id keeps the last one; an empty id field clears it.
    assert parser.last_event_id is None
    parser = SseParser("v0")
    feed(parser, "data: x\n\n")
    assert parser.last_event_id == "v0"


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("1", 1.0),
        (" 30 ", 30.0),
        ("Thu, 01 Jan 1970 00:00:10 GMT", 10.0),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
        ("soon", None),
        (None, None),
    ],
)
def test_retry_after(value: Any, seconds: Any) -> None:
    assert parse_retry_after(value, now=0.0 if seconds != 0.0 else 5.0) == seconds


def test_backoff_doubles_up_to_its_cap_and_retry_after_wins() -> None:
    policy = Retry(backoff=0.1, max_backoff=0.35, max_retry_after=2.0, jitter=False)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.35, 0.35]
    assert policy.delay(1, retry_after=1.0) == 1.0
    assert policy.delay(1, retry_after=30.0) == 2.0
    jittered = Retry(backoff=1.0)
    assert all(0.5 <= jittered.delay(1) <= 1.0 for _ in range(50))


def problem(status: int, kind: str) -> Response:
    body = {"type": f"urn:concord:problem:{kind}", "title": "t", "status": status, "detail": "d"}
    return Response(status, {"content-type": "application/problem+json"}, json.dumps(body).encode())


@pytest.mark.parametrize(
    "kind, outcome, expected",
    [
        (SAFE, Failure(OSError(), sent=True), True),
        (KEYED, Failure(OSError(), sent=True), True),
        (IDEMPOTENT, Failure(OSError(), sent=True), True),
        (UNSAFE, Failure(OSError(), sent=True), False),
        (UNSAFE, Failure(OSError(), sent=False), True),
        (KEYED, problem(503, "storage-unavailable"), True),
        (UNSAFE, problem(503, "storage-unavailable"), False),
        (UNSAFE, problem(503, "too-many-connections"), True),
        (KEYED, problem(409, "idempotency-key-in-flight"), True),
        (SAFE, problem(409, "idempotency-key-in-flight"), False),
        (KEYED, problem(409, "path-not-found"), False),
        (KEYED, problem(412, "stale-version"), False),
        (SAFE, problem(500, "internal"), False),
    ],
)
def test_what_is_retried(kind: str, outcome: Any, expected: bool) -> None:
    assert retryable(Request("GET", "/", retry=kind), outcome) is expected


def test_versions_and_entity_tags() -> None:
    assert if_match("abc") == '"abc"'
    assert if_match("*") == "*"
    assert if_match('"abc"') == '"abc"' and if_match('W/"abc"') == 'W/"abc"'
    assert bare_version('"abc"') == "abc" and bare_version('W/"abc"') == "abc"
    assert bare_version("abc") == "abc" and bare_version(None) is None


def drive(op, outcomes: List[Any]) -> Any:
    """Runs an operation, answering its requests from ``outcomes``; records commands."""
    commands = []
    answer = None
    try:
        while True:
            command = op.send(answer)
            commands.append(command)
            if isinstance(command, Request):
                answer = outcomes.pop(0)
            elif isinstance(command, Call):
                answer = command.fn(command.arg)
            else:
                answer = None
    except StopIteration as stop:
        return stop.value, commands


def doc_response(value: Any) -> Response:
    body = {"id": "d", "version": "v2", "strategy": "crdt", "value": value, "new_changes": 1}
    return Response(200, {"etag": '"v2"'}, json.dumps(body).encode())


def test_a_retried_write_sends_the_same_request_again() -> None:
    core = Core(Settings(agent="a", retry=Retry(attempts=3, jitter=False, backoff=0.5)))
    doc = Doc(id="d", value={}, version="v1")
    unavailable = Response(503, {"retry-after": "2"}, problem(503, "storage-unavailable").content)
    result, commands = drive(
        core.write(doc, {"x": 1}),
        [Failure(OSError("cut"), sent=True), unavailable, doc_response({"x": 1})],
    )
    requests = [c for c in commands if isinstance(c, Request)]
    assert len(requests) == 3 and requests[0] is requests[1] is requests[2]
    assert [c.seconds for c in commands if isinstance(c, Sleep)] == [0.5, 2.0]
    first = requests[0]
    assert first.header("if-match") == '"v1"' and first.header("concord-agent") == "a"
    assert first.header("idempotency-key") and first.content == b'{"x":1}'
    assert result.version == "v2" and result.value == {"x": 1}


def test_retries_are_bounded_and_end_in_the_typed_error() -> None:
    core = Core(Settings(retry=Retry(attempts=2, jitter=False)))
    with pytest.raises(Unavailable) as refused:
        drive(core.read("d"), [problem(503, "storage-unavailable")] * 2)
    assert refused.value.kind == "storage-unavailable"


def test_update_calls_the_function_on_a_copy_and_writes_at_the_version_read() -> None:
    core = Core(Settings())
    read = Response(
        200,
        {"etag": '"v1"'},
        json.dumps({"id": "d", "version": "v1", "value": {"items": [1]}}).encode(),
    )
    result, commands = drive(
        core.update("d", lambda v: v["items"].append(2)), [read, doc_response({"items": [1, 2]})]
    )
    put = [c for c in commands if isinstance(c, Request)][1]
    assert (put.method, put.header("if-match"), put.content) == ("PUT", '"v1"', b'{"items":[1,2]}')
    assert result.value == {"items": [1, 2]}


def test_a_body_that_is_not_a_problem_still_gives_a_typed_error() -> None:
    error = errors.from_response(502, {}, b"<html>bad gateway</html>")
    assert isinstance(error, errors.ServerError)
    assert (error.status, error.type, error.detail) == (
        502,
        "about:blank",
        "<html>bad gateway</html>",
    )


def test_documents_are_escaped_in_paths() -> None:
    core = Core(Settings())
    _, commands = drive(core.read("a/../b"), [doc_response({})])
    assert commands[0].path == "/v1/docs/a%2F..%2Fb"


def test_a_request_header_replaces_the_default_of_its_name() -> None:
    core = Core(Settings(agent="a", token="t"))
    request = core.request("GET", "/", headers=[("accept", "text/event-stream")])
    names = [name for name, _ in request.headers]
    assert names.count("accept") == 1 and request.header("accept") == "text/event-stream"
    assert request.header("authorization") == "Bearer t" and request.header("concord-agent") == "a"
