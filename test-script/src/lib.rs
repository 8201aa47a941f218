//! The browser test page, compiled into the binary so `linker domain` serves it with no
//! files beside it, and the load generator `linker-bench`.
//!
//! Layout:
//! - [`PAGE`] / [`asset`]: the page, plain HTML, CSS and JavaScript under `test-script/page/`
//!   (no build step); `test-script/browser/` drives it in headless Chromium.
//! - `bench` (feature `bench`, on by default): the load generator's core, a library so tests
//!   can run it; `src/bin/linker-bench.rs` is its command line.

#[cfg(feature = "bench")]
pub mod bench;

/// The page's files: (path, content type, body).
pub const PAGE: [(&str, &str, &str); 3] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../page/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../page/app.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../page/style.css"),
    ),
];

/// The content type and body of the page file at `path`.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    PAGE.iter()
        .find(|(p, _, _)| *p == path || (*p == "/" && path == "/index.html"))
        .map(|(_, t, b)| (*t, *b))
}
