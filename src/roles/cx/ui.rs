//! The browser UI: static files from `ui/`, embedded in the binary.

use rust_embed::RustEmbed;
use warp::http::{Response, StatusCode};
use warp::{Filter, Rejection, Reply};

#[derive(RustEmbed)]
#[folder = "ui/"]
struct Assets;

fn asset(path: &str) -> Result<warp::reply::Response, Rejection> {
    let path = if path.is_empty() { "index.html" } else { path };
    match Assets::get(path) {
        Some(f) => {
            let mime = match path.rsplit('.').next() {
                Some("html") => "text/html; charset=utf-8",
                Some("js") => "text/javascript; charset=utf-8",
                Some("css") => "text/css; charset=utf-8",
                Some("svg") => "image/svg+xml",
                Some("png") => "image/png",
                _ => "application/octet-stream",
            };
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header("content-type", mime)
                .header("x-content-type-options", "nosniff")
                .header(
                    "content-security-policy",
                    "default-src 'self'; frame-ancestors 'none'",
                )
                .body(f.data.into_owned().into())
                .expect("static response"))
        }
        None => Err(warp::reject::not_found()),
    }
}

pub fn routes() -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let index = warp::path::end()
        .and(warp::get())
        .and_then(|| async { asset("") });
    let files = warp::path("ui")
        .and(warp::path::tail())
        .and(warp::get())
        .and_then(|t: warp::path::Tail| async move { asset(t.as_str()) });
    index.or(files)
}
