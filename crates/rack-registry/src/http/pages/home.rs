//! `/ui`: the namespaces the viewer may list (as `/namespaces` would answer), each with its
//! registry count (50 namespaces a page: only those of the page are counted), then the presets
//! and the schemas.

use maud::html;
use rack_core::names::is_segment;
use rack_core::route::SCHEMA_FILES;

use super::layout::page as shell_page;
use super::{ok, page_bounds, pager, reads, PageResult, Req};

struct Row {
    namespace: String,
    /// `None`: nothing stored under it.
    registries: Option<usize>,
}

pub async fn page(req: &Req<'_>) -> PageResult {
    let names = reads::namespace_names(req.state, &req.ctx).await?;
    let page = req.page_number();
    let (start, end, pages) = page_bounds(names.len(), page);
    let mut rows = Vec::with_capacity(end - start);
    for ns in names[start..end].iter().cloned() {
        // Listed means readable; a namespace with nothing stored shows no count.
        let registries = reads::registry_names(req.state, &req.ctx, &ns)
            .await
            .ok()
            .map(|r| r.len());
        rows.push(Row {
            namespace: ns,
            registries,
        });
    }
    let presets = presets(req).await?;
    ok(shell_page(
        req.shell,
        "Catalogue",
        "",
        html! {
            h1 { "Namespaces" }
            @if rows.is_empty() {
                p.muted { "No namespace is visible to you. Sign in with a token to see gated ones." }
            } @else {
                table.list {
                    thead { tr { th { "Namespace" } th { "Registries" } } }
                    tbody {
                        @for r in &rows {
                            tr {
                                td { a href={ "/ui/" (r.namespace) } { (r.namespace) } }
                                td { @match r.registries { Some(n) => (n), None => span.muted { "none" } } }
                            }
                        }
                    }
                }
                (pager("/ui", page, pages))
            }
            h2 { "Presets" }
            @if presets.is_empty() {
                p.muted { "No presets." }
            } @else {
                ul { @for p in &presets { li { a href={ "/ui/presets/" (p) } { (p) } } } }
            }
            h2 { "Schemas" }
            ul { @for f in SCHEMA_FILES { li { a href={ "/schemas/" (f) } { (f) } } } }
        },
    ))
}

/// The preset names in storage (`presets/<name>/`), sorted.
async fn presets(req: &Req<'_>) -> Result<Vec<String>, super::ErrorReply> {
    let mut names = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let page = req
            .state
            .storage
            .list("presets/", true, start.as_deref(), 1000)
            .await
            .map_err(reads::internal)?;
        for p in &page.prefixes {
            let name = p.trim_start_matches("presets/").trim_end_matches('/');
            if is_segment(name) {
                names.push(name.to_owned());
            }
        }
        match page.next {
            Some(n) => start = Some(n),
            None => break,
        }
    }
    names.sort();
    Ok(names)
}
