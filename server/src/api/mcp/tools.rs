//! The MCP tools: each one the HTTP API's operation of the same name, through the same
//! functions (`api::docs`, `api::branches`) and, for writes, the same `WriteCommand`.

use std::future::Future;
use std::sync::Arc;

use axum::http::{request::Parts, StatusCode};
use concord_core::patch::{parse_patch, PatchOp};
use concord_core::pointer::Pointer;
use concord_core::WriteMeta;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolRequestParams, CallToolResponse, CallToolResult};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::super::answer::{written_body, DOC_RESPONSE};
use super::super::branches::{acquire_lease, default_ttl, fork_doc, read_fork, LockBody};
use super::super::docs::{history_of, read_doc, CreateBody, NewDocument};
use super::super::list::list_docs;
use super::super::{agent, doc_id, now_ms, parse_version};
use crate::auth::Caller;
use crate::idempotency::Keyed;
use crate::policy::{parse_base, IfMatch};
use crate::problem::{in_fields, ApiError, Fields};
use crate::registry::{Answer, Edit, IdempotencyDraft, Responder, WriteCommand, Written};
use crate::AppState;

/// What the tools call the fields HTTP carries in headers, for the refusals that name them.
const FIELDS: Fields = Fields {
    base: "base_version",
    lock: "lock_token",
    lease: "call lock_document",
};

/// The tools, over the server's state. Cloned for every request (the router is built once).
#[derive(Clone)]
pub(crate) struct Tools {
    state: Arc<AppState>,
    tool_router: ToolRouter<Tools>,
}

/// A lease token: the string `lock_document` answers, or the number in it.
#[derive(Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
enum LockToken {
    Number(u64),
    Text(String),
}

impl LockToken {
    fn parse(&self) -> Result<u64, ApiError> {
        match self {
            LockToken::Number(n) => Ok(*n),
            LockToken::Text(text) => text.trim().parse().map_err(|_| {
                ApiError::bad_request(
                    "invalid-lock-token",
                    "lock_token must be the token lock_document returned (a number)",
                )
            }),
        }
    }
}

#[derive(Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CreateArgs {
    /// The new document's id (a UUID); default: a new one.
    id: Option<String>,
    /// Its first value, a JSON object; default `{}`.
    value: Option<Value>,
    /// How writes are admitted: crdt (default: merged at the writer's version), lww,
    /// optimistic, lock, queue or branches.
    strategy: Option<String>,
    /// JSON Pointer patterns (`*` matches one token) of strings that are collaborative text.
    #[serde(default)]
    text: Vec<String>,
    /// Patterns of numbers that are counters (concurrent increments add up).
    #[serde(default)]
    counters: Vec<String>,
    /// Patterns naming the identity key of list elements, e.g. `/tasks/*/id`.
    #[serde(default)]
    ids: Vec<String>,
    /// Reuse it when you retry this call: a retry with the same key applies once.
    idempotency_key: Option<String>,
}

#[derive(Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct DocArgs {
    /// The document's id (a UUID).
    id: String,
}

#[derive(Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ReadArgs {
    /// The document's id (a UUID).
    id: String,
    /// A JSON Pointer (RFC 6901, e.g. `/tasks/0/title`): read only that subtree.
    path: Option<String>,
    /// An earlier version to read the value at, instead of the present.
    at: Option<String>,
    /// Also list every place holding concurrent values (each with its agent) and the
    /// open lost edits.
    #[serde(default)]
    conflicts: bool,
}

#[derive(Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WriteArgs {
    /// The document's id (a UUID).
    id: String,
    /// The version you read (from read_document), or `*` for the current one.
    base_version: String,
    /// The whole new value (a JSON object): your edit is its difference from base_version.
    value: Value,
    /// The lease token, for a document with the lock strategy.
    lock_token: Option<LockToken>,
    /// Reuse it when you retry this call: a retry with the same key applies once.
    idempotency_key: Option<String>,
}

