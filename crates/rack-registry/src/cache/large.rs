//! Objects above the hot cache's per-object limit ([`super::MAX_CACHED_OBJECT`]): streamed from
//! storage with bounded memory, never compressed on a request's path.
//!
//! - **ETags.** A strong tag is a hash of the content (SPEC §9), so the first read of a version
//!   hashes it in one streamed pass; the tag is remembered per key *and version* (a bounded
//!   map), and the stream that is served is always of the version the tag was made for (see
//!   [`LargeObjects::open`]).
//! - **Compression.** Up to `COMPRESS_MAX_BYTES`, a request that could take a compressed form
//!   gets identity while a background task compresses the object once, at a cheap level, on the
//!   blocking pool (at most [`COMPRESS_JOBS`] at a time, one per object and encoding); later
//!   requests get the compressed form from a size-bounded tier. Above that size, identity
//!   only. A HEAD never starts a compression.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use http::HeaderValue;
use sha2::{Digest, Sha256};

use super::TagMemo;
use crate::compression::{compress_fast, Encoding};
use crate::storage::{ObjectStream, Storage, StorageError};
use rack_core::etag::{etag_from_digest, with_suffix};

/// Background compressions at once (each holds one object of up to `COMPRESS_MAX_BYTES`).
pub const COMPRESS_JOBS: usize = 2;

/// Remembered ETags of large objects (each entry is a key, a version and a tag: small).
const MAX_TAGS: usize = 16_384;

/// A compressed form of a large object, for one version of it.
pub struct Variant {
    pub version: String,
    pub body: Bytes,
    pub etag_header: HeaderValue,
}

#[derive(Clone)]
struct VariantWeight;

impl quick_cache::Weighter<(String, Encoding), Arc<Variant>> for VariantWeight {
    fn weight(&self, key: &(String, Encoding), v: &Arc<Variant>) -> u64 {
        (key.0.len() + v.body.len() + 128) as u64
    }
}

pub struct LargeObjects {
    tags: TagMemo,
    variants: quick_cache::sync::Cache<(String, Encoding), Arc<Variant>, VariantWeight>,
    /// Objects up to this size may be compressed; 0: never.
    compress_max: u64,
    jobs: Arc<tokio::sync::Semaphore>,
    in_flight: Mutex<HashSet<(String, Encoding)>>,
}

impl LargeObjects {
    /// `variant_bytes`: memory for compressed forms; `compress_max`: largest object compressed.
    pub fn new(variant_bytes: u64, compress_max: u64) -> LargeObjects {
        LargeObjects {
            tags: TagMemo::new(MAX_TAGS),
            variants: quick_cache::sync::Cache::with_weighter(
                (variant_bytes / (64 * 1024)).max(16) as usize,
                variant_bytes.max(1),
                VariantWeight,
            ),
            compress_max: if variant_bytes == 0 { 0 } else { compress_max },
            jobs: Arc::new(tokio::sync::Semaphore::new(COMPRESS_JOBS)),
            in_flight: Mutex::default(),
        }
    }

    /// Whether an object of `size` bytes may ever be served compressed.
    pub fn compressible_size(&self, size: u64) -> bool {
        size <= self.compress_max
    }

    /// A stream of the object at `key` and the strong ETag of exactly the bytes it will yield
    /// (`None` if the object is gone). Hashes the object first when this version's tag is not
    /// known yet.
    pub async fn open(
        &self,
        storage: &dyn Storage,
        key: &str,
    ) -> Result<Option<(String, ObjectStream)>, StorageError> {
        // An object rewritten between the hash and the open is hashed again; one that keeps
        // changing faster than it can be read is an error rather than a loop.
        for _ in 0..3 {
            let Some(stream) = storage.get_stream(key).await? else {
                return Ok(None);
            };
            if let Some(tag) = self.tags.get(key, &stream.meta.version) {
                return Ok(Some((tag, stream)));
            }
            let version = stream.meta.version.clone();
            let tag = hash_stream(stream, key).await?;
            self.tags.insert(key, &version, &tag);
        }
        Err(StorageError::Backend(format!(
            "object {} changed during every read",
            crate::storage::bounded(key, crate::storage::MAX_LOGGED_KEY)
        )))
    }

    /// The compressed form of `key` at `version` in `enc`, if one is ready.
    pub fn variant(&self, key: &str, version: &str, enc: Encoding) -> Option<Arc<Variant>> {
        self.variants
            .get(&(key.to_owned(), enc))
            .filter(|v| v.version == version)
    }

