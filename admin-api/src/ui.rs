//! The web console (`/console`) and the interactive API reference (`/docs`).
//!
//! Both are static files compiled into the binary (`admin-api/ui/`), so the single
//! binary serves them offline and no Node step is needed to build. The pages are
//! public: everything they show comes from authenticated calls to the admin API
//! itself, with the token in the `Authorization` header (no cookies, so no CSRF).
//! Every response carries a Content-Security-Policy without inline scripts or
//! styles, `nosniff`, `no-referrer` and a no-framing policy.

use crate::error::ApiError;
use crate::AdminState;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::header::{
    HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG,
    IF_NONE_MATCH, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// The console's policy: only its own script, stylesheet and images, API calls to
/// this origin only, no forms posted anywhere, no plugins, never framed.
pub const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'; object-src 'none'";

/// The API reference's policy: as the console's, plus `data:` images (Swagger UI
/// draws two of its icons from `data:` SVGs in its stylesheet).
pub const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'; object-src 'none'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";
const TEXT: &str = "text/plain; charset=utf-8";

/// One embedded file.
struct Asset {
    /// Path under its section (`/console/` or `/docs/`); "" is the page itself.
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $ct:expr, $file:literal) => {
        Asset {
            path: $path,
            content_type: $ct,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/", $file)),
        }
    };
}

static CONSOLE: &[Asset] = &[
    asset!("", HTML, "console/index.html"),
    asset!("console.js", JS, "console/console.js"),
    asset!("console.css", CSS, "console/console.css"),
    asset!("favicon.svg", SVG, "console/favicon.svg"),
];

static DOCS: &[Asset] = &[
    asset!("", HTML, "docs/index.html"),
    asset!("docs.js", JS, "docs/docs.js"),
    asset!("docs.css", CSS, "docs/docs.css"),
    asset!(
        "swagger-ui-bundle.js",
        JS,
        "vendor/swagger-ui/swagger-ui-bundle.js"
    ),
    asset!("swagger-ui.css", CSS, "vendor/swagger-ui/swagger-ui.css"),
    asset!(
        "swagger-ui-bundle.js.LICENSE.txt",
        TEXT,
        "vendor/swagger-ui/swagger-ui-bundle.js.LICENSE.txt"
    ),
    asset!("LICENSE-swagger-ui.txt", TEXT, "vendor/swagger-ui/LICENSE"),
    asset!("favicon.svg", SVG, "console/favicon.svg"),
];

#[derive(Clone, Copy)]
enum Section {
    Console,
    Docs,
}

impl Section {
    fn assets(self) -> &'static [Asset] {
        match self {
            Section::Console => CONSOLE,
            Section::Docs => DOCS,
        }
    }

    fn csp(self) -> &'static str {
        match self {
            Section::Console => CONSOLE_CSP,
            Section::Docs => DOCS_CSP,
        }
    }

    /// Strong validators of every asset, computed once.
    fn etags(self) -> &'static [String] {
        static CONSOLE_TAGS: OnceLock<Vec<String>> = OnceLock::new();
        static DOCS_TAGS: OnceLock<Vec<String>> = OnceLock::new();
        let cell = match self {
            Section::Console => &CONSOLE_TAGS,
            Section::Docs => &DOCS_TAGS,
        };
        cell.get_or_init(|| self.assets().iter().map(|a| etag(a.body)).collect())
    }
}

fn etag(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("\"{}\"", hex::encode(&digest[..12]))
}

/// The console and docs routes: `/console`, `/console/*`, `/docs`, `/docs/*`.
/// They need no credential; merge them into the admin API's router so its request
/// id, metrics and JSON-404 middleware apply to them as to every route.
pub fn router() -> Router<AdminState> {
    Router::new()
        .route("/console", get(console_page))
        .route("/console/", get(console_page))
        .route("/console/{*path}", get(console_asset))
        .route("/docs", get(docs_page))
        .route("/docs/", get(docs_page))
        .route("/docs/{*path}", get(docs_asset))
}

