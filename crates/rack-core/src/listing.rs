//! Listings and live answers whose bytes are part of the contract, shared by the server and the
//! edge Worker so that both produce the same bodies (and so the same ETags):
//!
//! - the namespace index `@ns/.registries.json` (SPEC §3): its key, format and parsing;
//! - the walk that finds registries under a namespace when there is no index (one delimited
//!   listing per directory), as a pure state machine fed with listing pages;
//! - the bodies of `/namespaces`, `/namespaces/<ns>/registries` and `/health` (SPEC §4, §8).

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::names::{is_namespace, is_segment};

/// The file name of a namespace index; the leading dot means it can never be a registry path.
pub const INDEX_FILE: &str = ".registries.json";

/// The marker object that makes a directory a registry.
pub const REGISTRY_MARKER: &str = "versions.json";

/// The index key of namespace `ns` (`@ns`).
pub fn index_key(ns: &str) -> String {
    format!("{ns}/{INDEX_FILE}")
}

/// Whether `key` is a namespace index (derived data).
pub fn is_index_key(key: &str) -> bool {
    key.split_once('/')
        .is_some_and(|(ns, rest)| rest == INDEX_FILE && is_namespace(ns))
}

#[derive(Serialize, Deserialize)]
struct RegistryIndex {
    registries: Vec<String>,
}

/// The registries an index lists, or `None` if it is not `{"registries": [...]}`.
pub fn parse_index(bytes: &[u8]) -> Option<Vec<String>> {
    serde_json::from_slice::<RegistryIndex>(bytes)
        .ok()
        .map(|i| i.registries)
}

/// An index listing `registries` (sorted, deduplicated), with a trailing newline.
pub fn render_index(registries: &[String]) -> Vec<u8> {
    let mut list = registries.to_vec();
    list.sort();
    list.dedup();
    let mut out = serde_json::to_vec(&RegistryIndex { registries: list }).expect("serializable");
    out.push(b'\n');
    out
}

/// The namespace a root-level listing prefix (`@ns/`) names, if it matches the pattern.
pub fn namespace_of_prefix(prefix: &str) -> Option<&str> {
    let ns = prefix.trim_end_matches('/');
    is_namespace(ns).then_some(ns)
}

/// The body of `/namespaces` (`names` sorted by the caller).
pub fn namespaces_body(names: &[String]) -> String {
    json!({ "namespaces": names }).to_string()
}

/// The body of `/namespaces/<ns>/registries`.
pub fn registries_body(ns: &str, registries: &[String]) -> String {
    json!({ "namespace": ns, "registries": registries }).to_string()
}

/// Why `/health` fails when the storage marker is absent.
pub fn health_marker_missing() -> String {
    format!("storage marker {} not found", crate::layout::HEALTHCHECK_KEY)
}

/// Why `/health` fails when storage could not be read (the detail goes to the log only).
pub const HEALTH_MARKER_UNREADABLE: &str = "storage marker unreadable";

/// The status and body of `/health` (SPEC §8): `None` when healthy, else the problem.
pub fn health_body(problem: Option<&str>) -> (u16, String) {
    match problem {
        None => (
            200,
            json!({"status": "ok", "checks": {"storage": {"status": "ok"}}}).to_string(),
        ),
        Some(error) => (
            503,
            json!({"status": "error", "checks": {"storage": {"status": "error", "error": error}}})
                .to_string(),
        ),
    }
}

/// Which sub-directories a walk descends into (by name).
pub type DirFilter = fn(&str) -> bool;

/// A walk for directories holding `marker` below `prefix`, by delimited listings: the caller
/// lists each directory [`next_dir`](Walk::next_dir) returns (all its pages) and feeds every
/// page to [`page`](Walk::page). Registries are found only through directories whose names pass
/// `descend` (for registries: the segment pattern, so version directories are not descended).
pub struct Walk {
    prefix: String,
    marker: String,
    descend: DirFilter,
    stack: Vec<String>,
    found: Vec<String>,
    anything: bool,
}

