//! `/ui/presets/<name>`: a preset (read like `/presets/<name>`) and the registries it pulls in,
//! each linked to its page.

use maud::html;
use rack_core::layout::preset_key;
use rack_core::names::is_segment;
use rack_core::ApiError;
use serde_json::Value;

use super::layout::page as shell_page;
use super::registry::registry_link;
use super::{ok, reads, str_field, tags, PageResult, Req};

/// Preset entries without a namespace are in `@rack` (the `rk` client's default namespace).
const DEFAULT_NAMESPACE: &str = "@rack";

pub async fn page(req: &Req<'_>, raw: &str) -> PageResult {
    let name = rack_core::route::percent_decode(raw.trim_end_matches('/'))
        .filter(|n| is_segment(n))
        .ok_or_else(ApiError::invalid_preset)?;
    let obj = reads::get(req.state, &preset_key(&name))
        .await?
        .ok_or_else(ApiError::not_found)?;
    let m: Value = serde_json::from_slice(&obj.body).unwrap_or(Value::Null);
    let registries: Vec<&str> = m
        .get("registries")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    ok(shell_page(
        req.shell,
        &name,
        "",
        html! {
            p.muted { "Preset" }
            h1 { (name) @if let Some(v) = str_field(&m, "version") { " " code { (v) } } }
            @if let Some(d) = str_field(&m, "description") { p { (d) } }
            p { @for t in tags(&m) { span.tag { (t) } } }
            h2 { "Registries" }
            ul { @for r in registries { li { (registry_link(r, DEFAULT_NAMESPACE)) } } }
            p { a href={ "/presets/" (name) } { "preset.json (API)" } }
        },
    ))
}