#[derive(Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PatchArgs {
    /// The document's id (a UUID).
    id: String,
    /// The version you read: paths and indexes mean what they meant then. Omit it only
    /// for intents on a queue document.
    base_version: Option<String>,
    /// JSON Patch operations (RFC 6902: add, remove, replace, move, copy, test), plus
    /// `{"op":"increment","path","value"}` and `{"op":"splice","path","pos","del","insert"}`.
    patch: Value,
    /// The lease token, for a document with the lock strategy.
    lock_token: Option<LockToken>,
    /// Reuse it when you retry this call: a retry with the same key applies once.
    idempotency_key: Option<String>,
}

#[derive(Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SettleArgs {
    /// The document's id (a UUID).
    id: String,
    /// The JSON Pointer of the conflict, as list_conflicts names it.
    path: String,
    /// The value to keep there: one of the conflicting values, or a new one.
    value: Value,
    /// The version you read; default: the current one.
    base_version: Option<String>,
    /// The lease token, for a document with the lock strategy.
    lock_token: Option<LockToken>,
    /// Reuse it when you retry this call: a retry with the same key applies once.
    idempotency_key: Option<String>,
}

/// What to do with a lost edit.
#[derive(Deserialize, Serialize, JsonSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum LostAction {
    /// Write its value back where it was.
    Restore,
    /// Close its record, leaving the value deleted.
    Dismiss,
}

#[derive(Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LostArgs {
    /// The document's id (a UUID).
    id: String,
    /// The lost edit's id, as list_conflicts names it under `lost`.
    lost: String,
    /// restore or dismiss.
    action: LostAction,
    /// Reuse it when you retry this call: a retry with the same key applies once.
    idempotency_key: Option<String>,
}

#[derive(Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ForkArgs {
    /// The id of the document to fork (its strategy must be branches).
    id: String,
    /// Reuse it when you retry this call: a retry with the same key applies once.
    idempotency_key: Option<String>,
}

#[derive(Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MergeArgs {
    /// The id of the document to merge into.
    id: String,
    /// The id of the fork to merge (from fork_document).
    fork: String,
    /// Reuse it when you retry this call: a retry with the same key applies once.
    idempotency_key: Option<String>,
}

#[derive(Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LockArgs {
    /// The id of a document with the lock strategy.
    id: String,
    /// How long the lease lasts, in ms (default 10000, at most 600000).
    ttl_ms: Option<u64>,
    /// How long to wait for a held lock, in ms (default 0: answer at once; at most 60000).
    wait_ms: Option<u64>,
}

#[derive(Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ReleaseArgs {
    /// The id of the locked document.
    id: String,
    /// The token lock_document returned.
    lock_token: LockToken,
}

/// Who calls, from the HTTP request the SDK hands each call: the caller that
/// [`crate::auth::guard`] put there, and the agent every write is recorded under (the
/// token's, which the guard wrote into `Concord-Agent`; else that header, else `anonymous`).
struct Who {
    caller: Caller,
    agent: String,
}

fn who(ctx: &RequestContext<RoleServer>) -> Result<Who, ApiError> {
    let parts = ctx
        .extensions
        .get::<Parts>()
        .ok_or_else(|| ApiError::internal("an MCP call without its HTTP request"))?;
    let caller = parts
        .extensions
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| ApiError::internal("an MCP call that auth::guard did not pass"))?;
    Ok(Who {
        caller,
        agent: agent(&parts.headers)?,
    })
}

impl Who {
    fn meta(&self, now: i64) -> WriteMeta {
        WriteMeta {
            agent: self.agent.clone(),
            time_ms: now,
            message: None,
        }
    }

    fn may_read(&self, doc: Uuid) -> Result<(), ApiError> {
        if self.caller.can_read(doc) {
            return Ok(());
        }
        Err(self.caller.forbidden(&format!("read document {doc}")))
    }

    fn may_write(&self, doc: Uuid) -> Result<(), ApiError> {
        if self.caller.can_write(doc) {
            return Ok(());
        }
        Err(self.caller.forbidden(&format!(
            "write document {doc} (it may only read what its scopes name)"
        )))
    }