async fn console_page(headers: HeaderMap) -> Response {
    serve(Section::Console, "", &headers)
}

async fn console_asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(Section::Console, &path, &headers)
}

async fn docs_page(headers: HeaderMap) -> Response {
    serve(Section::Docs, "", &headers)
}

async fn docs_asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(Section::Docs, &path, &headers)
}

fn serve(section: Section, path: &str, req: &HeaderMap) -> Response {
    let Some(i) = section.assets().iter().position(|a| a.path == path) else {
        return ApiError::NotFound("no such file").into_response();
    };
    let asset = &section.assets()[i];
    let tag = &section.etags()[i];
    let not_modified = req
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut res = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    if let Ok(v) = HeaderValue::from_str(tag) {
        h.insert(ETAG, v);
    }
    // Revalidate every time (cheap with the ETag), so an upgrade is seen at once.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    security_headers(h, section.csp());
    res
}

fn security_headers(h: &mut HeaderMap, csp: &'static str) {
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_found_with_its_type_and_headers() {
        for section in [Section::Console, Section::Docs] {
            for asset in section.assets() {
                let res = serve(section, asset.path, &HeaderMap::new());
                assert_eq!(res.status(), StatusCode::OK, "{}", asset.path);
                assert!(!asset.body.is_empty(), "{}", asset.path);
                let h = res.headers();
                assert_eq!(h[CONTENT_TYPE], asset.content_type);
                assert_eq!(h[X_CONTENT_TYPE_OPTIONS], "nosniff");
                assert_eq!(h[REFERRER_POLICY], "no-referrer");
                let csp = h[CONTENT_SECURITY_POLICY].to_str().unwrap();
                for directive in [
                    "script-src 'self'",
                    "style-src 'self'",
                    "object-src 'none'",
                    "frame-ancestors 'none'",
                    "base-uri 'none'",
                ] {
                    assert!(csp.contains(directive), "{csp}");
                }
                assert!(!csp.contains("unsafe"), "{csp}");
            }
        }
    }

    #[test]
    fn etag_revalidation() {
        let res = serve(Section::Console, "console.js", &HeaderMap::new());
        let tag = res.headers()[ETAG].clone();
        let mut req = HeaderMap::new();
        req.insert(IF_NONE_MATCH, tag.clone());
        let res = serve(Section::Console, "console.js", &req);
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(res.headers()[ETAG], tag);
        req.insert(IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        let res = serve(Section::Console, "console.js", &req);
        assert_eq!(res.status(), StatusCode::OK);
    }

    #[test]
    fn unknown_files_are_404() {
        for path in ["nope.js", "../Cargo.toml", "console.js/", "index.html"] {
            let res = serve(Section::Console, path, &HeaderMap::new());
            assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        }
    }

    /// The pages reference only files that exist here, by absolute path, and hold
    /// no inline script or style (the CSP would block them).
    #[test]
    fn pages_reference_only_their_own_assets() {
        for (section, prefix) in [(Section::Console, "/console/"), (Section::Docs, "/docs/")] {
            let page = std::str::from_utf8(section.assets()[0].body).unwrap();
            assert!(!page.contains("style="), "inline style in {prefix}");
            for chunk in page.split("<script").skip(1) {
                let tag = chunk.split('>').next().unwrap();
                assert!(tag.contains("src="), "inline script in {prefix}: {tag}");
            }
            for attr in ["src=\"", "href=\""] {
                for chunk in page.split(attr).skip(1) {
                    let url = chunk.split('"').next().unwrap();
                    if ["/console", "/docs", "/openapi.json"].contains(&url) {
                        continue;
                    }
                    let file = url
                        .strip_prefix(prefix)
                        .unwrap_or_else(|| panic!("{url} is not under {prefix}"));
                    assert!(
                        section.assets().iter().any(|a| a.path == file),
                        "{url} is not embedded"
                    );
                }
            }
        }
    }
}