impl Walk {
    pub fn new(prefix: &str, marker: &str, descend: DirFilter) -> Walk {
        Walk {
            prefix: prefix.to_owned(),
            marker: marker.to_owned(),
            descend,
            stack: vec![prefix.to_owned()],
            found: Vec::new(),
            anything: false,
        }
    }

    /// The registries of namespace `ns` (`@ns`).
    pub fn registries(ns: &str) -> Walk {
        Walk::new(&format!("{ns}/"), REGISTRY_MARKER, is_segment)
    }

    /// The next directory (a prefix ending in `/`) to list, or `None` when done.
    pub fn next_dir(&mut self) -> Option<String> {
        self.stack.pop()
    }

    /// One page of the delimited listing of `dir`: object keys and sub-prefixes (full keys).
    pub fn page<'a>(
        &mut self,
        dir: &str,
        objects: impl IntoIterator<Item = &'a str>,
        prefixes: impl IntoIterator<Item = &'a str>,
    ) {
        for key in objects {
            self.anything = true;
            if key.strip_prefix(dir) == Some(self.marker.as_str()) && dir.len() > self.prefix.len() {
                self.found.push(dir[self.prefix.len()..dir.len() - 1].to_owned());
            }
        }
        for p in prefixes {
            self.anything = true;
            let Some(name) = p.strip_prefix(dir) else { continue };
            if (self.descend)(name.trim_end_matches('/')) {
                self.stack.push(p.to_owned());
            }
        }
    }

    /// The directories found, sorted, or `None` when nothing at all is stored under the prefix.
    pub fn finish(self) -> Option<Vec<String>> {
        let mut found = self.found;
        found.sort();
        self.anything.then_some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_and_format() {
        assert_eq!(index_key("@ns"), "@ns/.registries.json");
        assert!(is_index_key("@ns/.registries.json"));
        assert!(!is_index_key("@ns/a/.registries.json"));
        assert!(!is_index_key("presets/.registries.json"));
        let body = render_index(&["b/c".into(), "a".into(), "a".into()]);
        assert_eq!(&body[..], b"{\"registries\":[\"a\",\"b/c\"]}\n");
        assert_eq!(parse_index(&body).unwrap(), ["a", "b/c"]);
        assert!(parse_index(b"[]").is_none());
    }

    #[test]
    fn bodies() {
        assert_eq!(
            registries_body("@a", &["x".into()]),
            r#"{"namespace":"@a","registries":["x"]}"#
        );
        assert_eq!(namespaces_body(&[]), r#"{"namespaces":[]}"#);
        assert_eq!(health_body(None).0, 200);
        let (status, body) = health_body(Some("boom"));
        assert_eq!(status, 503);
        assert!(body.contains(r#""error":"boom""#));
        assert_eq!(namespace_of_prefix("@ok/"), Some("@ok"));
        assert_eq!(namespace_of_prefix("@UPPER/"), None);
    }

    #[test]
    fn walk_descends_only_segments_and_finds_markers() {
        let mut w = Walk::registries("@ns");
        let mut listed = Vec::new();
        while let Some(dir) = w.next_dir() {
            listed.push(dir.clone());
            match dir.as_str() {
                "@ns/" => w.page(&dir, ["@ns/.registries.json"], ["@ns/a/", "@ns/Odd_Dir/"]),
                "@ns/a/" => w.page(&dir, ["@ns/a/versions.json"], ["@ns/a/1.0.0/", "@ns/a/b/"]),
                "@ns/a/b/" => w.page(&dir, ["@ns/a/b/versions.json"], []),
                other => panic!("descended into {other}"),
            }
        }
        assert_eq!(listed.len(), 3);
        assert_eq!(w.finish().unwrap(), ["a", "a/b"]);
        let mut empty = Walk::registries("@none");
        let dir = empty.next_dir().unwrap();
        empty.page(&dir, [], []);
        assert!(empty.next_dir().is_none());
        assert_eq!(empty.finish(), None);
    }
}
