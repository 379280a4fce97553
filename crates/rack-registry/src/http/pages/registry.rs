//! `/ui/@ns/<segs>` (latest) and `/ui/@ns/<segs>/<version>`: one version of a registry, with
//! everything a person needs before `rk add`. Parsed by the API's own path grammar
//! ([`rack_core::route::parse_registry_path`]); access and reads as `/registries/...`.
//!
//! The lifecycle (SPEC §18) comes from `lifecycle.json`, read through the hot cache like
//! `versions.json`: `versions.json` lists neither yanked nor deleted versions, so the version
//! list is `versions.json` plus the yanked versions (struck through, with the reason), in
//! SemVer order; a deleted version is never listed and its pages are 410 `VERSION_DELETED`, as
//! its API reads are. A deprecated registry carries the notice and a link to its successor. A
//! viewer whose token may publish in the namespace sees the `rack-registry` commands that yank
//! and deprecate (text to copy, not a button: the pages never write).

use maud::{html, Markup};
use rack_core::lifecycle::{Lifecycle, VersionState};
use rack_core::names::{is_namespace, is_segment};
use rack_core::route::{RegistryResource, ResourceKind};
use rack_core::ApiError;
use serde_json::Value;

use super::layout::page as shell_page;
use super::{lifecycle, manifest, ok, str_field, tags, versions, versions_of, PageResult, Req};

pub async fn dispatch(req: &Req<'_>, res: RegistryResource) -> PageResult {
    req.ctx.read(res.namespace())?;
    let registry = res.registry_key();
    if let ResourceKind::Version(v) | ResourceKind::File { version: v, .. } = &res.kind {
        if lifecycle(req.state, registry).await?.state(v) == VersionState::Deleted {
            return Err(ApiError::version_deleted(registry, v).into());
        }
    }
    match &res.kind {
        ResourceKind::File { version, path } => super::file::page(req, &res, version, path).await,
        ResourceKind::Latest | ResourceKind::Versions => {
            let v = versions(req.state, registry)
                .await?
                .ok_or_else(ApiError::no_versions)?;
            let latest = versions_of(&v)
                .latest()
                .ok_or_else(ApiError::no_versions)?
                .to_owned();
            page(req, &res, &latest).await
        }
        ResourceKind::Version(v) => page(req, &res, v).await,
    }
}

