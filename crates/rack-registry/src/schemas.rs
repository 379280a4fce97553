//! The JSON Schemas bundled in the binary (SPEC §5.5), and where the served ones live.
//! `registry-item.json` and `preset.json` are written by us from the SPEC; `rack.json` is the
//! Rack project's own CLI config schema.
//!
//! One rule ties serving and uploads: the registry-item schema an upload is validated against
//! is the one `/schemas/registry-item.json` serves, byte for byte, on every backend
//! ([`SchemaStore::registry_item`]), so a client that validates with the served schema is never
//! surprised by the server.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::Value;

use crate::cache::HotCache;
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

    /// The registry-item schema uploads validate against (SPEC §5.1 check 10, §5.5): the bytes
    /// `/schemas/registry-item.json` serves (`schema/registry-item.json` in storage, a bucket
    /// included, or `SCHEMA_DIR`), read through the same hot cache, so revalidated like every
    /// mutable object and never older than what a client is served; the bundled schema when
    /// there is none. `Err`: the served file cannot be read or is not JSON (the upload is a 500
    /// and the operator's log says why).
    pub async fn registry_item(&self, main: &Arc<dyn Storage>, cache: &HotCache) -> Result<Value, String> {
        const FILE: &str = "registry-item.json";
        let served = match self.locate(main, FILE) {
            Some((storage, key)) => cache
                .get(storage.as_ref(), &key)
                .await
                .map_err(|e| format!("cannot read schema {key}: {e}"))?
                .map(|obj| (key, obj)),
            None => None,
        };
        match served {
            Some((key, obj)) => {
                serde_json::from_slice(&obj.body).map_err(|e| format!("schema {key} is not valid JSON: {e}"))
            }
            None => Ok(serde_json::from_str(bundled(FILE).expect("bundled schema"))
                .expect("bundled schema is valid JSON")),
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

    /// Uploads validate against what is served: the stored schema while there is one (edits
    /// seen at once, through the hot cache), the bundled one when it is gone, on either store.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_upload_schema_is_the_served_schema() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("schema")).unwrap();
        let main: Arc<dyn Storage> = Arc::new(LocalStorage::open(&root).unwrap());
        let cache = HotCache::new(1 << 20);
        let elsewhere = d.path().join("schemas");
        let stores = [
            (
                SchemaStore::new(Some(&root), &root.join("schema"), false),
                root.join("schema"),
            ),
            (
                SchemaStore::new(Some(&root), &elsewhere, false),
                elsewhere.clone(),
            ),
            // A bucket's store: `schema/<file>` in the main storage, never `SCHEMA_DIR`.
            (SchemaStore::new(None, &elsewhere, false), root.join("schema")),
        ];
        let bundled: Value = serde_json::from_str(bundled("registry-item.json").unwrap()).unwrap();
        for (i, (store, dir)) in stores.iter().enumerate() {
            let file = dir.join("registry-item.json");
            let _ = std::fs::remove_file(&file);
            assert_eq!(
                store.registry_item(&main, &cache).await.unwrap(),
                bundled,
                "store {i}"
            );
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(&file, format!(r#"{{"required": ["first{i}"]}}"#)).unwrap();
            let served = store.registry_item(&main, &cache).await.unwrap();
            assert_eq!(served["required"][0], format!("first{i}"), "store {i}");
            std::fs::write(&file, format!(r#"{{"required": ["second{i}"]}}"#)).unwrap();
            let served = store.registry_item(&main, &cache).await.unwrap();
            assert_eq!(
                served["required"][0],
                format!("second{i}"),
                "store {i}: an edit shows at once"
            );
            std::fs::write(&file, b"{not json").unwrap();
            let err = store.registry_item(&main, &cache).await.unwrap_err();
            assert!(err.contains("not valid JSON"), "{err}");
            std::fs::remove_file(&file).unwrap();
            assert_eq!(
                store.registry_item(&main, &cache).await.unwrap(),
                bundled,
                "store {i}"
            );
        }
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