    fn may_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.caller.is_admin() {
            return Ok(());
        }
        Err(self
            .caller
            .forbidden(&format!("{what} (it needs the admin scope)")))
    }
}

/// A tool's problem as its result: `isError`, the problem+json of the HTTP API, and the
/// current version when the refusal names it.
fn problem(e: &ApiError) -> CallToolResult {
    let mut body: Value = serde_json::from_slice(&e.body()).unwrap_or_else(|_| json!({}));
    if let Some(version) = e.current_version() {
        body["version"] = json!(version);
    }
    CallToolResult::structured_error(body)
}

fn answer<T: serde::Serialize>(result: Result<T, ApiError>) -> CallToolResult {
    match result.and_then(|value| serde_json::to_value(value).map_err(ApiError::internal)) {
        Ok(value) => CallToolResult::structured(value),
        Err(e) => problem(&e),
    }
}

/// A version argument: bare heads (as `version` in results), or `*` where a base may be
/// the current version.
fn base(raw: Option<&str>) -> Result<Option<IfMatch>, ApiError> {
    raw.map(parse_base).transpose()
}

/// The idempotency key of a tool call: the client's key, scoped to the agent and to MCP.
fn scoped_key(agent: &str, key: &str) -> Result<String, ApiError> {
    if key.is_empty() || key.chars().count() > 255 {
        return Err(ApiError::bad_request(
            "invalid-idempotency-key",
            "idempotency_key must be 1 to 255 characters",
        ));
    }
    let mut hash = Sha256::new();
    hash.update(agent);
    hash.update(b"\n");
    hash.update(key);
    Ok(format!("mcp:{}", hex::encode(hash.finalize())))
}

/// What makes two calls with one key "the same call": the tool and its other arguments.
fn fingerprint(tool: &str, args: &Value) -> String {
    let mut args = args.clone();
    if let Some(map) = args.as_object_mut() {
        map.remove("idempotency_key");
    }
    let mut hash = Sha256::new();
    hash.update(tool);
    hash.update(b"\n");
    hash.update(args.to_string());
    hex::encode(hash.finalize())
}

/// One write tool's call, once: `run` makes the write (with what its idempotency record
/// must hold, if the call has a key); a retry with the key is answered the recorded result.
async fn once<F, Fut>(
    state: &AppState,
    who: &Who,
    (tool, args, key): (&str, &Value, Option<&str>),
    status: StatusCode,
    now: i64,
    run: F,
) -> Result<Value, ApiError>
where
    F: FnOnce(Option<(IdempotencyDraft, Responder)>) -> Fut,
    Fut: Future<Output = Result<Written, ApiError>>,
{
    let Some(key) = key else {
        return Ok(replayed(written_body(&run(None).await?), false));
    };
    let key = scoped_key(&who.agent, key)?;
    let store = state.registry.store().as_ref();
    match state
        .idempotency
        .begin_keyed(store, key, fingerprint(tool, args), status, now)
        .await?
    {
        Keyed::Replay(record) => serde_json::from_slice(&record.body)
            .map(|body| replayed(body, true))
            .map_err(ApiError::internal),
        Keyed::Record(in_flight, draft) => {
            let written = run(Some((draft, DOC_RESPONSE))).await;
            drop(in_flight);
            Ok(replayed(written_body(&written?), false))
        }
    }
}

fn replayed(mut body: Value, replayed: bool) -> Value {
    body["replayed"] = json!(replayed);
    body
}

/// The arguments of a call as JSON, for its fingerprint.
fn as_json<T: Serialize>(args: &T) -> Value {
    serde_json::to_value(args).unwrap_or(Value::Null)
}

/// A write through the one write path: the `WriteCommand` HTTP `PUT`/`PATCH` build, run
/// by `Registry::execute`.
struct Write<'a> {
    doc: Uuid,
    if_match: Option<IfMatch>,
    lock: Option<u64>,
    edit: Edit<'a>,
}

