//! `publishers.json` on disk (SPEC §16): loading at startup and live reload, with the same
//! machinery and the same fail-closed rules as `auth.json` ([`crate::reload`]): a file that is
//! not a JSON object stops startup and, on reload, is refused (logged, counted) while the last
//! good configuration stays in force; a doubtful namespace is rejected alone. A missing file
//! names no trusted publisher. The parsing itself is `rack_core::publishers`.

use std::path::Path;
use std::time::Duration;

use rack_core::publishers::{ParseOptions, Publishers};

use crate::reload::{self, FileContent, Watch};

/// Parse the content of `publishers.json` (a missing file: no trusted publishers).
pub fn parse(content: &FileContent, opts: ParseOptions) -> Result<Publishers, String> {
    match content {
        None => Ok(Publishers::empty()),
        Some(text) => Publishers::parse(text, opts).map_err(|e| e.to_string()),
    }
}

/// Log every namespace that fail-closed parsing rejected.
pub fn log_rejections(publishers: &Publishers) {
    for r in publishers.rejected() {
        tracing::warn!(namespace = %r.namespace, reason = %r.reason, "publishers config: namespace rejected (no trusted publisher for it)");
    }
}

/// Load at startup: the configuration and the content it came from (the watcher's start).
pub fn load(path: &Path, opts: ParseOptions) -> Result<(Publishers, FileContent), String> {
    let content = reload::read(path)?;
    if content.is_none() {
        tracing::info!(path = %path.display(), "publishers config not found: no trusted publishers");
    }
    let publishers =
        parse(&content, opts).map_err(|e| format!("publishers config {}: {e}", path.display()))?;
    log_rejections(&publishers);
    Ok((publishers, content))
}

/// The watch of `publishers.json` for live reload.
pub fn watch(path: &Path, interval: Duration, opts: ParseOptions) -> Watch<Publishers> {
    Watch {
        name: "publishers",
        path: path.to_owned(),
        interval,
        parse: Box::new(move |c| parse(c, opts)),
        on_change: Some(Box::new(log_rejections)),
        reader: None,
    }
}
