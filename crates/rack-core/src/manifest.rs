//! Rules about an uploaded package that need no I/O (SPEC §5.1 checks 7, 11, 12; §5.4), shared
//! by the server's upload pipeline and by `rack-registry publish --dry-run`, so that the two can
//! never disagree.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
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

/// Check 7: `registry.json` bytes are JSON, without a duplicate key in any object (else 400
/// `INVALID_MANIFEST`: which of two `namespace`s counts is a guess no reader should make), with
/// non-empty string `namespace`, `name`, `version` (checked in that order), and an explicit
/// `path` ends with `name`.
pub fn identity(manifest_bytes: &[u8]) -> Result<(Value, Identity), ApiError> {
    let doc: Value = serde_json::from_slice(manifest_bytes)
        .map_err(|_| upload_failed("registry.json is not valid JSON"))?;
    reject_duplicate_keys(manifest_bytes)?;
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

/// Client text in a message or a log line: at most `max` bytes (cut on a character boundary),
/// with `...` when something was cut.
pub fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end]).into()
}

/// How much of a client-supplied string goes into a message or a log line.
pub const CLIP: usize = 256;

/// `None` if `path` (relative, `/`-separated) can be stored; else why not: a segment over
/// [`MAX_SEGMENT_BYTES`](crate::limits::MAX_SEGMENT_BYTES) or the whole over
/// [`MAX_PATH_BYTES`](crate::limits::MAX_PATH_BYTES), a NUL byte (no filesystem takes one), or a
/// backslash (no storage key holds one: a directory so named would reach the disk, unreachable).
pub fn unstorable_path(path: &str) -> Option<String> {
    use crate::limits::{MAX_PATH_BYTES, MAX_SEGMENT_BYTES};
    if path.contains('\0') {
        return Some(format!("path {:?} contains a NUL byte", clip(path, CLIP)));
    }
    if path.contains('\\') {
        return Some(format!("path {:?} contains a backslash", clip(path, CLIP)));
    }
    if path.len() > MAX_PATH_BYTES {
        return Some(format!(
            "path {:?} is {} bytes long (at most {MAX_PATH_BYTES})",
            clip(path, CLIP),
            path.len()
        ));
    }
    path.split('/').find(|s| s.len() > MAX_SEGMENT_BYTES).map(|s| {
        format!(
            "a name in path {:?} is {} bytes long (at most {MAX_SEGMENT_BYTES})",
            clip(path, CLIP),
            s.len()
        )
    })
}

/// Refuse a JSON text with a key repeated inside one object, at any depth (serde_json keeps the
/// last one silently). Called on text that already parsed, so any error here is a duplicate.
fn reject_duplicate_keys(bytes: &[u8]) -> Result<(), ApiError> {
    let found = RefCell::new(None);
    let seed = Unique {
        at: String::new(),
        found: &found,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    if seed.deserialize(&mut de).is_ok() {
        return Ok(());
    }
    let (key, at) = found
        .into_inner()
        .unwrap_or_else(|| (String::new(), String::new()));
    Err(ApiError::duplicate_manifest_key(
        &clip(&key, CLIP),
        &clip(&at, CLIP),
    ))
}

/// A JSON value whose objects are checked for duplicate keys; `at` is its JSON Pointer.
struct Unique<'a> {
    at: String,
    found: &'a RefCell<Option<(String, String)>>,
}

impl<'de> DeserializeSeed<'de> for Unique<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// JSON Pointer escaping of one reference token (RFC 6901).
fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

impl<'de> Visitor<'de> for Unique<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            let seed = Unique {
                at: format!("{}/{i}", self.at),
                found: self.found,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let seed = Unique {
                at: format!("{}/{}", self.at, pointer_token(&key)),
                found: self.found,
            };
            if !seen.insert(key.clone()) {
                *self.found.borrow_mut() = Some((key, self.at));
                return Err(serde::de::Error::custom("duplicate key"));
            }
            map.next_value_seed(seed)?;
        }
        Ok(())
    }
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
    fn duplicate_keys_at_any_depth() {
        let dup = |text: &str| {
            identity(text.as_bytes())
                .map(|_| ())
                .map_err(|e| (e.code(), e.message))
        };
        let base = r#""namespace":"@a","name":"x","version":"1.0.0""#;
        assert!(dup(&format!("{{{base}}}")).is_ok());
        assert_eq!(
            dup(&format!(r#"{{{base},"namespace":"@b"}}"#)),
            Err((
                "INVALID_MANIFEST",
                "registry.json has a duplicate key \"namespace\" at the top level".into()
            ))
        );
        // Spelled differently, the same key: escapes are decoded before comparing.
        assert_eq!(
            dup(&format!(r#"{{{base},"n\u0061me":"y"}}"#)).unwrap_err().0,
            "INVALID_MANIFEST"
        );
        assert_eq!(
            dup(&format!(
                r#"{{{base},"files":[{{"path":"a"}},{{"path":"a","path":"b"}}]}}"#
            )),
            Err((
                "INVALID_MANIFEST",
                "registry.json has a duplicate key \"path\" in /files/1".into()
            ))
        );
        assert_eq!(
            dup(&format!(
                r#"{{{base},"languages":{{"j/s":{{"x":{{"k":1,"k":2}}}}}}}}"#
            )),
            Err((
                "INVALID_MANIFEST",
                "registry.json has a duplicate key \"k\" in /languages/j~1s/x".into()
            ))
        );
        // The same key in sibling objects is fine; so is an array of equal values.
        assert!(dup(&format!(r#"{{{base},"a":{{"k":1}},"b":{{"k":1}},"c":[1,1]}}"#)).is_ok());
        // Duplicates are judged after "is JSON" and before the required fields.
        assert_eq!(dup(r#"{"x":1,"x":2}"#).unwrap_err().0, "INVALID_MANIFEST");
        assert_eq!(dup(r#"{"x":1,"x":2"#).unwrap_err().0, "UPLOAD_FAILED");
    }

    #[test]
    fn storable_paths_and_clipping() {
        assert_eq!(unstorable_path("templates/a.txt"), None);
        assert_eq!(unstorable_path(&"a".repeat(255)), None);
        assert!(unstorable_path(&"a".repeat(256))
            .unwrap()
            .contains("256 bytes long (at most 255)"));
        let deep = vec!["d".repeat(200); 6].join("/");
        assert!(unstorable_path(&deep).unwrap().contains("at most 1024"));
        assert!(unstorable_path("a\0b").is_some());
        // Found by the archive_tar fuzz target: such a name is no storage key.
        assert!(unstorable_path("templates/ts\\onfig.json")
            .unwrap()
            .contains("backslash"));
        // Messages carry a bounded prefix of the client's path.
        assert!(unstorable_path(&"x".repeat(100_000)).unwrap().len() < 400);
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("abcdef", 3), "abc...");
        assert_eq!(clip("ééé", 3), "é...");
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
