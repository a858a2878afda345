//! The viewer's comparison endpoints:
//! - `POST /v1/compare`: a run, answered as Server-Sent Events (`progress`, then `result`
//!   with the report, or `error` with a problem);
//! - `POST /v1/compare/sweep`: a small sweep, the same way;
//! - `GET /v1/compare/scenario`: the lesson's timeline per strategy, as JSON.
//!
//! Every run happens against a separate in-process server on a temporary data folder, never
//! against the documents of the server answering; it stops when the browser goes away.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use concord_core::Strategy;
use concord_server::api::json_body;
use concord_server::problem::{problem_body, ApiError};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::scenario::{seed_scenario, ScenarioReport};
use super::sweep::{sweep, SweepLimits, SweepOptions};
use super::{run, CompareError, Limits, LocalServer, Options, Progress, ProgressFn, ThinkRange};

/// The routes of these endpoints, for [`concord_server::Config::extra_routes`]: the server
/// puts them under its own authentication (admin scope), limits and problem+json errors.
pub fn routes() -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(compare))
        .routes(routes!(compare_sweep))
        .routes(routes!(compare_scenario))
}

/// Comparisons running at once; more wait their turn (each runs a server of its own, and
/// two cores share the work).
static SLOTS: Semaphore = Semaphore::const_new(2);

/// The body of `POST /v1/compare`; every field optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompareBody {
    workload: Option<String>,
    agents: Option<u32>,
    writes: Option<u32>,
    think_ms: Option<[u64; 2]>,
    seed: Option<u64>,
    strategies: Option<Vec<String>>,
}

/// The body of `POST /v1/compare/sweep`; every field optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SweepBody {
    workload: Option<String>,
    writes: Option<u32>,
    seed: Option<u64>,
    strategies: Option<Vec<String>>,
    agents: Option<Vec<u32>>,
    think_ms: Option<Vec<[u64; 2]>>,
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-options", detail)
}

impl From<CompareError> for ApiError {
    fn from(e: CompareError) -> Self {
        let (status, kind) = status_of(&e);
        ApiError::new(status, kind, e.to_string())
    }
}

fn status_of(e: &CompareError) -> (StatusCode, &'static str) {
    match e {
        CompareError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-options"),
        CompareError::Start(_) | CompareError::Io { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "compare-unavailable")
        }
        CompareError::Server(_) => (StatusCode::BAD_GATEWAY, "compare-failed"),
    }
}

/// Parses an optional JSON body: empty means every default.
fn parse_body<T: Default + for<'de> Deserialize<'de>>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let value = json_body(headers, body, &["application/json"])?;
    serde_json::from_value(value).map_err(|e| invalid(format!("invalid options: {e}")))
}

fn strategies(names: Option<Vec<String>>) -> Result<Vec<Strategy>, ApiError> {
    match names {
        None => Ok(Strategy::ALL.to_vec()),
        Some(names) => names
            .iter()
            .map(|n| n.parse::<Strategy>().map_err(|e| invalid(e.to_string())))
            .collect(),
    }
}

fn workload(name: Option<String>) -> Result<super::Workload, ApiError> {
    name.map_or(Ok(super::Workload::default()), |n| {
        n.parse().map_err(invalid)
    })
}

fn think([min, max]: [u64; 2]) -> ThinkRange {
    ThinkRange { min, max }
}

fn compare_options(body: CompareBody) -> Result<Options, ApiError> {
    let defaults = Options::default();
    let opts = Options {
        workload: workload(body.workload)?,
        agents: body.agents.unwrap_or(defaults.agents),
        writes: body.writes.unwrap_or(defaults.writes),
        think: body.think_ms.map_or(defaults.think, think),
        seed: body.seed.unwrap_or(defaults.seed),
        strategies: strategies(body.strategies)?,
        lockstep: false,
    };
    opts.validate(Limits::BROWSER)?;
    Ok(opts)
}

fn sweep_options(body: SweepBody) -> Result<SweepOptions, ApiError> {
    let defaults = SweepOptions::default();
    let opts = SweepOptions {
        base: Options {
            workload: workload(body.workload)?,
            writes: body.writes.unwrap_or(defaults.base.writes),
            seed: body.seed.unwrap_or(defaults.base.seed),
            strategies: strategies(body.strategies)?,
            ..defaults.base
        },
        agents: body.agents.unwrap_or(defaults.agents),
        think: body
            .think_ms
            .map_or(defaults.think, |t| t.into_iter().map(think).collect()),
    };
    opts.validate(SweepLimits::BROWSER)?;
    Ok(opts)
}

