//! The URL grammar of the HTTP API (SPEC §4, §14), as a pure function from a raw request path
//! to a [`Route`]. The server and the Worker both dispatch on it, and its
//! [`template`](Route::template) is the bounded `route` label of the metrics.

use std::borrow::Cow;

use crate::auth::Policy;
use crate::error::ApiError;
use crate::names::{is_file_path, is_namespace, is_segment, is_version, normalize_file_path, slash_parts};

/// The schema files `/schemas/<file>` may serve (SPEC §4).
pub const SCHEMA_FILES: [&str; 3] = ["registry-item.json", "preset.json", "rack.json"];

/// What a request path designates. Parse errors that belong to a known route are kept inside
/// it, so that a wrong method is still answered 405 before the path is judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Metrics,
    /// `/openapi.json`: the API's own description (docs/openapi.yaml).
    OpenApi,
    Namespaces,
    NamespaceRegistries(Result<String, ApiError>),
    Preset(Result<String, ApiError>),
    Schema(Result<&'static str, ApiError>),
    /// `POST /registries` (exactly that path).
    Upload,
    Registry(Result<RegistryResource, ApiError>),
    /// A management route of SPEC §18, under `/-/` (no namespace starts with `-`, so the
    /// grammar of `/registries/` is untouched).
    Manage(Action, Result<Target, ApiError>),
    NotFound,
}

/// What a management route does (SPEC §18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `/-/yank/@ns/<segs>/<version>`: `PUT` yanks, `DELETE` unyanks.
    Yank,
    /// `/-/deprecate/@ns/<segs>`: `PUT` deprecates, `DELETE` undeprecates.
    Deprecate,
    /// `/-/versions/@ns/<segs>/<version>`: `DELETE` deletes the version (admin only).
    Delete,
    /// `/-/lifecycle/@ns/<segs>`: `GET` the registry's `lifecycle.json`.
    Lifecycle,
}

impl Action {
    /// The methods the route answers (the `Allow` of a 405).
    pub const fn methods(self) -> &'static str {
        match self {
            Action::Yank | Action::Deprecate => "PUT, DELETE",
            Action::Delete => "DELETE",
            Action::Lifecycle => "GET, HEAD",
        }
    }

    /// Whether the route names a version (else a registry).
    pub const fn names_version(self) -> bool {
        matches!(self, Action::Yank | Action::Delete)
    }
}

/// The registry (and version) a management route is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    key: String,
    namespace_len: usize,
    /// The version, for [`Action::Yank`] and [`Action::Delete`].
    pub version: Option<String>,
}

impl Target {
    /// `@ns/seg1/seg2`: the registry's key prefix in storage.
    pub fn registry_key(&self) -> &str {
        &self.key
    }

    /// `@ns`.
    pub fn namespace(&self) -> &str {
        &self.key[..self.namespace_len]
    }
}

/// Parse the part of a management path after `/-/<action>/`: a registry, with a version for the
/// actions that name one, by the grammar of `/registries/` (percent-escapes, empty segments).
fn parse_target(action: Action, rest: &str) -> Result<Target, ApiError> {
    let res = parse_registry_path(rest)?;
    let RegistryResource {
        mut key,
        namespace_len,
        kind,
    } = res;
    let version = match (action.names_version(), kind) {
        (true, ResourceKind::Version(v)) => Some(v),
        (false, ResourceKind::Latest) => None,
        // `@ns/a/versions` is the registry `a/versions` here: there is no version list to name.
        (false, ResourceKind::Versions) => {
            key.push_str("/versions");
            None
        }
        _ => return Err(ApiError::invalid_path()),
    };
    Ok(Target {
        key,
        namespace_len,
        version,
    })
}

/// A resource under `/registries/`. The registry is kept as its storage key (`@ns/seg1/seg2`),
/// one string that the namespace and the segments are slices of: every read needs the key,
/// and the router runs on every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryResource {
    key: String,
    namespace_len: usize,
    pub kind: ResourceKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceKind {
    Versions,
    Latest,
    Version(String),
    /// A template file; `path` is normalized (no leading `./`).
    File {
        version: String,
        path: String,
    },
}

