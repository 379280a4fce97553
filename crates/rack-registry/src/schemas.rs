//! The JSON Schemas bundled in the binary (SPEC §5.5). `registry-item.json` and `preset.json`
//! are written by us from the SPEC; `rack.json` is the Rack project's own CLI config schema.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::storage::{LocalStorage, Storage};

/// `(file name, contents)` of every bundled schema, in `/schemas/` allowlist order.
pub const BUNDLED: [(&str, &str); 3] = [
    (
        "registry-item.json",
        include_str!("../schemas/registry-item.json"),
    ),
    ("preset.json", include_str!("../schemas/preset.json")),
    ("rack.json", include_str!("../schemas/rack.json")),
];

pub fn bundled(file: &str) -> Option<&'static str> {
    BUNDLED
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, body)| *body)
}

/// Where `/schemas/<file>` is served from (SPEC §3: `schema/<file>` in storage, or `SCHEMA_DIR`
/// on disk). Either way through a [`Storage`] and so through the hot cache, like presets:
/// compressed once, revalidated on every read, never stale.
pub enum SchemaStore {
    /// `SCHEMA_DIR` is the storage's own `schema/` directory (the default): key
    /// `schema/<file>` in the main storage, which a bucket backend serves too.
    Storage,
    /// `SCHEMA_DIR` is elsewhere: a local store rooted there, key `<file>` (no `/`, so it never
    /// meets a key of the main storage in the shared hot cache). Opened at the first request
    /// that finds the directory, so one created after startup is served too.
    Dir {
        path: PathBuf,
        watch: bool,
        store: OnceLock<Arc<dyn Storage>>,
    },
}

impl SchemaStore {
    /// The store for `schema_dir`, given the local storage root (`None` for a bucket, whose
    /// schemas are always `schema/<file>` in the bucket).
    pub fn new(storage_root: Option<&Path>, schema_dir: &Path, watch: bool) -> SchemaStore {
        let same = |a: &Path, b: &Path| {
            a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
        };
        match storage_root {
            Some(root) if !same(&root.join("schema"), schema_dir) => SchemaStore::Dir {
                path: schema_dir.to_owned(),
                watch,
                store: OnceLock::new(),
            },
            _ => SchemaStore::Storage,
        }
    }

    /// The storage and key holding `file` (an allowlisted name); `None` while a separate
    /// `SCHEMA_DIR` does not exist.
    pub fn locate(&self, main: &Arc<dyn Storage>, file: &str) -> Option<(Arc<dyn Storage>, String)> {
        match self {
            SchemaStore::Storage => Some((main.clone(), rack_core::layout::schema_key(file))),
            SchemaStore::Dir { path, watch, store } => {
                let store = match store.get() {
                    Some(s) => s.clone(),
                    None => {
                        let local = LocalStorage::open(path).ok()?;
                        let local: Arc<dyn Storage> =
                            Arc::new(if *watch { local.with_watcher() } else { local });
                        store.get_or_init(|| local).clone()
                    }
                };
                Some((store, file.to_owned()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn schemas_come_from_storage_unless_schema_dir_is_elsewhere() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("schema")).unwrap();
        std::fs::write(root.join("schema/rack.json"), b"in storage").unwrap();
        let main: Arc<dyn Storage> = Arc::new(LocalStorage::open(&root).unwrap());

        let default = SchemaStore::new(Some(&root), &root.join("schema"), false);
        let (store, key) = default.locate(&main, "rack.json").unwrap();
        assert_eq!(key, "schema/rack.json");
        assert_eq!(&store.get(&key).await.unwrap().unwrap().body[..], b"in storage");
        let bucket = SchemaStore::new(None, Path::new("/anywhere"), false);
        assert_eq!(bucket.locate(&main, "rack.json").unwrap().1, "schema/rack.json");

        let elsewhere = d.path().join("schemas");
        let separate = SchemaStore::new(Some(&root), &elsewhere, false);
        assert!(separate.locate(&main, "rack.json").is_none(), "not there yet");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("rack.json"), b"elsewhere").unwrap();
        let (store, key) = separate.locate(&main, "rack.json").unwrap();
        assert_eq!(key, "rack.json");
        assert_eq!(&store.get(&key).await.unwrap().unwrap().body[..], b"elsewhere");
    }

    #[test]
    fn bundled_files_match_the_allowlist_and_parse() {
        let names: Vec<_> = super::BUNDLED.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, rack_core::route::SCHEMA_FILES);
        for (name, body) in super::BUNDLED {
            serde_json::from_str::<serde_json::Value>(body).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