impl Tools {
    async fn execute(
        &self,
        who: &Who,
        call: (&str, &Value, Option<&str>),
        write: Write<'_>,
    ) -> Result<Value, ApiError> {
        who.may_write(write.doc)?;
        let now = now_ms();
        let meta = who.meta(now);
        let Write {
            doc,
            if_match,
            lock,
            edit,
        } = write;
        let registry = &self.state.registry;
        once(
            &self.state,
            who,
            call,
            StatusCode::OK,
            now,
            |idempotency| async {
                registry
                    .execute(WriteCommand {
                        doc,
                        meta: &meta,
                        if_match: if_match.as_ref(),
                        lock,
                        edit,
                        idempotency,
                        answer: Answer::Whole,
                    })
                    .await
                    .map_err(|e| in_fields(e, &FIELDS))
            },
        )
        .await
    }
}

#[tool_router]
impl Tools {
    pub(crate) fn new(state: Arc<AppState>) -> Tools {
        Tools {
            state,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "List every document with its id, strategy and current version; read one with read_document before you write it.",
        annotations(read_only_hint = true)
    )]
    async fn list_documents(&self, ctx: RequestContext<RoleServer>) -> CallToolResult {
        answer(
            async {
                who(&ctx)?.may_admin("list documents")?;
                list_docs(&self.state).await
            }
            .await,
        )
    }