/// `Cache-Control` tiers of SPEC §4. The `Private*` tiers are the same lifetimes for the
/// client's own cache only: every 200 (and 304) about a namespace that needs a token carries
/// one (SPEC §4, BEYOND), so no shared cache (a corporate proxy, a CDN) keeps gated bytes for
/// the next visitor. [`CacheTier::in_namespace`] makes that choice, for the server and the
/// Worker alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheTier {
    Short,
    Immutable,
    Day,
    NoStore,
    PrivateShort,
    PrivateImmutable,
    PrivateDay,
}

impl CacheTier {
    pub const fn header(self) -> &'static str {
        match self {
            CacheTier::Short => "public, max-age=60",
            CacheTier::Immutable => "public, max-age=31536000, immutable",
            CacheTier::Day => "public, max-age=86400",
            CacheTier::NoStore => "no-store",
            CacheTier::PrivateShort => "private, max-age=60",
            CacheTier::PrivateImmutable => "private, max-age=31536000, immutable",
            CacheTier::PrivateDay => "private, max-age=86400",
        }
    }

    /// The same lifetime, for the client's own cache only (`no-store` stays `no-store`).
    pub const fn private(self) -> CacheTier {
        match self {
            CacheTier::Short | CacheTier::PrivateShort => CacheTier::PrivateShort,
            CacheTier::Immutable | CacheTier::PrivateImmutable => CacheTier::PrivateImmutable,
            CacheTier::Day | CacheTier::PrivateDay => CacheTier::PrivateDay,
            CacheTier::NoStore => CacheTier::NoStore,
        }
    }

    /// The tier of an answer whose bytes belong to namespace `ns`: private unless `policy`
    /// declares `ns` anonymous ([`Policy::needs_token`]). Decided per request from the policy
    /// in force, so a reload that gates a namespace (or opens it) changes the very next answer,
    /// whatever the server keeps in memory.
    pub fn in_namespace(self, policy: &Policy, ns: &str) -> CacheTier {
        if policy.needs_token(ns) {
            self.private()
        } else {
            self
        }
    }
}

/// `Vary` of `/namespaces`, whose body depends on the caller's token (SPEC §4, BEYOND).
pub const VARY_CREDENTIALS: &str = "Authorization, X-Registry-Token";

/// `Content-Security-Policy` of every template file response (SPEC §4, BEYOND): a browser that
/// opens an HTML or SVG template shows it in a sandbox (an opaque origin, no script, no
/// plugins, no form), never runs it with the server's origin, where the web pages' session
/// cookie lives. Sent with `X-Content-Type-Options: nosniff` ([`NOSNIFF`]).
pub const SANDBOX_CSP: &str = "default-src 'none'; sandbox";

/// `X-Content-Type-Options` of every template file response: the declared type is final.
pub const NOSNIFF: &str = "nosniff";

impl RegistryResource {
    /// `@ns/seg1/seg2`: the registry's key prefix in storage (without trailing slash).
    pub fn registry_key(&self) -> &str {
        &self.key
    }

    /// `@ns`.
    pub fn namespace(&self) -> &str {
        &self.key[..self.namespace_len]
    }

    /// The registry's path segments after the namespace (at least one).
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.key[self.namespace_len + 1..].split('/')
    }

    /// The `Cache-Control` tier of a 200: by kind (SPEC §4), private in a namespace that
    /// needs a token.
    pub fn cache_tier(&self, policy: &Policy) -> CacheTier {
        let tier = match self.kind {
            ResourceKind::Versions | ResourceKind::Latest => CacheTier::Short,
            ResourceKind::Version(_) | ResourceKind::File { .. } => CacheTier::Immutable,
        };
        tier.in_namespace(policy, self.namespace())
    }

    /// A template file (`.../files/<path>`): its answers carry [`SANDBOX_CSP`] and [`NOSNIFF`].
    pub fn is_file(&self) -> bool {
        matches!(self.kind, ResourceKind::File { .. })
    }
}