/// `POST /v1/compare`.
#[utoipa::path(post, path = "/v1/compare", tag = "compare",
    description = "Runs one workload through each write strategy against a separate in-process \
                   server, and reports what each lost and what each cost.",
    request_body(content = Option<CompareBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "Server-Sent Events: `progress`, then `result` (the report) or `error` (a problem).",
            content_type = "text/event-stream", body = String),
        (status = 422, description = "Invalid options."),
    ))]
pub(crate) async fn compare(
    headers: HeaderMap,
    body: Bytes,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let opts = compare_options(parse_body(&headers, &body)?)?;
    let first = Progress {
        strategy: opts.strategies[0],
        done: 0,
        total: opts.total_writes(),
    };
    Ok(stream(first, move |url, progress| async move {
        run::compare(&url, &opts, progress).await
    }))
}

/// `POST /v1/compare/sweep`.
#[utoipa::path(post, path = "/v1/compare/sweep", tag = "compare",
    description = "A small sweep of comparisons over agent counts and think times.",
    request_body(content = Option<SweepBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "Server-Sent Events: `progress`, then `result` (the sweep) or `error` (a problem).",
            content_type = "text/event-stream", body = String),
        (status = 422, description = "Invalid options."),
    ))]
pub(crate) async fn compare_sweep(
    headers: HeaderMap,
    body: Bytes,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let opts = sweep_options(parse_body(&headers, &body)?)?;
    let first = Progress {
        strategy: opts.base.strategies[0],
        done: 0,
        total: opts.points().iter().map(Options::total_writes).sum(),
    };
    Ok(stream(first, move |url, progress| async move {
        sweep(&url, &opts, progress).await
    }))
}

/// `GET /v1/compare/scenario`.
#[utoipa::path(get, path = "/v1/compare/scenario", tag = "compare",
    description = "The lost-update timeline (two agents read, both write) per strategy.",
    responses((status = 200, description = "What each strategy kept and lost.", body = Object)))]
pub(crate) async fn compare_scenario() -> Result<Json<ScenarioReport>, ApiError> {
    let _slot = SLOTS.acquire().await.map_err(ApiError::internal)?;
    let local = LocalServer::start().await?;
    let report = seed_scenario(local.url()).await;
    local.stop().await;
    Ok(Json(report?))
}

fn event<T: Serialize>(name: &str, data: &T) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(data).expect("events serialize"))
}

fn error_event(e: &CompareError) -> Event {
    let (status, kind) = status_of(e);
    let body = problem_body(status, kind, &e.to_string());
    Event::default()
        .event("error")
        .data(String::from_utf8(body).expect("problem JSON is UTF-8"))
}

/// Runs `job` against a fresh local server and streams `progress` events (the first one at
/// once), then one `result` or `error` event. When the browser goes away the job is
/// dropped, which stops its agents and its server.
fn stream<F, Fut, T>(first: Progress, job: F) -> Sse<impl Stream<Item = Result<Event, Infallible>>>
where
    F: FnOnce(String, ProgressFn) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, CompareError>> + Send,
    T: Serialize + Send,
{
    let (tx, rx) = mpsc::channel::<Event>(16);
    tokio::spawn(async move {
        if tx.send(event("progress", &first)).await.is_err() {
            return;
        }
        let (progress_tx, mut progress_rx) = watch::channel(first);
        let progress: ProgressFn = Arc::new(move |p| {
            progress_tx.send_replace(p);
        });
        let work = async move {
            let _slot = SLOTS
                .acquire()
                .await
                .map_err(|e| CompareError::Server(e.to_string()))?;
            let local = LocalServer::start().await?;
            let result = job(local.url().to_owned(), progress).await;
            local.stop().await;
            result
        };
        tokio::pin!(work);
        let mut sent = first;
        let last = loop {
            tokio::select! {
                biased;
                result = &mut work => break result,
                () = tx.closed() => return,
                changed = progress_rx.changed() => {
                    if changed.is_err() {
                        break (&mut work).await;
                    }
                    let p = *progress_rx.borrow_and_update();
                    if p == sent {
                        continue;
                    }
                    sent = p;
                    if tx.send(event("progress", &p)).await.is_err() {
                        return;
                    }
                }
            }
        };
        let end = match last {
            Ok(result) => event("result", &result),
            Err(e) => error_event(&e),
        };
        let _ = tx.send(end).await;
    });
    Sse::new(ReceiverStream::new(rx).map(Ok)).keep_alive(KeepAlive::default())
}