    #[tool(
        description = "Create a document (a JSON object) and get its id and first version, which is the base_version of your first write."
    )]
    async fn create_document(
        &self,
        Parameters(args): Parameters<CreateArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        answer(
            async {
                let who = who(&ctx)?;
                who.may_admin("create documents")?;
                let now = now_ms();
                let meta = who.meta(now);
                let fingerprint = as_json(&args);
                let key = args.idempotency_key.clone();
                let new = NewDocument::from_request(
                    CreateBody {
                        id: args.id.as_deref().map(doc_id).transpose()?,
                        value: args.value,
                        strategy: args.strategy,
                        text: args.text,
                        counters: args.counters,
                        ids: args.ids,
                    },
                    now,
                )?;
                let call = ("create_document", &fingerprint, key.as_deref());
                once(&self.state, &who, call, StatusCode::CREATED, now, |idem| {
                    new.create(&self.state, &meta, idem)
                })
                .await
            }
            .await,
        )
    }

    #[tool(
        description = "Read a document's value and its version; keep the version and pass it as base_version when you write, so that what others wrote meanwhile is merged, never overwritten.",
        annotations(read_only_hint = true)
    )]
    async fn read_document(
        &self,
        Parameters(args): Parameters<ReadArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        answer(
            async {
                let id = doc_id(&args.id)?;
                who(&ctx)?.may_read(id)?;
                let at = args.at.as_deref().map(parse_version).transpose()?;
                let pointer = args.path.as_deref().map(Pointer::parse).transpose()?;
                let (body, _) = read_doc(&self.state, id, at, pointer, args.conflicts).await?;
                Ok(body)
            }
            .await,
        )
    }

    #[tool(
        description = "Write a whole new value as of base_version, the version you read: only what you changed since then is applied and merged into the present, so others' edits are kept; the result has the new version."
    )]
    async fn write_document(
        &self,
        Parameters(args): Parameters<WriteArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        answer(
            async {
                let who = who(&ctx)?;
                let write = Write {
                    doc: doc_id(&args.id)?,
                    if_match: base(Some(&args.base_version))?,
                    lock: args.lock_token.as_ref().map(LockToken::parse).transpose()?,
                    edit: Edit::Put(&args.value),
                };
                let fingerprint = as_json(&args);
                let call = (
                    "write_document",
                    &fingerprint,
                    args.idempotency_key.as_deref(),
                );
                self.execute(&who, call, write).await
            }
            .await,
        )
    }

    #[tool(
        description = "Apply JSON Patch operations as of base_version, the version you read: paths and list indexes mean what they meant then, the edit is merged into the present, and the result has the new version."
    )]
    async fn patch_document(
        &self,
        Parameters(args): Parameters<PatchArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        answer(
            async {
                let who = who(&ctx)?;
                let ops: Vec<PatchOp> = parse_patch(&args.patch)?;
                let write = Write {
                    doc: doc_id(&args.id)?,
                    if_match: base(args.base_version.as_deref())?,
                    lock: args.lock_token.as_ref().map(LockToken::parse).transpose()?,
                    edit: Edit::Patch(&ops),
                };
                let fingerprint = as_json(&args);
                let call = (
                    "patch_document",
                    &fingerprint,
                    args.idempotency_key.as_deref(),
                );
                self.execute(&who, call, write).await
            }
            .await,
        )
    }

    #[tool(
        description = "List a document's changes in the order the server received them (hash; agent and time: who sent each and when, as the server recorded it; claimed_agent and claimed_time: what the change itself says; dependencies) and its current version, to see who wrote what since the version you read.",
        annotations(read_only_hint = true)
    )]
    async fn document_history(
        &self,
        Parameters(args): Parameters<DocArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        answer(
            async {
                let id = doc_id(&args.id)?;
                who(&ctx)?.may_read(id)?;
                history_of(&self.state, id).await
            }
            .await,
        )
    }

    #[tool(
        description = "List the places where concurrent writes left several values (each with its agent) and the lost edits, with the current version; settle them with settle_conflict and settle_lost_edit.",
        annotations(read_only_hint = true)
    )]
    async fn list_conflicts(
        &self,
        Parameters(args): Parameters<DocArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        answer(
            async {
                let id = doc_id(&args.id)?;
                who(&ctx)?.may_read(id)?;
                let (body, _) = read_doc(&self.state, id, None, None, true).await?;
                Ok(json!({
                    "id": id,
                    "version": body.version,
                    "conflicts": body.conflicts,
                    "lost": body.lost,
                }))
            }
            .await,
        )
    }

    #[tool(
        description = "Settle a conflict by writing the value to keep at its path (a JSON Patch replace, as of base_version or the current version), which replaces every concurrent value there; the result has the new version."
    )]
    async fn settle_conflict(
        &self,
        Parameters(args): Parameters<SettleArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        answer(
            async {
                let who = who(&ctx)?;
                let ops = parse_patch(&json!([
                    {"op": "replace", "path": args.path, "value": args.value}
                ]))?;
                let write = Write {
                    doc: doc_id(&args.id)?,
                    if_match: base(Some(args.base_version.as_deref().unwrap_or("*")))?,
                    lock: args.lock_token.as_ref().map(LockToken::parse).transpose()?,
                    edit: Edit::Patch(&ops),
                };
                let fingerprint = as_json(&args);
                let call = (
                    "settle_conflict",
                    &fingerprint,
                    args.idempotency_key.as_deref(),
                );
                self.execute(&who, call, write).await
            }
            .await,
        )
    }

    #[tool(
        description = "Restore a lost edit (an edit hidden by a concurrent delete) where it was, or dismiss its record; the result has the new version."
    )]
    async fn settle_lost_edit(
        &self,
        Parameters(args): Parameters<LostArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        answer(
            async {
                let who = who(&ctx)?;
                let write = Write {
                    doc: doc_id(&args.id)?,
                    if_match: None,
                    lock: None,
                    edit: match args.action {
                        LostAction::Restore => Edit::RestoreLost(&args.lost),
                        LostAction::Dismiss => Edit::DismissLost(&args.lost),
                    },
                };
                let fingerprint = as_json(&args);
                let call = (
                    "settle_lost_edit",
                    &fingerprint,
                    args.idempotency_key.as_deref(),
                );
                self.execute(&who, call, write).await
            }
            .await,
        )
    }

    #[tool(
        description = "Fork a branches document into an isolated copy that only you edit (read it for its version, write it, then merge_fork it back)."
    )]
    async fn fork_document(
        &self,
        Parameters(args): Parameters<ForkArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        answer(
            async {
                let who = who(&ctx)?;
                let parent = doc_id(&args.id)?;
                if !who.caller.can_fork(parent) {
                    return Err(who.caller.forbidden(&format!(
                        "fork document {parent}: a fork is a new document, which needs write:* (and write on the original)"
                    )));
                }
                let now = now_ms();
                let meta = who.meta(now);
                let fingerprint = as_json(&args);
                let call = ("fork_document", &fingerprint, args.idempotency_key.as_deref());
                once(&self.state, &who, call, StatusCode::CREATED, now, |idem| {
                    fork_doc(&self.state, parent, &meta, idem)
                })
                .await
            }
            .await,
        )
    }

    #[tool(
        description = "Merge a fork's changes back into the document it was forked from; nothing either side wrote is lost, and the result has the new version."
    )]
    async fn merge_fork(
        &self,
        Parameters(args): Parameters<MergeArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        answer(
            async {
                let who = who(&ctx)?;
                let target = doc_id(&args.id)?;
                let fork_id = doc_id(&args.fork)?;
                who.may_write(target)?;
                who.may_read(fork_id)?;
                let (fork, receipts) = read_fork(&self.state, target, fork_id).await?;
                let write = Write {
                    doc: target,
                    if_match: None,
                    lock: None,
                    edit: Edit::MergeFork {
                        fork: &fork,
                        receipts: &receipts,
                        id: fork_id,
                    },
                };
                let fingerprint = as_json(&args);
                let call = ("merge_fork", &fingerprint, args.idempotency_key.as_deref());
                self.execute(&who, call, write).await
            }
            .await,
        )
    }

    #[tool(
        description = "Take the lease of a lock-strategy document: read it after you hold the lease and pass the token as lock_token with each write until release_lock."
    )]
    async fn lock_document(
        &self,
        Parameters(args): Parameters<LockArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        answer(
            async {
                let who = who(&ctx)?;
                let id = doc_id(&args.id)?;
                who.may_write(id)?;
                let request = LockBody {
                    ttl_ms: args.ttl_ms.unwrap_or_else(default_ttl),
                    wait_ms: args.wait_ms.unwrap_or(0),
                };
                acquire_lease(&self.state, id, &who.agent, request).await
            }
            .await,
        )
    }

    #[tool(
        description = "Release the lease lock_document gave you, so that others may write the document."
    )]
    async fn release_lock(
        &self,
        Parameters(args): Parameters<ReleaseArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        answer(
            async {
                let who = who(&ctx)?;
                let id = doc_id(&args.id)?;
                who.may_write(id)?;
                let token = args.lock_token.parse()?;
                self.state
                    .registry
                    .release_lease(id, token, &who.agent)
                    .await?;
                Ok(json!({"id": id, "released": true}))
            }
            .await,
        )
    }
}

