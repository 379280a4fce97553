//! `/ui/@ns`: the registries of a namespace (as `/namespaces/@ns/registries` lists them), 50 a
//! page, each with its latest version, type, description and tags from the hot cache.

use maud::html;
use serde_json::Value;

use super::layout::page as shell_page;
use super::{latest, ok, page_bounds, pager, reads, str_field, tags, PageResult, Req};

struct Row {
    name: String,
    latest: Option<(String, Value)>,
    /// Its `versions.json` is corrupt (logged): one bad registry does not fail the page.
    broken: bool,
}

pub async fn page(req: &Req<'_>, ns: &str) -> PageResult {
    let names = reads::registry_names(req.state, &req.ctx, ns).await?;
    let page = req.page_number();
    let (start, end, pages) = page_bounds(names.len(), page);
    let mut rows = Vec::with_capacity(end - start);
    for name in &names[start..end] {
        let found = latest(req.state, &format!("{ns}/{name}")).await;
        rows.push(Row {
            name: name.clone(),
            broken: found.is_err(),
            latest: found.ok().flatten(),
        });
    }
    let base = format!("/ui/{ns}");
    ok(shell_page(
        req.shell,
        ns,
        "",
        html! {
            h1 { (ns) }
            p.muted { (names.len()) " registries" }
            table.list {
                thead { tr { th { "Registry" } th { "Latest" } th { "Type" } th { "Description" } } }
                tbody {
                    @for r in &rows {
                        tr {
                            td { a href={ (base) "/" (r.name) } { (r.name) } }
                            @match &r.latest {
                                Some((v, m)) => {
                                    td { code { (v) } }
                                    td { (str_field(m, "type").unwrap_or("")) }
                                    td {
                                        (str_field(m, "description").unwrap_or(""))
                                        div { @for t in tags(m) { span.tag { (t) } } }
                                    }
                                }
                                None => { td.muted { @if r.broken { "unreadable" } @else { "no versions" } } td {} td {} }
                            }
                        }
                    }
                }
            }
            (pager(&base, page, pages))
        },
    ))
}
