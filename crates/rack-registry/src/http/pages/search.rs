//! `/ui/search?q=`: registries whose name, description or tags contain the query
//! (case-insensitive), across the namespaces the viewer may list. The work is bounded: at most
//! [`MAX_SCANNED`] registries are looked at and [`MAX_RESULTS`] shown.

use maud::html;

use super::layout::page as shell_page;
use super::{latest, ok, reads, str_field, tags, PageResult, Req};

pub const MAX_SCANNED: usize = 2000;
pub const MAX_RESULTS: usize = 50;

struct Hit {
    registry: String,
    version: String,
    description: String,
}

pub async fn page(req: &Req<'_>) -> PageResult {
    let q = req.param("q").unwrap_or_default();
    let needle = q.trim().to_lowercase();
    let mut hits = Vec::new();
    let mut scanned = 0;
    let mut truncated = false;
    if !needle.is_empty() {
        'outer: for ns in reads::namespace_names(req.state, &req.ctx).await? {
            let Ok(names) = reads::registry_names(req.state, &req.ctx, &ns).await else {
                continue;
            };
            for name in names.iter() {
                if scanned >= MAX_SCANNED || hits.len() >= MAX_RESULTS {
                    truncated = true;
                    break 'outer;
                }
                scanned += 1;
                let registry = format!("{ns}/{name}");
                // A corrupt registry (logged) is skipped, not a failed search.
                let Ok(Some((version, m))) = latest(req.state, &registry).await else {
                    continue;
                };
                let description = str_field(&m, "description").unwrap_or("");
                let matches = registry.to_lowercase().contains(&needle)
                    || description.to_lowercase().contains(&needle)
                    || tags(&m).iter().any(|t| t.to_lowercase().contains(&needle));
                if matches {
                    hits.push(Hit {
                        description: description.to_owned(),
                        registry,
                        version,
                    });
                }
            }
        }
    }
    ok(shell_page(
        req.shell,
        "Search",
        &q,
        html! {
            h1 { "Search" }
            @if needle.is_empty() {
                p.muted { "Type a name, a word of a description or a tag." }
            } @else {
                p.muted { (hits.len()) " result(s) for “" (q) "”" @if truncated { " (search stopped early: narrow it down)" } }
                table.list {
                    tbody {
                        @for h in &hits {
                            tr {
                                td { a href={ "/ui/" (h.registry) } { (h.registry) } }
                                td { code { (h.version) } }
                                td { (h.description) }
                            }
                        }
                    }
                }
            }
        },
    ))
}
