//! `/ui/@ns/<segs>/<version>/files/<path>`: a template file as escaped text with line
//! numbers, never rendered (HTML and SVG included), with a link to the raw API URL. Read like
//! the API reads it (hot cache; a file too large for the cache is not shown, only linked).

use maud::html;
use rack_core::layout::file_key;
use rack_core::route::RegistryResource;
use rack_core::ApiError;

use super::layout::page as shell_page;
use super::{ok, reads, PageResult, Req};
use crate::cache::Found;

pub async fn page(req: &Req<'_>, res: &RegistryResource, version: &str, path: &str) -> PageResult {
    let registry = res.registry_key();
    let found = req
        .state
        .cache
        .lookup(req.state.storage.as_ref(), &file_key(registry, version, path))
        .await
        .map_err(reads::internal)?
        .ok_or_else(ApiError::not_found)?;
    let text = match &found {
        Found::Small(obj) if !obj.body.contains(&0) => Some(String::from_utf8_lossy(&obj.body)),
        _ => None,
    };
    let raw = format!("/registries/{registry}/{version}/files/{path}");
    ok(shell_page(
        req.shell,
        path,
        "",
        html! {
            p.muted {
                a href={ "/ui/" (registry) "/" (version) } { (registry) "@" (version) }
            }
            h1 { code { (path) } }
            p { a href=(raw) { "Raw file (API)" } }
            @match &text {
                Some(text) => {
                    table.lines {
                        tbody {
                            @for (i, line) in text.lines().enumerate() {
                                tr { td.n { (i + 1) } td { (line) } }
                            }
                        }
                    }
                }
                None => p.muted { "This file is binary or too large to show here; use the raw link." }
            }
        },
    ))
}
