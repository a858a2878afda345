//! Which hosts and origins may reach the API: what stands between a browser tab and the
//! documents when authentication is off (the default on a developer's machine).
//!
//! - **`Host`** (against DNS rebinding: a page on `attacker.example` whose name is made to
//!   resolve to 127.0.0.1 sends `Host: attacker.example`). Accepted: an IP address (a
//!   rebinding page always names a host), `localhost`, and the names given with
//!   `--allowed-hosts` (`*` accepts any). Anything else is 403 `host-not-allowed`. A
//!   request without `Host` passes: browsers always send one, so it comes from a program.
//! - **`Origin`** (against cross-site requests: a page on another origin may send a
//!   request it cannot read). A request that changes state (any method but `GET`, `HEAD`,
//!   `OPTIONS`) and every WebSocket upgrade is refused, 403 `origin-not-allowed`, when it
//!   carries an `Origin` that is neither this server's own (the same host and port as its
//!   `Host`) nor one given with `--allowed-origins` (`*` accepts any). `Origin: null`
//!   (sandboxed frames, files) is refused. Without `Origin` (programs, not browsers) it
//!   passes: a browser always sends one on these requests.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::problem::ApiError;

/// The names and origins a server accepts besides its own (see the module's docs).
#[derive(Debug, Clone, Default)]
pub struct Allowed {
    /// Host names accepted in `Host` besides IP addresses and `localhost`, lowercased,
    /// without ports; `*` accepts any.
    pub hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`) accepted besides the server's own; `*` accepts any.
    pub origins: Vec<String>,
}

impl Allowed {
    /// From the flags' values: names and origins, trimmed, case-insensitive.
    pub fn new(hosts: &[String], origins: &[String]) -> Allowed {
        let clean = |list: &[String]| -> Vec<String> {
            list.iter()
                .map(|s| s.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect()
        };
        Allowed {
            hosts: clean(hosts),
            origins: clean(origins),
        }
    }

    /// Whether a `Host` value (`name[:port]`, `[v6]:port`) may reach the server.
    fn host(&self, value: &str) -> bool {
        let name = host_name(value);
        name.parse::<IpAddr>().is_ok()
            || name == "localhost"
            || self.hosts.iter().any(|h| h == "*" || *h == name)
    }

    /// Whether a request from `origin` that names `host` may change state.
    fn origin(&self, origin: &str, host: &str) -> bool {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if origin == "null" {
            return false;
        }
        let same = origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority == host.to_ascii_lowercase());
        same || self.origins.iter().any(|o| o == "*" || *o == origin)
    }
}

/// The host part of a `Host` value, lowercased: no port, an IPv6 address without brackets.
fn host_name(value: &str) -> String {
    let value = value.trim().to_ascii_lowercase();
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("").to_owned();
    }
    match value.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_owned(),
        _ => value,
    }
}

fn changes_state(method: &Method, headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    upgrade || !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn refuse(kind: &'static str, detail: String) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, kind, detail).into_response()
}

/// The layer: refuses a request whose `Host` or `Origin` is not allowed, before anything
/// else reads it.
pub async fn guard(State(allowed): State<Arc<Allowed>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = match headers.get(header::HOST) {
        // Browsers always send `Host`: a request without one comes from a program.
        None => return next.run(request).await,
        Some(host) => host.to_str().unwrap_or(""),
    };
    if !allowed.host(host) {
        return refuse(
            "host-not-allowed",
            format!(
                "Host {:?} is not a name of this server: use an IP address or localhost, or start the server with --allowed-hosts {}",
                excerpt(host),
                excerpt(&host_name(host))
            ),
        );
    }
    if changes_state(request.method(), headers) {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("null");
            if !allowed.origin(origin, host) {
                return refuse(
                    "origin-not-allowed",
                    format!(
                        "a page from {:?} may not change this server's documents; start the server with --allowed-origins {} to allow it",
                        excerpt(origin),
                        excerpt(origin)
                    ),
                );
            }
        }
    }
    next.run(request).await
}

fn excerpt(s: &str) -> String {
    s.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_ip_addresses_localhost_or_named() {
        let none = Allowed::default();
        for ok in [
            "127.0.0.1:7878",
            "127.0.0.1",
            "[::1]:7878",
            "10.1.2.3:80",
            "localhost:7878",
            "LOCALHOST",
        ] {
            assert!(none.host(ok), "{ok}");
        }
        for bad in [
            "rebind.attacker.example:7878",
            "localhost.attacker.example",
            "attacker.localhost:7878",
            "",
            "127.0.0.1.nip.io",
        ] {
            assert!(!none.host(bad), "{bad}");
        }
        let named = Allowed::new(&["Concord.Internal".into()], &[]);
        assert!(named.host("concord.internal:7878"));
        assert!(!named.host("other.internal:7878"));
        assert!(Allowed::new(&["*".into()], &[]).host("anything.example"));
    }

    #[test]
    fn origins_are_the_servers_own_or_named() {
        let none = Allowed::default();
        assert!(none.origin("http://127.0.0.1:7878", "127.0.0.1:7878"));
        assert!(none.origin("http://LOCALHOST:7878/", "localhost:7878"));
        assert!(!none.origin("http://127.0.0.1:9999", "127.0.0.1:7878"));
        assert!(!none.origin("http://evil.example", "127.0.0.1:7878"));
        assert!(!none.origin("null", "127.0.0.1:7878"));
        let named = Allowed::new(&[], &["https://app.example/".into()]);
        assert!(named.origin("https://app.example", "127.0.0.1:7878"));
        assert!(!named.origin("https://other.example", "127.0.0.1:7878"));
    }
}
