//! The merge is exact, end to end: no acknowledged edit lands on the wrong element or
//! disappears silently. Each case starts from a fresh crdt document at version V; Y writes
//! first, then X, both with `If-Match: "V"`; both are answered 200.

use concord_client::{Client, Frame, ServerMessage};
use concord_tests::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// One write of an agent.
enum W {
    Put(Value),
    Patch(Value),
    Merge(Value),
}

async fn write(s: &TestServer, id: &str, agent: &str, base: &str, w: &W) {
    let reply = match w {
        W::Put(v) => s.put(id, agent, base, v).await,
        W::Patch(ops) => s.patch(id, agent, Some(base), ops).await,
        W::Merge(p) => {
            s.send(
                s.request(Method::PATCH, &format!("/v1/docs/{id}"))
                    .header("concord-agent", agent)
                    .header("if-match", format!("\"{base}\""))
                    .header("content-type", "application/merge-patch+json")
                    .body(p.to_string()),
            )
            .await
        }
    };
    assert_eq!(reply.status, StatusCode::OK, "{agent}: {:?}", reply.json());
}

/// Creates the document, lets Y then X write at V; returns the final value and the lost
/// edits listed by `?conflicts=true`.
async fn case(s: &TestServer, create: Value, y: W, x: W) -> (String, Value, Vec<Value>) {
    let (id, v) = s.create(create).await;
    write(s, &id, "Y", &v, &y).await;
    write(s, &id, "X", &v, &x).await;
    let read = conflicts(s, &id).await;
    let lost = read["lost"].as_array().cloned().unwrap_or_default();
    (id, read["value"].clone(), lost)
}

async fn conflicts(s: &TestServer, id: &str) -> Value {
    let reply = s
        .send(s.request(Method::GET, &format!("/v1/docs/{id}?conflicts=true")))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.json()
}

fn done_on(index: usize) -> W {
    W::Patch(json!([{"op": "add", "path": format!("/items/{index}/done"), "value": true}]))
}

#[tokio::test]
async fn delete_before_an_edited_element_keeps_the_edit() {
    let s = TestServer::start().await;
    let (_, value, lost) = case(
        &s,
        json!({"value": {"items": [{"id": 1}, {"id": 2, "t": "b"}, {"id": 3}]}}),
        done_on(1),
        W::Put(json!({"items": [{"id": 2, "t": "b2"}, {"id": 3}]})),
    )
    .await;
    assert_eq!(
        value,
        json!({"items": [{"id": 2, "t": "b2", "done": true}, {"id": 3}]})
    );
    assert!(lost.is_empty(), "{lost:?}");
}

#[tokio::test]
async fn insert_before_an_edited_element_keeps_the_edit_on_it() {
    let s = TestServer::start().await;
    let (_, value, _) = case(
        &s,
        json!({"value": {"items": [{"name": "A"}, {"name": "B"}, {"name": "C"}]}}),
        done_on(1),
        W::Put(json!({"items": [
            {"name": "A"}, {"name": "N"}, {"name": "B", "note": "see N"}, {"name": "C"}
        ]})),
    )
    .await;
    assert_eq!(
        value,
        json!({"items": [
            {"name": "A"}, {"name": "N"}, {"name": "B", "note": "see N", "done": true}, {"name": "C"}
        ]})
    );
}

#[tokio::test]
async fn swapped_neighbours_keep_their_edits() {
    let s = TestServer::start().await;
    let (_, value, _) = case(
        &s,
        json!({"value": {"items": [{"name": "A"}, {"name": "B"}, {"name": "C"}, {"name": "D"}]}}),
        done_on(1),
        W::Put(json!({"items": [{"name": "B"}, {"name": "A"}, {"name": "D"}, {"name": "C"}]})),
    )
    .await;
    assert_eq!(
        value,
        json!({"items": [{"name": "B", "done": true}, {"name": "A"}, {"name": "D"}, {"name": "C"}]})
    );
}

#[tokio::test]
async fn counters_and_text_of_an_element_survive_a_delete_before_it() {
    let s = TestServer::start().await;
    let (_, value, _) = case(
        &s,
        json!({
            "value": {"items": [
                {"id": "a", "name": "zero", "votes": 0, "body": "first"},
                {"id": "b", "name": "one", "votes": 0, "body": "hello"}
            ]},
            "text": ["/items/*/body"],
            "counters": ["/items/*/votes"],
            "ids": ["/items/*/id"]
        }),
        W::Patch(json!([
            {"op": "increment", "path": "/items/1/votes", "value": 1},
            {"op": "splice", "path": "/items/1/body", "pos": 5, "insert": " world"}
        ])),
        W::Put(json!({"items": [{"id": "b", "name": "uno", "votes": 0, "body": "hello"}]})),
    )
    .await;
    assert_eq!(
        value,
        json!({"items": [{"id": "b", "name": "uno", "votes": 1, "body": "hello world"}]})
    );
}

