//! Rules about an uploaded package that need no I/O (SPEC §5.1 checks 7, 11, 12; §5.4), shared
//! by the server's upload pipeline and by `rack-registry publish --dry-run`, so that the two can
//! never disagree.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::error::{ApiError, ErrorKind};
use crate::layout::registry_segments;
use crate::names::{is_file_path, normalize_file_path};

/// The identity of a manifest, from check 7.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub name: String,
    pub version: String,
    /// Registry path segments below the namespace (SPEC §5.4).
    pub segments: Vec<String>,
}

impl Identity {
    /// `@ns/<segments>`
    pub fn registry_key(&self) -> String {
        crate::layout::registry_key(&self.namespace, &self.segments)
    }

    /// `@ns/<segments>/<version>`: the `path` of the 201 body and of webhook events.
    pub fn version_path(&self) -> String {
        format!("{}/{}", self.registry_key(), self.version)
    }
}

fn upload_failed(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::UploadFailed, msg)
}

/// Check 7: `registry.json` bytes are JSON with non-empty string `namespace`, `name`, `version`
/// (checked in that order), and an explicit `path` ends with `name`.
pub fn identity(manifest_bytes: &[u8]) -> Result<(Value, Identity), ApiError> {
    let doc: Value = serde_json::from_slice(manifest_bytes)
        .map_err(|_| upload_failed("registry.json is not valid JSON"))?;
    let field = |f: &str| -> Result<String, ApiError> {
        doc.get(f)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| upload_failed(format!("{f} is required in registry.json")))
    };
    let namespace = field("namespace")?;
    let name = field("name")?;
    let version = field("version")?;
    let path = doc.get("path").and_then(Value::as_str);
    if let Some(p) = path {
        if p.rsplit('/').next() != Some(name.as_str()) {
            return Err(upload_failed(format!(
                "path \"{p}\" must end with name \"{name}\""
            )));
        }
    }
    let segments = registry_segments(&name, doc.get("type").and_then(Value::as_str), path);
    Ok((
        doc.clone(),
        Identity {
            namespace,
            name,
            version,
            segments,
        },
    ))
}

/// Every template file path a manifest declares (check 11): `files[].path`,
/// `languages.*.files[].path` and the `script` of custom merge strategies, normalized (no
/// leading `./`). Only valid file paths are returned; the schema (check 10) rejects the rest.
pub fn declared_files(doc: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut collect = |files: Option<&Value>| {
        for f in files.and_then(Value::as_array).into_iter().flatten() {
            let script = f
                .get("mergeStrategy")
                .filter(|m| m.get("type").and_then(Value::as_str) == Some("custom"))
                .and_then(|m| m.get("script"));
            for p in [f.get("path"), script]
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if is_file_path(p) {
                    out.insert(normalize_file_path(p).to_owned());
                }
            }
        }
    };
    collect(doc.get("files"));
    if let Some(langs) = doc.get("languages").and_then(Value::as_object) {
        for lang in langs.values() {
            collect(lang.get("files"));
        }
    }
    out
}

/// What an archive entry is, as far as checks 11 and 12 care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    /// Symlink, hardlink, device, fifo... (never created on disk).
    Special,
}