async fn page(req: &Req<'_>, res: &RegistryResource, version: &str) -> PageResult {
    let registry = res.registry_key();
    let ns = res.namespace();
    let m = manifest(req.state, registry, version)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let listed: Vec<String> = match versions(req.state, registry).await? {
        Some(v) => versions_of(&v).versions.clone(),
        None => Vec::new(),
    };
    let lifecycle = lifecycle(req.state, registry).await?;
    let all = shown_versions(listed, &lifecycle);
    let publisher = req.ctx.publish(ns).is_ok();
    let base = format!("/ui/{registry}");
    let ui_root = format!("/ui/{ns}");
    let link = |url: Option<&str>| -> Markup {
        html! {
            @if let Some(u) = url {
                // Only web links become links: a `javascript:` URL stays text.
                @if u.starts_with("https://") || u.starts_with("http://") {
                    a href=(u) rel="nofollow noopener" { (u) }
                } @else { (u) }
            }
        }
    };
    let files: Vec<&Value> = m
        .get("files")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    ok(shell_page(
        req.shell,
        &format!("{registry}@{version}"),
        "",
        html! {
            p.muted { a href=(ui_root) { (ns) } }
            h1 { (registry) " " code { (version) } }
            (deprecation_notice(&lifecycle, ns))
            @if let VersionState::Yanked(reason) = lifecycle.state(version) {
                div.notice {
                    p {
                        strong { "This version was yanked: " } (reason)
                    }
                    p.muted { "It stays readable at its exact version; " code { "rk add " (registry) } " never picks it." }
                }
            }
            @if let Some(d) = str_field(&m, "description") { p { (d) } }
            p { @for t in tags(&m) { span.tag { (t) } } }
            table {
                tbody {
                    @if let Some(t) = str_field(&m, "type") { tr { th { "Type" } td { (t) } } }
                    @if let Some(a) = str_field(&m, "author") { tr { th { "Author" } td { (a) } } }
                    @if let Some(l) = str_field(&m, "license") { tr { th { "License" } td { (l) } } }
                    @if str_field(&m, "homepage").is_some() { tr { th { "Homepage" } td { (link(str_field(&m, "homepage"))) } } }
                    @if str_field(&m, "repository").is_some() { tr { th { "Repository" } td { (link(str_field(&m, "repository"))) } } }
                }
            }
            h2 { "Install" }
            pre { code { "rk add " (registry) } }
            pre { code { "rk add " (registry) "@" (version) } }
            h2 { "Files" }
            @if files.is_empty() { p.muted { "No files." } } @else {
                table.list {
                    thead { tr { th { "Target" } th { "Type" } th { "Template" } } }
                    tbody {
                        @for f in &files {
                            tr {
                                td { code { (str_field(f, "target").unwrap_or("")) } }
                                td { (str_field(f, "type").unwrap_or("")) }
                                td {
                                    @match str_field(f, "path").filter(|p| rack_core::names::is_file_path(p)) {
                                        Some(p) => {
                                            @let p = rack_core::names::normalize_file_path(p);
                                            a href={ (base) "/" (version) "/files/" (p) } { (p) }
                                        }
                                        None => span.muted { "inline content" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            (dependencies(&m, ns))
            (map_table(&m, "dependencies", "Dependencies"))
            (map_table(&m, "devDependencies", "Dev dependencies"))
            (map_table(&m, "scripts", "Scripts"))
            h2 { "Versions" }
            ol {
                @for v in &all {
                    li {
                        @match lifecycle.state(v) {
                            VersionState::Yanked(reason) => {
                                del { a href={ (base) "/" (v) } { (v) } }
                                " " span.muted { "yanked: " (reason) }
                            }
                            _ => { a href={ (base) "/" (v) } { (v) } }
                        }
                        @if v == version { " " span.muted { "(shown)" } }
                    }
                }
            }
            p { a href={ "/registries/" (registry) "/" (version) } { "registry.json (API)" } }
            @if publisher { (manage(registry, version, &lifecycle)) }
        },
    ))
}

/// The versions a registry page lists: `versions.json`'s (neither yanked nor deleted) and the
/// yanked ones, newest first; never a deleted one.
fn shown_versions(listed: Vec<String>, lifecycle: &Lifecycle) -> Vec<String> {
    let mut all = listed;
    all.extend(lifecycle.yanked.keys().cloned());
    all.sort_unstable();
    all.dedup();
    all.retain(|v| !lifecycle.deleted.contains_key(v));
    rack_core::version::sort_descending(all)
}

/// The notice of a deprecated registry, with a link to its successor's page.
fn deprecation_notice(lifecycle: &Lifecycle, ns: &str) -> Markup {
    html! {
        @if let Some(d) = &lifecycle.deprecated {
            div.notice role="note" {
                p { strong { "Deprecated: " } (d.message) }
                @if let Some(s) = &d.successor {
                    p { "Successor: " (registry_link(s, ns)) }
                }
            }
        }
    }
}

/// For a viewer whose token may publish here: the commands that yank this version (or undo
/// it) and deprecate the registry (or undo it), to copy into a terminal.
fn manage(registry: &str, version: &str, lifecycle: &Lifecycle) -> Markup {
    let yanked = matches!(lifecycle.state(version), VersionState::Yanked(_));
    html! {
        h2 { "Yank or deprecate" }
        p.muted { "With a token that may publish in this namespace (see docs/publishing.md):" }
        @if yanked {
            pre { code { "rack-registry yank " (registry) "@" (version) " --undo" } }
        } @else {
            pre { code { "rack-registry yank " (registry) "@" (version) " --reason \"...\"" } }
        }
        @if lifecycle.deprecated.is_some() {
            pre { code { "rack-registry deprecate " (registry) " --undo" } }
        } @else {
            pre { code { "rack-registry deprecate " (registry) " --message \"...\" [--successor @ns/other]" } }
        }
    }
}

/// `registryDependencies`, each linked to its page (a bare `seg/seg` is in this namespace).
fn dependencies(m: &Value, ns: &str) -> Markup {
    let deps: Vec<&str> = m
        .get("registryDependencies")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    html! {
        @if !deps.is_empty() {
            h2 { "Registry dependencies" }
            ul { @for d in deps { li { (registry_link(d, ns)) } } }
        }
    }
}

/// A link to the page of registry identifier `id` (`@ns/a/b` or `a/b` in `default_ns`;
/// an `@version` or `:js`/`:ts` suffix is kept in the text only); text if it is malformed.
pub fn registry_link(id: &str, default_ns: &str) -> Markup {
    let bare = id.split(':').next().unwrap_or(id);
    let bare = match bare.get(1..).and_then(|r| r.rfind('@')) {
        Some(i) => &bare[..i + 1],
        None => bare,
    };
    let (ns, segs) = match bare.strip_prefix('@') {
        Some(_) => match bare.split_once('/') {
            Some((ns, segs)) => (ns, segs),
            None => (bare, ""),
        },
        None => (default_ns, bare),
    };
    let valid = is_namespace(ns) && !segs.is_empty() && segs.split('/').all(is_segment);
    html! {
        @if valid { a href={ "/ui/" (ns) "/" (segs) } { (id) } } @else { (id) }
    }
}

fn map_table(m: &Value, key: &str, title: &str) -> Markup {
    let entries: Vec<(&String, &str)> = m
        .get(key)
        .and_then(Value::as_object)
        .map(|o| o.iter().filter_map(|(k, v)| Some((k, v.as_str()?))).collect())
        .unwrap_or_default();
    html! {
        @if !entries.is_empty() {
            h2 { (title) }
            table { tbody { @for (k, v) in entries { tr { td { code { (k) } } td { code { (v) } } } } } }
        }
    }
}