#[tokio::test]
async fn a_text_put_keeps_each_edit_on_its_line() {
    let s = TestServer::start().await;
    let (_, value, _) = case(
        &s,
        json!({"value": {"t": "- one\n- two\n"}, "text": ["/t"]}),
        W::Put(json!({"t": "- zero\n- one\n- two\n"})),
        W::Put(json!({"t": "- (!) one\n- two\n"})),
    )
    .await;
    assert_eq!(value, json!({"t": "- zero\n- (!) one\n- two\n"}));
}

#[tokio::test]
async fn counters_created_concurrently_add_up() {
    let s = TestServer::start().await;
    let inc = || W::Patch(json!([{"op": "increment", "path": "/n", "value": 1}]));
    let (id, value, _) = case(&s, json!({"value": {}, "counters": ["/n"]}), inc(), inc()).await;
    assert_eq!(value, json!({"n": 2}));
    assert_eq!(conflicts(&s, &id).await["conflicts"], json!([]));
    // The next write folds them into one counter.
    let reply = s
        .patch(
            &id,
            "Z",
            None,
            &json!([{"op": "increment", "path": "/n", "value": 1}]),
        )
        .await;
    assert_eq!(reply.json()["value"], json!({"n": 3}));
}

/// A and B set one field concurrently; C's explicit write of the shown value settles it.
async fn settled_by(settle: impl Fn(&str, Value) -> W, value_a: Value, value_b: Value) {
    let s = TestServer::start().await;
    let (id, v) = s.create(json!({"value": {"title": "t"}})).await;
    write(&s, &id, "A", &v, &W::Put(json!({"title": value_a}))).await;
    write(&s, &id, "B", &v, &W::Put(json!({"title": value_b}))).await;
    let read = conflicts(&s, &id).await;
    assert_eq!(read["conflicts"].as_array().unwrap().len(), 1, "{read}");
    let shown = read["value"]["title"].clone();
    let version = read["version"].as_str().unwrap().to_owned();
    write(&s, &id, "C", &version, &settle("/title", shown.clone())).await;
    let read = conflicts(&s, &id).await;
    assert_eq!(read["conflicts"], json!([]), "{read}");
    assert_eq!(read["value"]["title"], shown);
}

#[tokio::test]
async fn a_patch_replace_of_the_shown_value_settles_a_conflict() {
    settled_by(
        |path, v| W::Patch(json!([{"op": "replace", "path": path, "value": v}])),
        json!("from A"),
        json!("from B"),
    )
    .await;
}

#[tokio::test]
async fn a_merge_patch_member_settles_a_conflict() {
    settled_by(
        |_, v| W::Merge(json!({"title": v})),
        json!("from A"),
        json!("from B"),
    )
    .await;
}

#[tokio::test]
async fn an_object_valued_conflict_is_settled_too() {
    settled_by(
        |path, v| W::Patch(json!([{"op": "add", "path": path, "value": v}])),
        json!({"by": "A"}),
        json!({"by": "B"}),
    )
    .await;
}

#[tokio::test]
async fn a_websocket_write_settles_a_conflict() {
    let s = TestServer::start().await;
    let (id, v) = s.create(json!({"value": {"title": "t"}})).await;
    write(&s, &id, "A", &v, &W::Put(json!({"title": "from A"}))).await;
    write(&s, &id, "B", &v, &W::Put(json!({"title": "from B"}))).await;
    let shown = conflicts(&s, &id).await["value"]["title"].clone();
    let mut socket = Client::new(s.url(""), "C")
        .connect(id.parse().unwrap())
        .await
        .unwrap();
    let message = json!({"type": "patch", "id": "settle", "ops": [
        {"op": "replace", "path": "/title", "value": shown}
    ]});
    socket.send_text(message.to_string()).await.unwrap();
    loop {
        match socket.recv().await.expect("a frame") {
            Frame::Message(ServerMessage::Ack { .. }) => break,
            Frame::Message(ServerMessage::Error(p)) => panic!("{p:?}"),
            Frame::Message(_) => continue,
            Frame::Close { code, reason } => panic!("closed ({code}): {reason}"),
        }
    }
    assert_eq!(conflicts(&s, &id).await["conflicts"], json!([]));
}

