//! Storage keys (SPEC §3; identical on disk and in a bucket), the `versions.json` format, and
//! where an uploaded manifest is stored (SPEC §5.4).

use serde::{Deserialize, Serialize};

/// The storage health marker.
pub const HEALTHCHECK_KEY: &str = ".healthcheck";
/// Where the Worker reads the auth policy in a bucket.
pub const BUCKET_AUTH_KEY: &str = ".auth/auth.json";

/// `@ns/seg1/seg2`
pub fn registry_key<S: AsRef<str>>(namespace: &str, segments: &[S]) -> String {
    let len = namespace.len() + segments.iter().map(|s| s.as_ref().len() + 1).sum::<usize>();
    let mut key = String::with_capacity(len);
    key.push_str(namespace);
    for s in segments {
        key.push('/');
        key.push_str(s.as_ref());
    }
    key
}

// Keys are joined with `concat` rather than `format!`: these run on every read, where the
// formatting machinery showed in profiles.

pub fn versions_key(registry: &str) -> String {
    [registry, "/versions.json"].concat()
}

pub fn manifest_key(registry: &str, version: &str) -> String {
    [registry, "/", version, "/registry.json"].concat()
}

/// Key of a template file; `path` must already be a validated, normalized file path.
pub fn file_key(registry: &str, version: &str, path: &str) -> String {
    [registry, "/", version, "/", path].concat()
}

/// `schema/<file>`: a schema file in storage (`file` from [`crate::route::SCHEMA_FILES`]).
pub fn schema_key(file: &str) -> String {
    ["schema/", file].concat()
}

pub fn preset_key(name: &str) -> String {
    ["presets/", name, "/preset.json"].concat()
}

/// `versions.json`: `{"versions": [...]}`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionsFile {
    pub versions: Vec<String>,
}

impl VersionsFile {
    /// Parse a stored `versions.json`; `None` if it is corrupt (not this shape).
    pub fn parse(bytes: &[u8]) -> Option<VersionsFile> {
        serde_json::from_slice(bytes).ok()
    }

    /// Build from any set of version names: SemVer-sorted newest first, deduplicated, invalid
    /// names dropped.
    pub fn from_versions<I: IntoIterator<Item = S>, S: AsRef<str>>(versions: I) -> VersionsFile {
        VersionsFile {
            versions: crate::version::sort_descending(versions),
        }
    }

    /// The stored form: two-space indent and a trailing newline (SPEC §3).
    pub fn render(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("serializable");
        s.push('\n');
        s
    }

    pub fn latest(&self) -> Option<&str> {
        self.versions.first().map(String::as_str)
    }
}

/// The category directory for a manifest `type` (SPEC §5.4).
pub fn type_category(ty: &str) -> Option<&'static str> {
    Some(match ty {
        "registry:runtime" => "runtimes",
        "registry:framework" => "frameworks",
        "registry:build" => "build",
        "registry:feature" => "features",
        "registry:testing" => "testing",
        "registry:quality" => "quality",
        _ => return None,
    })
}

/// The registry segments of a manifest (SPEC §5.4): an explicit `path` as is, otherwise
/// `<category>/<name>` from `type`, otherwise `<name>`.
pub fn registry_segments(name: &str, ty: Option<&str>, path: Option<&str>) -> Vec<String> {
    match path {
        Some(p) => p
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        None => match ty.and_then(type_category) {
            Some(cat) => vec![cat.to_owned(), name.to_owned()],
            None => vec![name.to_owned()],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let r = registry_key("@rack", &["build", "rollup"]);
        assert_eq!(r, "@rack/build/rollup");
        assert_eq!(versions_key(&r), "@rack/build/rollup/versions.json");
        assert_eq!(
            manifest_key(&r, "1.0.0"),
            "@rack/build/rollup/1.0.0/registry.json"
        );
        assert_eq!(
            file_key(&r, "1.0.0", "templates/a"),
            "@rack/build/rollup/1.0.0/templates/a"
        );
        assert_eq!(preset_key("node"), "presets/node/preset.json");
    }

    #[test]
    fn versions_file_format() {
        let v = VersionsFile::from_versions(["1.0.0", "2.0.0-rc.1", "1.0.0", "junk"]);
        assert_eq!(
            v.render(),
            "{\n  \"versions\": [\n    \"2.0.0-rc.1\",\n    \"1.0.0\"\n  ]\n}\n"
        );
        assert_eq!(v.latest(), Some("2.0.0-rc.1"));
        assert_eq!(
            VersionsFile::from_versions(Vec::<String>::new()).render(),
            "{\n  \"versions\": []\n}\n"
        );
        assert!(VersionsFile::parse(b"{\"versions\":[\"1.0.0\"]}").is_some());
        assert!(VersionsFile::parse(b"not json").is_none());
        assert!(VersionsFile::parse(b"{\"versions\":\"1.0.0\"}").is_none());
    }

    #[test]
    fn segments() {
        assert_eq!(
            registry_segments("rollup", Some("registry:build"), None),
            ["build", "rollup"]
        );
        assert_eq!(
            registry_segments("node", Some("registry:runtime"), None),
            ["runtimes", "node"]
        );
        assert_eq!(
            registry_segments("x", Some("registry:framework"), None),
            ["frameworks", "x"]
        );
        assert_eq!(
            registry_segments("x", Some("registry:feature"), None),
            ["features", "x"]
        );
        assert_eq!(
            registry_segments("x", Some("registry:testing"), None),
            ["testing", "x"]
        );
        assert_eq!(
            registry_segments("x", Some("registry:quality"), None),
            ["quality", "x"]
        );
        assert_eq!(registry_segments("x", Some("registry:other"), None), ["x"]);
        assert_eq!(registry_segments("x", None, None), ["x"]);
        assert_eq!(
            registry_segments("foo", Some("registry:build"), Some("legacy/foo")),
            ["legacy", "foo"]
        );
    }
}
