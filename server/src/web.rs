//! The browser viewer: the static files of `web/`, compiled into the binary.
//!
//! Every file is embedded with `include_bytes!`, so the binary reads nothing from disk to
//! serve the viewer and a release build is all a user needs. `/` answers the page; the
//! other files are served at `/web/<name>` (the page loads them by those addresses). The
//! viewer is a set of plain ES modules: no build step, nothing fetched from the internet.
//!
//! Responses carry a strong `ETag` (a digest of the file, computed once) and
//! `Cache-Control: no-cache`, so a browser revalidates and gets `304 Not Modified` until
//! the binary changes. The page is served with a Content-Security-Policy that allows only
//! this origin.

use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::problem::ApiError;

/// One embedded file.
struct Asset {
    /// Its name under `/web/`.
    name: &'static str,
    /// Its media type.
    media: &'static str,
    /// Its bytes, as compiled in.
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $media:expr) => {
        Asset {
            name: $name,
            media: $media,
            bytes: include_bytes!(concat!("../../web/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the viewer. A file added to `web/` must be listed here to be served.
static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("auth.js", JS),
    asset!("util.js", JS),
    asset!("colors.js", JS),
    asset!("tree.js", JS),
    asset!("docs.js", JS),
    asset!("doc.js", JS),
    asset!("compare.js", JS),
    asset!("charts.js", JS),
];

/// Only this origin, for scripts, styles, images and connections (fetch, EventSource,
/// WebSocket); inline SVG and `style` attributes set from script are allowed.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; object-src 'none'; \
                   base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// The routes of the viewer, to merge into the API router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(index))
        .routes(routes!(favicon))
        .routes(routes!(file))
}

/// The viewer's page.
#[utoipa::path(get, path = "/", tag = "viewer", security(()),
    responses(
        (status = 200, description = "The page.", content_type = "text/html", body = String),
        (status = 304, description = "Not modified since the `If-None-Match` tag."),
    ))]
async fn index(headers: HeaderMap) -> Response<Body> {
    serve(
        find("index.html").expect("index.html is embedded"),
        &headers,
    )
}

/// The viewer's icon.
#[utoipa::path(get, path = "/favicon.ico", tag = "viewer", security(()),
    responses(
        (status = 200, description = "The icon.", content_type = "image/svg+xml", body = String),
        (status = 304, description = "Not modified since the `If-None-Match` tag."),
    ))]
async fn favicon(headers: HeaderMap) -> Response<Body> {
    serve(
        find("favicon.svg").expect("favicon.svg is embedded"),
        &headers,
    )
}

/// One of the viewer's files (scripts, styles).
#[utoipa::path(get, path = "/web/{name}", tag = "viewer", security(()),
    params(("name" = String, Path, description = "The file's name")),
    responses(
        (status = 200, description = "The file.", content_type = "*/*", body = String),
        (status = 304, description = "Not modified since the `If-None-Match` tag."),
        (status = 404, description = "No such file."),
    ))]
async fn file(Path(name): Path<String>, headers: HeaderMap) -> Result<Response<Body>, ApiError> {
    find(&name)
        .map(|asset| serve(asset, &headers))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!(
                    "the viewer has no file {:?}",
                    name.chars().take(100).collect::<String>()
                ),
            )
        })
}

fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// The entity tag of an asset: a digest of its bytes, computed once per file.
fn etag(asset: &Asset) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", &hex::encode(Sha256::digest(a.bytes))[..20]))
            .collect()
    });
    let i = ASSETS
        .iter()
        .position(|a| a.name == asset.name)
        .expect("the asset is in the table");
    &tags[i]
}

fn serve(asset: &'static Asset, request: &HeaderMap) -> Response<Body> {
    let tag = etag(asset);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut response = if fresh {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(Body::from(asset.bytes))
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.media));
    headers.insert(header::ETAG, HeaderValue::from_static(tag));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.name == "index.html" {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_unique_name_and_a_body() {
        for (i, a) in ASSETS.iter().enumerate() {
            assert!(!a.bytes.is_empty(), "{} is empty", a.name);
            assert!(
                ASSETS[..i].iter().all(|b| b.name != a.name),
                "{} twice",
                a.name
            );
        }
    }

    #[test]
    fn every_file_of_the_viewer_is_embedded() {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web");
        for entry in std::fs::read_dir(&folder).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(find(&name).is_some(), "web/{name} is not in ASSETS");
        }
    }

    async fn get(path: &str, headers: &[(&str, &str)]) -> Response<Body> {
        use tower::ServiceExt;
        let mut request = axum::http::Request::get(path);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        axum::Router::from(routes::<()>())
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn serves_the_page_its_files_and_revalidation() {
        let page = get("/", &[]).await;
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(page.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        let script = get("/web/app.js", &[]).await;
        assert_eq!(script.status(), StatusCode::OK);
        assert_eq!(script.headers()[header::CONTENT_TYPE], JS);
        let tag = script.headers()[header::ETAG].to_str().unwrap().to_owned();
        let again = get("/web/app.js", &[("if-none-match", &tag)]).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let missing = get("/web/nope.js", &[]).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            missing.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }

    #[test]
    fn the_page_links_only_embedded_files() {
        let page = std::str::from_utf8(find("index.html").unwrap().bytes).unwrap();
        for link in page.split("\"/web/").skip(1) {
            let name = link.split('"').next().unwrap();
            assert!(
                find(name).is_some(),
                "index.html links /web/{name}, not embedded"
            );
        }
    }

    #[test]
    fn modules_import_only_embedded_files() {
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(a.bytes).unwrap();
            let statics = text
                .lines()
                .filter(|l| l.starts_with("import "))
                .filter_map(|l| l.rsplit("from ").next());
            let dynamics = text
                .split("import(")
                .skip(1)
                .filter_map(|r| r.split(')').next());
            for quoted in statics.chain(dynamics) {
                let name = quoted
                    .trim_matches(|c| c == '\'' || c == '"' || c == ';' || c == ' ')
                    .trim_start_matches("./");
                assert!(
                    find(name).is_some(),
                    "{} imports {name}, not embedded",
                    a.name
                );
            }
        }
    }
}