impl Route {
    /// Methods the path answers (the `Allow` header of a 405).
    pub fn allowed_methods(&self) -> &'static str {
        match self {
            Route::Upload => "POST",
            Route::Manage(a, _) => a.methods(),
            _ => "GET, HEAD",
        }
    }

    /// Whether `method` is allowed on this route.
    pub fn allows(&self, method: &str) -> bool {
        match self {
            Route::NotFound => true,
            Route::Upload => method == "POST",
            Route::Manage(a, _) => a.methods().split(", ").any(|m| m == method),
            _ => method == "GET" || method == "HEAD",
        }
    }

    /// The route template: a metrics label from a small fixed set, never the raw path.
    pub fn template(&self) -> &'static str {
        match self {
            Route::Health => "/health",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/openapi.json",
            Route::Namespaces => "/namespaces",
            Route::NamespaceRegistries(_) => "/namespaces/:namespace/registries",
            Route::Preset(_) => "/presets/:name",
            Route::Schema(_) => "/schemas/:file",
            Route::Upload => "/registries",
            Route::Registry(Ok(r)) => match r.kind {
                ResourceKind::Versions => "/registries/:registry/versions",
                ResourceKind::Latest => "/registries/:registry",
                ResourceKind::Version(_) => "/registries/:registry/:version",
                ResourceKind::File { .. } => "/registries/:registry/:version/files/*",
            },
            Route::Registry(Err(_)) => "/registries/*",
            Route::Manage(a, _) => match a {
                Action::Yank => "/-/yank/:registry/:version",
                Action::Deprecate => "/-/deprecate/:registry",
                Action::Delete => "/-/versions/:registry/:version",
                Action::Lifecycle => "/-/lifecycle/:registry",
            },
            Route::NotFound => "unmatched",
        }
    }

    /// The `Cache-Control` tier of a 200 on this route under `policy` (SPEC §4).
    pub fn cache_tier(&self, policy: &Policy) -> CacheTier {
        match self {
            // The document changes with a deploy at an unchanged URL: short, revalidated by ETag.
            // `/namespaces` stays public: its body depends on the token, which it varies on.
            Route::Namespaces | Route::OpenApi => CacheTier::Short,
            Route::NamespaceRegistries(Ok(ns)) => CacheTier::Short.in_namespace(policy, ns),
            Route::Preset(_) | Route::Schema(_) => CacheTier::Day,
            Route::Registry(Ok(r)) => r.cache_tier(policy),
            // Like `versions.json`: short, revalidated by ETag.
            Route::Manage(Action::Lifecycle, Ok(t)) => CacheTier::Short.in_namespace(policy, t.namespace()),
            _ => CacheTier::NoStore,
        }
    }

    /// The request headers a 200 on this route depends on, beyond the path: the `Vary` it
    /// carries (content negotiation aside). Only `/namespaces` filters by token; every other
    /// route answers a token it accepts with the same bytes.
    pub fn vary(&self) -> Option<&'static str> {
        match self {
            Route::Namespaces => Some(VARY_CREDENTIALS),
            _ => None,
        }
    }

    /// Whether answers on this route carry [`SANDBOX_CSP`] and [`NOSNIFF`]: template files.
    pub fn sandboxed(&self) -> bool {
        matches!(self, Route::Registry(Ok(r)) if r.is_file())
    }
}

