//! The dashboard: a few static files compiled into the binary (`ui/`: plain ES modules and
//! CSS, no build step), served under `/ui/` without the key — like `/docs`, the page holds
//! no data; everything it shows comes from `/api/*` calls that send the key the user typed
//! (kept in `sessionStorage`, never in a URL).
//!
//! `/` and `/ui` redirect to `/ui/`; `/ui/assets/<file>` is a file; any other path under
//! `/ui/` is the app's page, so a link such as `/ui/sessions/<id>` can be shared. This is
//! the router's fallback: anything else is the API's 404.

use std::sync::LazyLock;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::http::{method_not_allowed, not_found};

/// Where the dashboard lives.
pub const UI_PATH: &str = "/ui";
const ASSETS_PATH: &str = "/ui/assets/";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_str!(concat!("ui/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the dashboard; the first is the page.
static ASSETS: [Asset; 10] = [
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("util.js", JS),
    asset!("fleet.js", JS),
    asset!("sessions.js", JS),
    asset!("detail.js", JS),
    asset!("dispatch.js", JS),
    asset!("jobs.js", JS),
];

/// Each file's ETag: a digest of its content, computed once.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.body.as_bytes());
            let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&format!("\"{hex}\""))
                .unwrap_or(HeaderValue::from_static("\"0\""))
        })
        .collect()
});

/// The page may load only this server's own files and call only this server.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// True for the paths of the dashboard (public: the page and its files).
pub fn is_public(path: &str) -> bool {
    path == "/"
        || path
            .strip_prefix(UI_PATH)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The total size of the dashboard's files, in bytes.
pub fn assets_size() -> usize {
    ASSETS.iter().map(|a| a.body.len()).sum()
}

/// The router's fallback: the dashboard's paths, else the API's 404.
pub async fn fallback(req: Request) -> Response {
    let path = req.uri().path();
    if !is_public(path) {
        return not_found().await.into_response();
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return method_not_allowed().await.into_response();
    }
    if path == "/" || path == UI_PATH {
        return redirect("/ui/");
    }
    let index = match path.strip_prefix(ASSETS_PATH) {
        None => 0,
        Some(name) => match ASSETS.iter().position(|a| a.name == name) {
            Some(i) => i,
            None => return not_found().await.into_response(),
        },
    };
    serve(index, req.headers())
}

fn redirect(to: &'static str) -> Response {
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, HeaderValue::from_static(to))],
    )
        .into_response()
}

/// File `index` of [`ASSETS`], or 304 when the client's copy is current.
fn serve(index: usize, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = ETAGS[index].clone();
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let h = resp.headers_mut();
    if !fresh {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
    }
    h.insert(header::ETAG, etag);
    // Revalidated on every load (a 304 costs nothing): a new server version shows at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if index == 0 {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_paths_are_public_and_nothing_else_is() {
        for p in [
            "/",
            "/ui",
            "/ui/",
            "/ui/sessions/x",
            "/ui/jobs/x",
            "/ui/assets/jobs.js",
        ] {
            assert!(is_public(p), "{p}");
        }
        for p in ["/uix", "/api/clients", "/metrics", "/api/events", "//"] {
            assert!(!is_public(p), "{p}");
        }
    }

    #[test]
    fn the_files_stay_small_and_every_module_the_page_imports_is_embedded() {
        assert!(assets_size() < 300 * 1024, "{} bytes", assets_size());
        for a in &ASSETS {
            for import in a.body.split("from \"./").skip(1) {
                let name = import.split('"').next().unwrap_or_default();
                assert!(
                    ASSETS.iter().any(|b| b.name == name),
                    "{} imports {name}, which is not embedded",
                    a.name
                );
            }
        }
    }
}
