//! Typed request bodies: every operation that takes a body says which media types it takes
//! (its `request_body` in the OpenAPI description), and a request whose `Content-Type` is
//! not one of them is refused `415` `unsupported-media-type` before its body is read. No
//! type is guessed: a body without a `Content-Type` is refused too, and a form type
//! (`application/x-www-form-urlencoded`, `multipart/form-data`, `text/plain`, what a
//! cross-site form can send) is taken nowhere.
//!
//! Where a body is optional (create, a lease, the comparison's runs), an *empty* body means
//! the defaults; it may come without a `Content-Type` or with one the operation takes, not
//! with another. ("Empty" is read from the head, `Content-Length: 0` or neither a length
//! nor a chunked encoding, so the body is not read to find out.)
//!
//! The table is built from the description the router serves, so that what is described
//! is what is enforced; it covers the routes mounted from outside
//! ([`crate::Config::extra_routes`]) as well, since they are described too.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::{OpenApi, RefOr, Required};

use crate::problem::ApiError;

/// The body each operation takes, by method and route (as `MatchedPath` spells it).
#[derive(Debug, Default)]
pub(crate) struct Bodies(HashMap<(Method, String), Accepted>);

/// What one operation takes.
#[derive(Debug)]
struct Accepted {
    /// The media types, lowercased.
    types: Vec<String>,
    /// Whether a body must be sent (else an empty one means the defaults).
    required: bool,
}

impl Bodies {
    /// The request bodies of every operation of `openapi`.
    pub(crate) fn of(openapi: &OpenApi) -> Bodies {
        let mut bodies = HashMap::new();
        for (path, item) in &openapi.paths.paths {
            let operations = [
                (Method::GET, &item.get),
                (Method::PUT, &item.put),
                (Method::POST, &item.post),
                (Method::DELETE, &item.delete),
                (Method::PATCH, &item.patch),
                (Method::OPTIONS, &item.options),
            ];
            for (method, operation) in operations {
                if let Some(accepted) = operation.as_ref().and_then(accepted) {
                    bodies.insert((method, path.clone()), accepted);
                }
            }
        }
        Bodies(bodies)
    }
}

fn accepted(operation: &Operation) -> Option<Accepted> {
    let RefOr::T(body) = operation.request_body.as_ref()? else {
        return None;
    };
    Some(Accepted {
        types: body
            .content
            .keys()
            .map(|t| t.to_ascii_lowercase())
            .collect(),
        required: matches!(body.required, Some(Required::True)),
    })
}

/// Middleware: refuses a request whose body is not of a type its operation takes (see the
/// module docs). Requests of operations without a body, and of unknown routes, pass.
pub(crate) async fn guard(
    State(bodies): State<Arc<Bodies>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>();
    let accepted = route.and_then(|route| {
        bodies
            .0
            .get(&(request.method().clone(), route.as_str().to_owned()))
    });
    let Some(accepted) = accepted else {
        return next.run(request).await;
    };
    let headers = request.headers();
    // An optional body left out: the defaults, no type needed.
    let defaults = !accepted.required && empty(headers) && matches!(media_type(headers), Ok(None));
    if !defaults {
        let types: Vec<&str> = accepted.types.iter().map(String::as_str).collect();
        if let Err(e) = check(headers, &types) {
            return advertise(e, request.method(), &types).into_response();
        }
    }
    next.run(request).await
}

/// Whether the head says the body is empty: `Content-Length: 0`, or neither a length nor a
/// transfer coding (HTTP/1.1, RFC 9112 section 6.3).
fn empty(headers: &HeaderMap) -> bool {
    match headers.get(header::CONTENT_LENGTH) {
        Some(length) => length.as_bytes() == b"0",
        None => !headers.contains_key(header::TRANSFER_ENCODING),
    }
}