/// Route a raw request path (no query string; percent-escapes still in place).
pub fn route(raw_path: &str) -> Route {
    if raw_path == "/registries" {
        return Route::Upload;
    }
    if let Some(rest) = raw_path.strip_prefix("/registries/") {
        return Route::Registry(parse_registry_path(rest));
    }
    if let Some(rest) = raw_path.strip_prefix("/-/") {
        let (name, rest) = rest.split_once('/').unwrap_or((rest, ""));
        let action = match name {
            "yank" => Action::Yank,
            "deprecate" => Action::Deprecate,
            "versions" => Action::Delete,
            "lifecycle" => Action::Lifecycle,
            _ => return Route::NotFound,
        };
        return Route::Manage(action, parse_target(action, rest));
    }
    let parts: Vec<&str> = raw_path.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        ["health"] => Route::Health,
        ["metrics"] => Route::Metrics,
        ["openapi.json"] => Route::OpenApi,
        ["namespaces"] => Route::Namespaces,
        ["namespaces", ns, "registries"] => Route::NamespaceRegistries(
            percent_decode(ns)
                .filter(|ns| is_namespace(ns))
                .map(Cow::into_owned)
                .ok_or_else(ApiError::invalid_namespace),
        ),
        ["presets", name] => Route::Preset(
            percent_decode(name)
                .filter(|n| is_segment(n))
                .map(Cow::into_owned)
                .ok_or_else(ApiError::invalid_preset),
        ),
        ["schemas", file] => Route::Schema(
            percent_decode(file)
                .and_then(|f| SCHEMA_FILES.iter().copied().find(|s| *s == f))
                .ok_or_else(ApiError::schema_not_found),
        ),
        ["registries"] => Route::Registry(Err(ApiError::invalid_path())),
        _ => Route::NotFound,
    }
}

