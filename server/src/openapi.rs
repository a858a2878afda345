//! The OpenAPI 3.1 description of the HTTP API, served at `/openapi.json`.
//!
//! Each handler carries its own `#[utoipa::path]` (method, path, parameters, bodies,
//! statuses), and the router registers handlers through utoipa-axum's `routes!`, which
//! reads the method and path from that annotation: a route cannot be served without being
//! described, nor described at an address it is not served at. Request and answer bodies are
//! the handlers' own types (`ToSchema`). This module holds what every operation shares: the
//! document's header, the headers of writes, the problem+json answer every operation may
//! give (added to each operation by [`Problems`]) and the bearer scheme.

use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoParams, Modify, PartialSchema, ToSchema};

use crate::problem::Problem;

/// The description's own header: title, summary and tags; [`finish`] adds the shared parts.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Concord",
        description = "A CRDT document store for agents that share documents. Read a \
                       document and its version (`ETag`); write back a value, a JSON Patch or \
                       raw Automerge changes as of the version you read (`If-Match`), and the \
                       server merges your edit into the present instead of overwriting \
                       whatever was written since. Every error is RFC 9457 problem+json.",
        license(name = "MIT"),
    ),
    tags(
        (name = "documents", description = "Create, read, write and delete documents; history, \
                                             conflicts, lost edits and raw changes."),
        (name = "branches", description = "Leases of lock documents, forks and merges."),
        (name = "live", description = "Live changes: WebSocket, Server-Sent Events, Automerge \
                                        sync and the automerge-repo protocol."),
        (name = "service", description = "Health, this description, metrics."),
        (name = "viewer", description = "The browser viewer's page and files."),
        (name = "mcp", description = "The documents as tools for LLM agents (Model Context Protocol)."),
        (name = "compare", description = "The comparison of write strategies the viewer runs."),
    ),
)]
pub struct ApiDoc;

/// The headers of every write: who writes, and the key that makes a retry safe.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // A description of headers the handlers read from the request.
pub(crate) struct WriteHeaders {
    /// A client's key for the request: a retry with the same key and body gets the first
    /// answer again instead of being applied twice.
    #[param(rename = "Idempotency-Key", min_length = 1, max_length = 255)]
    idempotency_key: Option<String>,
    /// Who writes, recorded in history (with auth on, the token decides instead).
    #[param(
        rename = "Concord-Agent",
        min_length = 1,
        max_length = 128,
        pattern = "^[!-~]([ -~]*[!-~])?$"
    )]
    concord_agent: Option<String>,
    /// RFC 7240 preferences. `return=minimal` answers without the document's value (the
    /// version, strategy and `new_changes` only, with `Preference-Applied: return=minimal`):
    /// cheaper for a large document. Other preferences are ignored.
    #[param(rename = "Prefer")]
    prefer: Option<String>,
}

/// The headers of a write that names the version it was made from and its lease, besides
/// [`WriteHeaders`].
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // A description of headers the handlers read from the request.
pub(crate) struct BaseHeaders {
    /// The version the edit was made against, as a strong entity tag (`"<version>"`, the
    /// `ETag` of the read): the server merges the edit into the present as of that version.
    /// Required by the `optimistic` strategy; a list or `*` is accepted (RFC 9110).
    #[param(
        rename = "If-Match",
        pattern = "^(\\*|\"[0-9a-fA-F]{64}(\\.[0-9a-fA-F]{64})*\")$"
    )]
    if_match: Option<String>,
    /// The lease token (`POST /v1/docs/{id}/lock`) of a lock document's holder.
    #[param(rename = "Concord-Lock", pattern = "^[0-9]{1,18}$")]
    concord_lock: Option<String>,
}

/// The document named in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // A description of the path parameter the handlers parse.
pub(crate) struct DocPath {
    /// The document's id, a UUID.
    #[param(format = Uuid)]
    id: String,
}

/// A JSON Pointer pattern of a document's schema (RFC 6901; `*` stands for any key or index).
#[derive(ToSchema)]
#[schema(pattern = "^(/([^~/]|~[01])*)*$", example = "/notes/*/body")]
#[allow(dead_code)] // A description of the strings `concord_core::Schema` parses.
pub(crate) struct PointerPattern(String);

/// An `ids` pattern: a list's pointer pattern, then `/*/` and the key naming its elements.
#[derive(ToSchema)]
#[schema(
    pattern = "^(/([^~/]|~[01])*)*/\\*/([^~/]|~[01])*$",
    example = "/tasks/*/id"
)]
#[allow(dead_code)] // A description of the strings `concord_core::Schema` parses.
pub(crate) struct IdsPattern(String);

/// Adds to every operation the problem+json answer any request may get (a malformed
/// request, a missing or weak token, a refused precondition, a limit, a full server), as
/// the `default` response; answers an operation names itself keep their own description.
struct Problems;

impl Modify for Problems {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.schemas.insert(
            <Problem<'static> as ToSchema>::name().into_owned(),
            <Problem<'static> as PartialSchema>::schema(),
        );
        let problem = || {
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(
                    <Problem<'static> as ToSchema>::name(),
                )))
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                add_problem(operation, &problem);
                not_null(operation);
            }
        }
    }
}

fn add_problem(operation: &mut Operation, problem: &dyn Fn() -> utoipa::openapi::Content) {
    let responses = &mut operation.responses.responses;
    // Statuses an operation names for an error get the problem body too.
    for (status, response) in responses.iter_mut() {
        if status.starts_with('4') || status.starts_with('5') {
            if let RefOr::T(response) = response {
                response
                    .content
                    .entry(crate::problem::PROBLEM_JSON.into())
                    .or_insert_with(|| RefOr::T(problem()));
            }
        }
    }
    responses.entry("default".into()).or_insert_with(|| {
        RefOr::T(
            ResponseBuilder::new()
                .description(
                    "An error, as RFC 9457 problem details: `type` (`urn:concord:problem:<kind>`) \
                     says which, `detail` says why.",
                )
                .content(crate::problem::PROBLEM_JSON, problem())
                .build(),
        )
    });
}

/// A query or header parameter is there or not; HTTP has no null for it. An optional field
/// (`Option<String>`) is described as absent-or-string, not as nullable.
fn not_null(operation: &mut Operation) {
    for parameter in operation.parameters.iter_mut().flatten() {
        let RefOr::T(parameter) = parameter else {
            continue;
        };
        if let Some(RefOr::T(Schema::Object(object))) = &mut parameter.schema {
            if let SchemaType::Array(types) = &object.schema_type {
                let kept: Vec<Type> = types
                    .iter()
                    .filter(|t| **t != Type::Null)
                    .cloned()
                    .collect();
                if let [only] = kept.as_slice() {
                    object.schema_type = SchemaType::Type(only.clone());
                }
            }
        }
    }
}

/// Bearer tokens (`--auth FILE`), in `Authorization` or, for streams a browser opens,
/// `?access_token=`; with auth off no token is needed.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from the server's token file (`--auth FILE`); its scopes \
                         decide what it may do. Not needed when the server runs without auth.",
                    ))
                    .build(),
            ),
        );
        openapi.security = Some(vec![
            utoipa::openapi::security::SecurityRequirement::default(),
            utoipa::openapi::security::SecurityRequirement::new::<_, _, &str>("bearer", []),
        ]);
    }
}

/// The finished description: the API's operations as the router registered them, with
/// what [`ApiDoc`] adds. `Modify` runs again here, after the routes are in.
pub(crate) fn finish(mut openapi: OpenApi) -> OpenApi {
    Problems.modify(&mut openapi);
    Bearer.modify(&mut openapi);
    openapi
}