/// The media type of the request's body, lowercased and without parameters: `None` without
/// a `Content-Type`, `Err` (the reason) for one that is not a single readable value.
pub(crate) fn media_type(headers: &HeaderMap) -> Result<Option<String>, String> {
    let mut lines = headers.get_all(header::CONTENT_TYPE).iter();
    let Some(value) = lines.next() else {
        return Ok(None);
    };
    if lines.next().is_some() {
        return Err("a request carries one Content-Type, this one several".into());
    }
    let text = value
        .to_str()
        .map_err(|_| "its Content-Type is not visible ASCII".to_owned())?;
    let media = text.split(';').next().unwrap_or("").trim();
    if media.is_empty() {
        return Err("its Content-Type is empty".into());
    }
    Ok(Some(media.to_ascii_lowercase()))
}

/// Checks that the request's body is of one of the types `accepted`: its media type, or
/// `415` `unsupported-media-type` saying which types the operation takes, for any other
/// type and for no `Content-Type` at all.
pub(crate) fn check(headers: &HeaderMap, accepted: &[&str]) -> Result<String, ApiError> {
    let found = match media_type(headers) {
        Ok(Some(media)) if accepted.contains(&media.as_str()) => return Ok(media),
        Ok(Some(media)) => format!("its Content-Type is {:?}", excerpt(&media)),
        Ok(None) => "it has no Content-Type (no type is guessed)".to_owned(),
        Err(reason) => reason,
    };
    let wanted = match accepted {
        [one] => format!("{one} (send Content-Type: {one})"),
        _ => format!("one of {}, named in its Content-Type", accepted.join(", ")),
    };
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        UNSUPPORTED,
        format!("this request's body must be {wanted}; {found}"),
    ))
}

/// Adds to a `415` the header that lists the types taken: `Accept-Patch` (RFC 5789) on a
/// PATCH, `Accept-Post` on a POST.
fn advertise(error: ApiError, method: &Method, accepted: &[&str]) -> ApiError {
    let name = match *method {
        Method::PATCH => "accept-patch",
        Method::POST => "accept-post",
        _ => return error,
    };
    match HeaderValue::from_str(&accepted.join(", ")) {
        Ok(value) => error.with_header(header::HeaderName::from_static(name), value),
        Err(_) => error,
    }
}

/// The problem kind of a body of a type the operation does not take.
pub(crate) const UNSUPPORTED: &str = "unsupported-media-type";

fn excerpt(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    /// Header lines of a request.
    type Lines = &'static [(&'static str, &'static str)];

    // One case per line: a table.
    #[rustfmt::skip]
    #[test]
    fn only_the_types_named_pass() {
        let json = &["application/json"][..];
        let patch = &["application/json-patch+json", "application/merge-patch+json"][..];
        let cases: &[(Lines, &[&str], Option<&str>)] = &[
            (&[("content-type", "application/json")], json, Some("application/json")),
            (&[("content-type", "Application/JSON; charset=utf-8")], json, Some("application/json")),
            (&[("content-type", "application/merge-patch+json")], patch, Some("application/merge-patch+json")),
            (&[], json, None),
            (&[("content-type", "application/x-www-form-urlencoded")], json, None),
            (&[("content-type", "multipart/form-data; boundary=x")], json, None),
            (&[("content-type", "text/plain")], json, None),
            (&[("content-type", "application/json")], patch, None),
            (&[("content-type", "")], json, None),
            (&[("content-type", "; charset=utf-8")], json, None),
            (&[("content-type", "application/json"), ("content-type", "application/json")], json, None),
        ];
        for (lines, accepted, expected) in cases {
            let result = check(&headers(lines), accepted);
            match expected {
                Some(media) => assert_eq!(result.unwrap(), *media, "{lines:?}"),
                None => {
                    let e = result.unwrap_err();
                    assert_eq!((e.status.as_u16(), e.kind), (415, UNSUPPORTED), "{lines:?}");
                    assert!(e.detail.contains(accepted[0]), "{}", e.detail);
                }
            }
        }
    }

    #[test]
    fn an_empty_body_is_read_from_the_head() {
        assert!(empty(&headers(&[])));
        assert!(empty(&headers(&[("content-length", "0")])));
        assert!(!empty(&headers(&[("content-length", "2")])));
        assert!(!empty(&headers(&[("transfer-encoding", "chunked")])));
    }
}