    /// Compress `key` (expected at `version`, tagged `etag`) in `enc` in the background,
    /// unless that is already under way or every compression slot is busy (the request that
    /// asked is served identity either way; a later one will try again).
    pub fn schedule(
        self: &Arc<Self>,
        storage: Arc<dyn Storage>,
        key: &str,
        version: &str,
        etag: &str,
        enc: Encoding,
    ) {
        let job = (key.to_owned(), enc);
        let Ok(permit) = self.jobs.clone().try_acquire_owned() else {
            return;
        };
        {
            let mut busy = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if !busy.insert(job.clone()) {
                return;
            }
        }
        let (me, version, etag) = (self.clone(), version.to_owned(), etag.to_owned());
        tokio::spawn(async move {
            let made = me.compress(storage.as_ref(), &job, &version, &etag).await;
            if let Err(e) = made {
                tracing::warn!(key = %crate::storage::bounded(&job.0, crate::storage::MAX_LOGGED_KEY), error = %e, "background compression failed");
            }
            me.in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&job);
            drop(permit);
        });
    }

    async fn compress(
        &self,
        storage: &dyn Storage,
        (key, enc): &(String, Encoding),
        version: &str,
        etag: &str,
    ) -> Result<(), StorageError> {
        let Some(obj) = storage.get(key).await? else {
            return Ok(());
        };
        // Changed since the request that asked: that version's readers will ask again.
        if obj.meta.version != version || obj.meta.size > self.compress_max {
            return Ok(());
        }
        let enc = *enc;
        let body = tokio::task::spawn_blocking(move || compress_fast(enc, &obj.body))
            .await
            .map_err(|e| StorageError::Backend(format!("compression task failed: {e}")))?;
        let etag_header = HeaderValue::from_str(&with_suffix(etag, Some(enc.etag_suffix())))
            .expect("hex is a valid header value");
        self.variants.insert(
            (key.clone(), enc),
            Arc::new(Variant {
                version: version.to_owned(),
                body: Bytes::from(body),
                etag_header,
            }),
        );
        Ok(())
    }
}

/// The strong ETag of everything `stream` yields.
async fn hash_stream(mut stream: ObjectStream, key: &str) -> Result<String, StorageError> {
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.body.next().await {
        let chunk = chunk.map_err(|source| StorageError::Io {
            key: key.to_owned(),
            source,
        })?;
        hasher.update(&chunk);
    }
    Ok(etag_from_digest(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{LocalStorage, PutMode};
    use rack_core::etag::etag_of;

    #[tokio::test(flavor = "multi_thread")]
    async fn tags_follow_the_version_served() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::open(dir.path()).unwrap();
        let large = LargeObjects::new(1 << 20, 1 << 20);
        let one = Bytes::from(vec![b'a'; 300_000]);
        s.put("k", one.clone(), PutMode::Overwrite).await.unwrap();
        let (tag, stream) = large.open(&s, "k").await.unwrap().unwrap();
        assert_eq!(tag, etag_of(&one));
        assert_eq!(stream.meta.size, one.len() as u64);
        // Replaced: a new tag for the new bytes, never the remembered one.
        let two = Bytes::from(vec![b'b'; 300_001]);
        s.put("k", two.clone(), PutMode::Overwrite).await.unwrap();
        let (tag2, _) = large.open(&s, "k").await.unwrap().unwrap();
        assert_eq!(tag2, etag_of(&two));
        std::fs::remove_file(dir.path().join("k")).unwrap();
        assert!(large.open(&s, "k").await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn variants_are_made_once_in_the_background_and_only_for_their_version() {
        let dir = tempfile::tempdir().unwrap();
        let s: Arc<dyn Storage> = Arc::new(LocalStorage::open(dir.path()).unwrap());
        let large = Arc::new(LargeObjects::new(1 << 22, 1 << 21));
        let body = Bytes::from("{\"a\": 1}\n".repeat(40_000));
        s.put("k", body.clone(), PutMode::Overwrite).await.unwrap();
        let (tag, stream) = large.open(s.as_ref(), "k").await.unwrap().unwrap();
        let version = stream.meta.version.clone();
        assert!(large.variant("k", &version, Encoding::Gzip).is_none());
        large.schedule(s.clone(), "k", &version, &tag, Encoding::Gzip);
        let mut made = None;
        for _ in 0..200 {
            made = large.variant("k", &version, Encoding::Gzip);
            if made.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let made = made.expect("the variant is made");
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&made.body[..]), &mut out).unwrap();
        assert_eq!(out, body);
        assert!(made.body.len() < body.len() / 10);
        assert!(large.variant("k", "another-version", Encoding::Gzip).is_none());
        // Too large to compress: never.
        let small_tier = LargeObjects::new(1 << 22, 1000);
        assert!(!small_tier.compressible_size(300_000));
        assert!(!LargeObjects::new(0, 1 << 30).compressible_size(300_000));
    }
}