/// Strict percent-decoding: `None` for a malformed escape or bytes that are not UTF-8.
/// `+` stays a `+` (this is a path, not a form).
pub fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    let b = s.as_bytes();
    // The common case, no escape at all, is answered without a second scan.
    let Some(mut i) = b.iter().position(|&c| c == b'%') else {
        return Some(Cow::Borrowed(s));
    };
    while i < b.len() {
        if b[i] == b'%' {
            let ok = i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
            if !ok {
                return None;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    percent_encoding::percent_decode_str(s).decode_utf8().ok()
}

/// Parse the part of the path after `/registries/` (SPEC §4 "Parsing `/registries/<rest>`").
///
/// One pass over the segments, building the registry key and the file path as it goes (three
/// allocations: key, version, path): this runs on every read.
pub fn parse_registry_path(rest: &str) -> Result<RegistryResource, ApiError> {
    let decoded = percent_decode(rest).ok_or_else(ApiError::invalid_path)?;
    let mut parts = slash_parts(&decoded).filter(|p| !p.is_empty());
    let namespace = parts.next().ok_or_else(ApiError::invalid_path)?;
    if !is_namespace(namespace) {
        return Err(ApiError::invalid_path());
    }
    let mut key = String::with_capacity(decoded.len());
    key.push_str(namespace);
    // Registry segments up to the first version-like one (the pivot), each checked as it is
    // added; `last` is the key's length before the latest one, to take back a trailing
    // `versions`.
    let (mut count, mut last) = (0usize, key.len());
    let mut version = None;
    for part in parts.by_ref() {
        if is_version(part) {
            version = Some(part);
            break;
        }
        if !is_segment(part) {
            return Err(ApiError::invalid_path());
        }
        last = key.len();
        key.push('/');
        key.push_str(part);
        count += 1;
    }
    let kind = match version {
        None if count >= 2 && key.ends_with("/versions") => {
            key.truncate(last);
            ResourceKind::Versions
        }
        None if count == 0 => return Err(ApiError::invalid_path()),
        None => ResourceKind::Latest,
        Some(_) if count == 0 => return Err(ApiError::invalid_path()),
        Some(version) => match parts.next() {
            None => ResourceKind::Version(version.to_owned()),
            Some("files") => {
                let mut path = String::with_capacity(decoded.len());
                for part in parts {
                    if !path.is_empty() {
                        path.push('/');
                    }
                    path.push_str(part);
                }
                if path.is_empty() || !is_file_path(&path) {
                    return Err(ApiError::invalid_path());
                }
                if path.starts_with("./") {
                    path = normalize_file_path(&path).to_owned();
                }
                ResourceKind::File {
                    version: version.to_owned(),
                    path,
                }
            }
            Some(_) => return Err(ApiError::invalid_path()),
        },
    };
    Ok(RegistryResource {
        key,
        namespace_len: namespace.len(),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn management_routes_name_a_registry_and_maybe_a_version() {
        let target = |p: &str| match route(p) {
            Route::Manage(a, t) => (a, t),
            other => panic!("{p} routed to {other:?}"),
        };
        let (a, t) = target("/-/yank/@ns/a/b/1.0.0");
        let t = t.unwrap();
        assert_eq!(
            (a, t.registry_key(), t.namespace()),
            (Action::Yank, "@ns/a/b", "@ns")
        );
        assert_eq!(t.version.as_deref(), Some("1.0.0"));
        let (a, t) = target("/-/versions/%40ns/a/2.0.0-rc.1");
        assert_eq!(
            (a, t.unwrap().version.as_deref()),
            (Action::Delete, Some("2.0.0-rc.1"))
        );
        let (a, t) = target("/-/deprecate/@ns/a/versions");
        assert_eq!(a, Action::Deprecate);
        assert_eq!(t.unwrap().registry_key(), "@ns/a/versions");
        let (a, t) = target("/-/lifecycle/@ns/x");
        assert_eq!((a, t.unwrap().version), (Action::Lifecycle, None));
        // A version where a registry is expected, and the other way round, or none at all.
        for bad in [
            "/-/yank/@ns/a",
            "/-/yank/@ns/a/1.0.0/files/x",
            "/-/deprecate/@ns/a/1.0.0",
            "/-/lifecycle/@ns",
            "/-/versions/@ns/a/../1.0.0",
            "/-/yank",
            "/-/yank/",
        ] {
            assert!(target(bad).1.is_err(), "{bad}");
        }
        assert_eq!(route("/-/other/@ns/a"), Route::NotFound);
        assert_eq!(route("/-"), Route::NotFound);
        let yank = route("/-/yank/@ns/a/1.0.0");
        assert!(yank.allows("PUT") && yank.allows("DELETE") && !yank.allows("GET"));
        assert_eq!(yank.template(), "/-/yank/:registry/:version");
        let delete = route("/-/versions/@ns/a/1.0.0");
        assert!(delete.allows("DELETE") && !delete.allows("PUT"));
        assert!(route("/-/lifecycle/@ns/a").allows("HEAD"));
    }

    fn reg(path: &str) -> Result<RegistryResource, ApiError> {
        match route(path) {
            Route::Registry(r) => r,
            other => panic!("{path} routed to {other:?}"),
        }
    }

    fn ok(path: &str) -> (String, Vec<String>, ResourceKind) {
        let r = reg(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            r.registry_key(),
            [r.namespace()]
                .into_iter()
                .chain(r.segments())
                .collect::<Vec<_>>()
                .join("/")
        );
        (
            r.namespace().to_owned(),
            r.segments().map(str::to_owned).collect(),
            r.kind,
        )
    }

    fn segs(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn resource_kinds() {
        assert_eq!(
            ok("/registries/@rack/build/rollup/versions"),
            ("@rack".into(), segs(&["build", "rollup"]), ResourceKind::Versions)
        );
        assert_eq!(ok("/registries/@rack/build/rollup").2, ResourceKind::Latest);
        assert_eq!(
            ok("/registries/@rack/versions"),
            ("@rack".into(), segs(&["versions"]), ResourceKind::Latest)
        );
        assert_eq!(
            ok("/registries/@rack/a/1.0.0").2,
            ResourceKind::Version("1.0.0".into())
        );
        assert_eq!(
            ok("/registries/@rack/a/1.0.0/").2,
            ResourceKind::Version("1.0.0".into())
        );
        assert_eq!(
            ok("/registries/@rack/a/1.0.0-rc.1+b.2/files/./templates/x.json").2,
            ResourceKind::File {
                version: "1.0.0-rc.1+b.2".into(),
                path: "templates/x.json".into()
            }
        );
        assert_eq!(
            ok("/registries/%40rack//a///1.0.0/files/a+b@c").2,
            ResourceKind::File {
                version: "1.0.0".into(),
                path: "a+b@c".into()
            }
        );
        // The pivot is the first SemVer part; `versions` after a pivot is not a version list.
        assert!(reg("/registries/@rack/a/1.0.0/versions").is_err());
        // A version-looking segment after the pivot belongs to the file path.
        assert_eq!(
            ok("/registries/@rack/a/1.0.0/files/2.0.0/x").2,
            ResourceKind::File {
                version: "1.0.0".into(),
                path: "2.0.0/x".into()
            }
        );
    }

    #[test]
    fn invalid_paths() {
        for p in [
            "/registries/",
            "/registries//",
            "/registries/@rack",
            "/registries/rack/a",
            "/registries/@Rack/a",
            "/registries/@rack/1.0.0",
            "/registries/@rack/A",
            "/registries/@rack/a.b",
            "/registries/@rack/a_b",
            "/registries/@rack/../a",
            "/registries/@rack/%2E%2E/a",
            "/registries/@rack/a/%zz",
            "/registries/@rack/a/%4",
            "/registries/@rack/a/%",
            "/registries/@rack/a/%FF",
            "/registries/@rack/a/1.0.0/files",
            "/registries/@rack/a/1.0.0/files/",
            "/registries/@rack/a/1.0.0/other/x",
            "/registries/@rack/a/1.0.0/files/../x",
            "/registries/@rack/a/1.0.0/files/a/%2e%2e/b",
            "/registries/@rack/a/1.0.0/files/a%3Fb",
            "/registries/@rack/a/1.0.0/files/a%23b",
            "/registries/@rack/a/1.0.0/files/a%5Cb",
            "/registries/@rack/a/1.0.0/files/a%25b",
            "/registries/@rack/a/1.0.0/files/a%00b",
            "/registries/@rack/a/1.0.0/files/./",
            "/registries/@rack/v1.0.0",
            "/registries/@rack/a/01.0.0",
            "/registries/@rack/a b",
            "/registries/@rack/a%20b",
            "/registries/@rack/a/1.0.0/files/a b",
        ] {
            assert_eq!(reg(p), Err(ApiError::invalid_path()), "{p}");
        }
    }

    #[test]
    fn top_level_routes() {
        assert_eq!(route("/health"), Route::Health);
        assert_eq!(route("/health/"), Route::Health);
        assert_eq!(route("/metrics"), Route::Metrics);
        assert_eq!(route("/openapi.json"), Route::OpenApi);
        assert_eq!(route("/openapi.json").template(), "/openapi.json");
        assert_eq!(
            route("/openapi.json").cache_tier(&Policy::empty()),
            CacheTier::Short
        );
        assert_eq!(route("/openapi.yaml"), Route::NotFound);
        assert_eq!(route("/namespaces"), Route::Namespaces);
        assert_eq!(
            route("/namespaces/%40rack/registries"),
            Route::NamespaceRegistries(Ok("@rack".into()))
        );
        assert_eq!(
            route("/namespaces/rack/registries"),
            Route::NamespaceRegistries(Err(ApiError::invalid_namespace()))
        );
        assert_eq!(
            route("/namespaces/%zz/registries"),
            Route::NamespaceRegistries(Err(ApiError::invalid_namespace()))
        );
        assert_eq!(
            route("/presets/node-library"),
            Route::Preset(Ok("node-library".into()))
        );
        assert_eq!(
            route("/presets/Node"),
            Route::Preset(Err(ApiError::invalid_preset()))
        );
        assert_eq!(route("/schemas/rack.json"), Route::Schema(Ok("rack.json")));
        assert_eq!(
            route("/schemas/x.json"),
            Route::Schema(Err(ApiError::schema_not_found()))
        );
        assert_eq!(route("/registries"), Route::Upload);
        assert_eq!(route("/"), Route::NotFound);
        assert_eq!(route("/presets"), Route::NotFound);
        assert_eq!(route("/presets/a/b"), Route::NotFound);
        assert_eq!(route("/nope"), Route::NotFound);
    }

    #[test]
    fn methods_and_templates() {
        assert!(route("/registries").allows("POST"));
        assert!(!route("/registries").allows("GET"));
        assert_eq!(route("/registries").allowed_methods(), "POST");
        assert!(!route("/health").allows("POST"));
        assert_eq!(
            route("/registries/@a/b/1.0.0/files/x").template(),
            "/registries/:registry/:version/files/*"
        );
        let anon = Policy::parse(r#"{"@a": []}"#).unwrap();
        assert_eq!(
            route("/registries/@a/b/1.0.0").cache_tier(&anon).header(),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(
            route("/registries/@a/b").cache_tier(&anon).header(),
            "public, max-age=60"
        );
        assert_eq!(
            route("/presets/a").cache_tier(&anon).header(),
            "public, max-age=86400"
        );
    }

    /// SPEC §4 (BEYOND): in a namespace that needs a token every 200 is `private`, with the
    /// same lifetime and `immutable`; an anonymous namespace keeps `public`; what no namespace
    /// owns (presets, schemas, the namespace list) is public whatever the policy.
    #[test]
    fn gated_namespaces_get_private_tiers() {
        let p = Policy::parse(r#"{"@open": [], "@gated": [{"token": "t"}]}"#).unwrap();
        let tier = |path: &str| route(path).cache_tier(&p).header();
        assert_eq!(tier("/registries/@open/b/versions"), "public, max-age=60");
        assert_eq!(tier("/registries/@open/b"), "public, max-age=60");
        assert_eq!(
            tier("/registries/@open/b/1.0.0"),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(
            tier("/registries/@open/b/1.0.0/files/x.html"),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(tier("/namespaces/@open/registries"), "public, max-age=60");
        assert_eq!(tier("/registries/@gated/b/versions"), "private, max-age=60");
        assert_eq!(tier("/registries/@gated/b"), "private, max-age=60");
        assert_eq!(
            tier("/registries/@gated/b/1.0.0"),
            "private, max-age=31536000, immutable"
        );
        assert_eq!(
            tier("/registries/@gated/b/1.0.0/files/x.html"),
            "private, max-age=31536000, immutable"
        );
        assert_eq!(tier("/namespaces/@gated/registries"), "private, max-age=60");
        // Undeclared: nobody gets a 200, and the tier fails closed anyway.
        assert_eq!(tier("/registries/@undeclared/b"), "private, max-age=60");
        assert_eq!(tier("/namespaces"), "public, max-age=60");
        assert_eq!(tier("/presets/a"), "public, max-age=86400");
        assert_eq!(tier("/schemas/rack.json"), "public, max-age=86400");
        assert_eq!(tier("/health"), "no-store");
        // The same namespace under another policy: the choice follows the policy in force.
        let reopened = Policy::parse(r#"{"@gated": []}"#).unwrap();
        assert_eq!(
            route("/registries/@gated/b").cache_tier(&reopened).header(),
            "public, max-age=60"
        );
        for t in [CacheTier::Short, CacheTier::Immutable, CacheTier::Day] {
            let (public, private) = (t.header(), t.private().header());
            assert_eq!(
                private.strip_prefix("private"),
                public.strip_prefix("public"),
                "{t:?}"
            );
            assert_eq!(t.private().private(), t.private());
        }
        assert_eq!(CacheTier::NoStore.private(), CacheTier::NoStore);
    }

    #[test]
    fn only_files_are_sandboxed_and_only_the_namespace_list_varies_on_the_token() {
        assert!(route("/registries/@a/b/1.0.0/files/x.html").sandboxed());
        assert!(route("/registries/@a/b/1.0.0/files/./img/logo.svg").sandboxed());
        for p in [
            "/registries/@a/b/1.0.0",
            "/registries/@a/b",
            "/registries/@a/b/versions",
            "/namespaces",
            "/schemas/rack.json",
        ] {
            assert!(!route(p).sandboxed(), "{p}");
        }
        assert!(
            !route("/registries/@a/b/1.0.0/files/..").sandboxed(),
            "an invalid path is an error"
        );
        assert_eq!(
            route("/namespaces").vary(),
            Some("Authorization, X-Registry-Token")
        );
        for p in [
            "/namespaces/@a/registries",
            "/registries/@a/b",
            "/registries/@a/b/1.0.0/files/x",
        ] {
            assert_eq!(route(p).vary(), None, "{p}");
        }
        assert_eq!(SANDBOX_CSP, "default-src 'none'; sandbox");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a+b").as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%40x").as_deref(), Some("@x"));
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%g0"), None);
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode("%C3"), None);
    }
}