/// Checks 11 and 12 over the archive's entries (paths normalized, without `./`): every declared
/// file exists as a regular file, then the archive holds only regular files and directories, and
/// every file is `registry.json` or declared.
pub fn check_entries(
    entries: &BTreeMap<String, EntryKind>,
    declared: &BTreeSet<String>,
) -> Result<(), ApiError> {
    for path in declared {
        if entries.get(path) != Some(&EntryKind::File) {
            return Err(ApiError::new(
                ErrorKind::FileNotFound,
                format!("File referenced in registry.json is missing or not a regular file: {path}"),
            ));
        }
    }
    for (path, kind) in entries {
        if *kind == EntryKind::Special {
            return Err(ApiError::new(
                ErrorKind::UnsafeFile,
                format!(
                    "Package contains an unsupported entry type at {path} (only regular files and directories are allowed)"
                ),
            ));
        }
    }
    for (path, kind) in entries {
        if *kind == EntryKind::File && path != "registry.json" && !declared.contains(path) {
            return Err(ApiError::new(
                ErrorKind::UndeclaredFile,
                format!("Package contains a file not declared in registry.json: {path}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kind(r: Result<(Value, Identity), ApiError>) -> Result<Identity, String> {
        r.map(|(_, i)| i).map_err(|e| e.message)
    }

    #[test]
    fn identity_rules() {
        let ok = kind(identity(
            br#"{"namespace":"@a","name":"x","version":"1.0.0","type":"registry:build"}"#,
        ))
        .unwrap();
        assert_eq!(ok.segments, ["build", "x"]);
        assert_eq!(ok.version_path(), "@a/build/x/1.0.0");
        assert_eq!(
            kind(identity(b"{nope")),
            Err("registry.json is not valid JSON".into())
        );
        assert_eq!(
            kind(identity(b"{}")),
            Err("namespace is required in registry.json".into())
        );
        assert_eq!(
            kind(identity(br#"{"version":"1","name":"x"}"#)),
            Err("namespace is required in registry.json".into())
        );
        assert_eq!(
            kind(identity(br#"{"namespace":"@a","version":"1"}"#)),
            Err("name is required in registry.json".into())
        );
        assert_eq!(
            kind(identity(br#"{"namespace":"@a","name":"x","version":""}"#)),
            Err("version is required in registry.json".into())
        );
        assert_eq!(
            kind(identity(br#"{"namespace":"@a","name":5,"version":"1"}"#)),
            Err("name is required in registry.json".into())
        );
        assert_eq!(
            kind(identity(
                br#"{"namespace":"@a","name":"x","version":"1.0.0","path":"legacy/y"}"#
            )),
            Err("path \"legacy/y\" must end with name \"x\"".into())
        );
        let legacy = kind(identity(
            br#"{"namespace":"@a","name":"x","version":"1.0.0","path":"legacy/x"}"#,
        ))
        .unwrap();
        assert_eq!(legacy.segments, ["legacy", "x"]);
    }

    #[test]
    fn declared() {
        let doc = json!({
            "files": [
                {"path": "./templates/a.js", "target": "a"},
                {"content": "x", "target": "b", "mergeStrategy": {"type": "custom", "script": "scripts/merge.js"}},
                {"path": "b", "mergeStrategy": {"type": "builtin", "strategy": "json"}}
            ],
            "languages": {"ts": {"files": [{"path": "ts/x.ts"}]}, "js": {"files": [{"path": "../bad"}]}}
        });
        let got: Vec<_> = declared_files(&doc).into_iter().collect();
        assert_eq!(got, ["b", "scripts/merge.js", "templates/a.js", "ts/x.ts"]);
    }

    #[test]
    fn entries() {
        let declared: BTreeSet<String> = ["a".to_string(), "t/b".to_string()].into();
        let mut e = BTreeMap::from([
            ("registry.json".to_string(), EntryKind::File),
            ("a".to_string(), EntryKind::File),
            ("t".to_string(), EntryKind::Dir),
            ("t/b".to_string(), EntryKind::File),
        ]);
        assert!(check_entries(&e, &declared).is_ok());
        e.insert("x".into(), EntryKind::File);
        assert_eq!(
            check_entries(&e, &declared).unwrap_err().kind,
            ErrorKind::UndeclaredFile
        );
        e.insert("link".into(), EntryKind::Special);
        assert_eq!(
            check_entries(&e, &declared).unwrap_err().kind,
            ErrorKind::UnsafeFile
        );
        e.insert("a".into(), EntryKind::Special);
        let err = check_entries(&e, &declared).unwrap_err();
        assert_eq!(err.kind, ErrorKind::FileNotFound);
        assert!(err.message.ends_with(": a"));
        e.remove("a");
        assert_eq!(
            check_entries(&e, &declared).unwrap_err().kind,
            ErrorKind::FileNotFound
        );
    }
}