#[tool_handler(
    router = self.tool_router,
    name = "concord",
    instructions = "Concord stores JSON documents that several agents edit at once. Read a document (read_document) to get its value and version; write with that version as base_version (write_document, patch_document): your edit is merged into the present, so nothing anyone wrote meanwhile is lost. Pass an idempotency_key with each write and reuse it when you retry."
)]
impl ServerHandler for Tools {
    /// The router's call, with arguments that do not fit a tool's input schema answered
    /// as a problem like every other (the SDK answers them as bare text).
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let tool = request.name.to_string();
        let call = ToolCallContext::new(self, request, context);
        // An unknown tool is an error above (`?`), so only tools that exist become labels.
        let response = self.tool_router.call(call).await?;
        let outcome = match &response {
            CallToolResponse::Complete(result) if result.is_error == Some(true) => "error",
            _ => "ok",
        };
        metrics::counter!(crate::metrics::MCP_TOOL_CALLS, "tool" => tool, "outcome" => outcome)
            .increment(1);
        match response {
            CallToolResponse::Complete(result)
                if result.is_error == Some(true) && result.structured_content.is_none() =>
            {
                let text = result
                    .content
                    .iter()
                    .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                    .collect::<Vec<_>>()
                    .join(" ");
                let e = ApiError::bad_request("invalid-arguments", text);
                Ok(problem(&e).into())
            }
            other => Ok(other),
        }
    }
}
