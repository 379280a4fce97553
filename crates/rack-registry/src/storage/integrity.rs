//! Integrity records (SPEC §11.2 step 5): `.rack/integrity/<ns>/<segs>/<version>.json` holds
//! the size and SHA-256 of every file of a version, `registry.json` included, written by the
//! publisher before the version becomes visible, on every backend. `storage check` compares a
//! version's stored files with it (sizes; `--deep` hashes the bytes): a file changed or mixed in
//! after publishing, by a late writer or by hand, is found instead of served silently.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{list_all, staged_files, Result, Storage, StorageError};

/// Where records live (never served; pushed and pulled with their versions).
pub const INTEGRITY: &str = ".rack/integrity/";

/// The record's key for `version` of `registry` (`@ns/<segments>`).
pub fn record_key(registry: &str, version: &str) -> String {
    format!("{INTEGRITY}{registry}/{version}.json")
}

/// One file's size and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

impl Entry {
    pub fn of(bytes: &[u8]) -> Entry {
        Entry {
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }
}

/// A version's record: every file by its path inside the version directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub files: BTreeMap<String, Entry>,
}

impl Record {
    pub fn render(&self) -> Bytes {
        let mut out = serde_json::to_vec_pretty(self).expect("serializable");
        out.push(b'\n');
        Bytes::from(out)
    }

    pub fn parse(body: &[u8]) -> Option<Record> {
        serde_json::from_slice(body).ok()
    }

    /// The record of a local version directory (reads every file).
    pub fn of_dir(dir: &Path) -> Result<Record> {
        let mut files = BTreeMap::new();
        for rel in staged_files(dir)? {
            let bytes = std::fs::read(dir.join(&rel)).map_err(|source| StorageError::Io {
                key: rel.clone(),
                source,
            })?;
            files.insert(rel, Entry::of(&bytes));
        }
        Ok(Record { files })
    }
}

/// What is wrong with one stored version against its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// No record (published before records existed, or copied in by hand).
    NoRecord,
    /// The record is not a record.
    Unreadable,
    /// `path`: what differs.
    File(String, String),
}

/// Compare the stored files of `version` of `registry` with its record: sizes from one
/// listing, and with `deep` the SHA-256 of every file's bytes.
pub async fn verify(s: &dyn Storage, registry: &str, version: &str, deep: bool) -> Result<Vec<Finding>> {
    let Some(obj) = s.get(&record_key(registry, version)).await? else {
        return Ok(vec![Finding::NoRecord]);
    };
    let Some(record) = Record::parse(&obj.body) else {
        return Ok(vec![Finding::Unreadable]);
    };
    let prefix = format!("{registry}/{version}/");
    let stored: BTreeMap<String, u64> = list_all(s, &prefix, false)
        .await?
        .objects
        .into_iter()
        .map(|o| (o.key[prefix.len()..].to_owned(), o.size))
        .collect();
    let mut out = Vec::new();
    for (path, want) in &record.files {
        match stored.get(path) {
            None => out.push(Finding::File(path.clone(), "missing".into())),
            Some(&size) if size != want.size => out.push(Finding::File(
                path.clone(),
                format!("{size} bytes, recorded {}", want.size),
            )),
            Some(_) if deep => match s.get(&format!("{prefix}{path}")).await? {
                None => out.push(Finding::File(path.clone(), "missing".into())),
                Some(o) if Entry::of(&o.body) != *want => {
                    out.push(Finding::File(path.clone(), "bytes differ from the record".into()))
                }
                Some(_) => {}
            },
            Some(_) => {}
        }
    }
    for path in stored.keys().filter(|p| !record.files.contains_key(*p)) {
        out.push(Finding::File(
            path.clone(),
            "not in the record (added after publishing)".into(),
        ));
    }
    Ok(out)
}

/// Record the current bytes of a stored version (`storage check --repair` for a version
/// without a record). Create-only: a record written meanwhile by anyone is kept.
pub async fn record_stored(s: &dyn Storage, registry: &str, version: &str) -> Result<()> {
    let prefix = format!("{registry}/{version}/");
    let mut files = BTreeMap::new();
    for o in list_all(s, &prefix, false).await?.objects {
        if let Some(obj) = s.get(&o.key).await? {
            files.insert(o.key[prefix.len()..].to_owned(), Entry::of(&obj.body));
        }
    }
    match s
        .put(
            &record_key(registry, version),
            Record { files }.render(),
            super::PutMode::Create,
        )
        .await
    {
        Ok(_) | Err(StorageError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_hash_every_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("t")).unwrap();
        std::fs::write(dir.path().join("registry.json"), "{}").unwrap();
        std::fs::write(dir.path().join("t/a.txt"), "abc").unwrap();
        let r = Record::of_dir(dir.path()).unwrap();
        assert_eq!(r.files.len(), 2);
        assert_eq!(
            r.files["t/a.txt"].sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(r.files["registry.json"].size, 2);
        assert_eq!(Record::parse(&r.render()), Some(r));
        assert_eq!(
            record_key("@a/b/c", "1.0.0+x"),
            ".rack/integrity/@a/b/c/1.0.0+x.json"
        );
    }
}
