//! What each route asks of the token: the table in [`crate::auth`]'s docs as a function
//! from a method and a matched route to a [`Rule`].

use axum::http::Method;

/// What an endpoint asks of the token (see the table in [`crate::auth`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rule {
    Public,
    AnyToken,
    Admin,
    Read,
    Write,
    Fork,
    Merge,
    RawChanges,
}

pub(super) fn rule(method: &Method, route: Option<&str>) -> Rule {
    let reads = matches!(*method, Method::GET | Method::HEAD);
    match route {
        None => Rule::AnyToken,
        Some("/healthz" | "/openapi.json" | "/" | "/favicon.ico" | "/web/{name}") => Rule::Public,
        Some("/v1/docs/{id}") if *method == Method::DELETE => Rule::Admin,
        Some("/v1/docs/{id}" | "/v1/docs/{id}/changes") if reads => Rule::Read,
        Some("/v1/docs/{id}/changes") => Rule::RawChanges,
        Some(
            "/v1/docs/{id}"
            | "/v1/docs/{id}/lock"
            | "/v1/docs/{id}/lost/{lost}"
            | "/v1/docs/{id}/lost/{lost}/restore",
        ) => Rule::Write,
        Some("/v1/docs/{id}/history" | "/v1/docs/{id}/events") => Rule::Read,
        Some("/v1/docs/{id}/fork") => Rule::Fork,
        Some("/v1/docs/{id}/merge") => Rule::Merge,
        // Read to connect; the handler checks each message that writes against the caller.
        Some("/v1/docs/{id}/ws" | "/v1/docs/{id}/sync") => Rule::Read,
        // Any token to connect; the handler checks each document it syncs.
        Some("/v1/repo") => Rule::AnyToken,
        // Any token; each tool call checks what it reads and writes against the caller
        // (crate::api::mcp).
        Some("/mcp") => Rule::AnyToken,
        Some(_) => Rule::Admin,
    }
}

/// The endpoints a browser reaches without headers: WebSocket and event streams.
pub(super) fn takes_query_token(route: Option<&str>) -> bool {
    matches!(
        route,
        Some(
            "/v1/docs/{id}/ws"
                | "/v1/docs/{id}/sync"
                | "/v1/repo"
                | "/v1/docs/{id}/events"
                | "/v1/events"
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_map_to_rules() {
        let cases = [
            (Method::GET, Some("/healthz"), Rule::Public),
            (Method::GET, Some("/web/{name}"), Rule::Public),
            (Method::GET, None, Rule::AnyToken),
            (Method::GET, Some("/v1/docs"), Rule::Admin),
            (Method::POST, Some("/v1/docs"), Rule::Admin),
            (Method::GET, Some("/v1/docs/{id}"), Rule::Read),
            (Method::HEAD, Some("/v1/docs/{id}"), Rule::Read),
            (Method::PUT, Some("/v1/docs/{id}"), Rule::Write),
            (Method::PATCH, Some("/v1/docs/{id}"), Rule::Write),
            (Method::DELETE, Some("/v1/docs/{id}"), Rule::Admin),
            (Method::GET, Some("/v1/docs/{id}/changes"), Rule::Read),
            (
                Method::POST,
                Some("/v1/docs/{id}/changes"),
                Rule::RawChanges,
            ),
            (Method::DELETE, Some("/v1/docs/{id}/lock"), Rule::Write),
            (Method::GET, Some("/v1/events"), Rule::Admin),
            (Method::POST, Some("/v1/compare"), Rule::Admin),
            (Method::GET, Some("/metrics"), Rule::Admin),
            (Method::GET, Some("/v1/repo"), Rule::AnyToken),
            (Method::POST, Some("/mcp"), Rule::AnyToken),
            (Method::GET, Some("/mcp"), Rule::AnyToken),
            (Method::GET, Some("/v1/docs/{id}/ws"), Rule::Read),
            (Method::GET, Some("/v1/docs/{id}/sync"), Rule::Read),
        ];
        for (method, route, expected) in cases {
            assert_eq!(rule(&method, route), expected, "{method} {route:?}");
        }
    }
}