#[tokio::test]
async fn a_move_carries_the_present_value_and_raises_no_dead() {
    let s = TestServer::start().await;
    let abc = json!({"items": [{"name": "a"}, {"name": "b"}, {"name": "c"}]});
    let mv = || W::Patch(json!([{"op": "move", "from": "/items/0", "path": "/items/2"}]));
    let (_, value, _) = case(&s, json!({ "value": abc }), done_on(0), mv()).await;
    assert_eq!(
        value,
        json!({"items": [{"name": "b"}, {"name": "c"}, {"name": "a", "done": true}]})
    );
    let remove = W::Patch(json!([{"op": "remove", "path": "/items/0"}]));
    let (_, value, _) = case(&s, json!({ "value": abc }), remove, mv()).await;
    assert_eq!(value, json!({"items": [{"name": "b"}, {"name": "c"}]}));
    // A PUT that sorts the list: the edited element moves with its edit, the deleted one
    // stays deleted.
    let cba = json!({"items": [{"name": "c"}, {"name": "b"}, {"name": "a"}]});
    let y = W::Patch(json!([
        {"op": "add", "path": "/items/0/done", "value": true},
        {"op": "remove", "path": "/items/1"}
    ]));
    let (_, value, _) = case(&s, json!({ "value": cba }), y, W::Put(abc.clone())).await;
    assert_eq!(
        value,
        json!({"items": [{"name": "a"}, {"name": "c", "done": true}]})
    );
}

#[tokio::test]
async fn deleting_a_parent_of_concurrent_edits_is_surfaced_until_settled() {
    let s = TestServer::start().await;
    for x in [W::Put(json!({"k": 0})), W::Merge(json!({"a": null}))] {
        let (id, value, lost) = case(
            &s,
            json!({"value": {"a": {"x": 1}, "k": 0}}),
            W::Put(json!({"a": {"x": 2}, "k": 0})),
            x,
        )
        .await;
        assert_eq!(value, json!({"k": 0}));
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_eq!(lost[0]["path"], "/a");
        assert_eq!(lost[0]["deleted_by"], json!(["X"]));
        assert_eq!(lost[0]["edited_by"], json!(["Y"]));
        assert_eq!(lost[0]["value"], json!({"x": 2}));
        // Restoring writes it back and closes the record.
        let lost_id = lost[0]["id"].as_str().unwrap();
        let reply = s
            .send(
                s.request(
                    Method::POST,
                    &format!("/v1/docs/{id}/lost/{lost_id}/restore"),
                )
                .header("concord-agent", "R"),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
        assert_eq!(reply.json()["value"], json!({"a": {"x": 2}, "k": 0}));
        assert_eq!(conflicts(&s, &id).await["lost"], json!([]));
        // It is gone: a second restore is a 404 problem.
        let again = s
            .send(s.request(
                Method::POST,
                &format!("/v1/docs/{id}/lost/{lost_id}/restore"),
            ))
            .await;
        assert_eq!(
            again.assert_problem(404)["type"],
            "urn:concord:problem:lost-not-found"
        );
    }

    // Y edits inside what X deleted first: surfaced the same way; dismissing closes it.
    let (id, v) = s
        .create(json!({"value": {"items": [{"id": 1}, {"id": 2}]}}))
        .await;
    write(
        &s,
        &id,
        "X",
        &v,
        &W::Patch(json!([{"op": "remove", "path": "/items/1"}])),
    )
    .await;
    write(&s, &id, "Y", &v, &done_on(1)).await;
    let lost = conflicts(&s, &id).await["lost"].clone();
    assert_eq!(lost[0]["path"], "/items/1", "{lost}");
    assert_eq!(lost[0]["deleted_by"], json!(["X"]));
    assert_eq!(lost[0]["edited_by"], json!(["Y"]));
    assert_eq!(lost[0]["value"], json!({"id": 2, "done": true}));
    let lost_id = lost[0]["id"].as_str().unwrap();
    let reply = s
        .send(s.request(Method::DELETE, &format!("/v1/docs/{id}/lost/{lost_id}")))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(conflicts(&s, &id).await["lost"], json!([]));
    assert_eq!(s.get(&id).await.0, json!({"items": [{"id": 1}]}));
}

#[tokio::test]
async fn lost_edits_survive_a_restart() {
    let mut s = TestServer::start().await;
    let (id, _, lost) = case(
        &s,
        json!({"value": {"a": {"x": 1}}}),
        W::Put(json!({"a": {"x": 2}})),
        W::Put(json!({})),
    )
    .await;
    assert_eq!(lost.len(), 1);
    s.restart().await;
    assert_eq!(conflicts(&s, &id).await["lost"], json!(lost));
}

#[tokio::test]
async fn unknown_patch_members_are_ignored() {
    let s = TestServer::start().await;
    let (id, _) = s.create(json!({"value": {"a": 1}})).await;
    // RFC 6902 appendix A.11.
    let ops = json!([{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}]);
    let reply = s.patch(&id, "p", None, &ops).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
    assert_eq!(reply.json()["value"], json!({"a": 1, "baz": "qux"}));
}
