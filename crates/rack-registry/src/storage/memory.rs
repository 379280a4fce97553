//! An in-memory object store with atomic conditional writes: the storage contract's third
//! backend and the world of the publish protocol's simulation (`tests/publish_simulation.rs`).
//!
//! It behaves as a bucket does (ETags that change on every write, `Last-Modified` on its own
//! clock, create-only and compare-and-swap puts decided under one lock, so no race ever has two
//! winners), and lets a test come between the caller and every call through a [`Hook`]: pause
//! it (the hook's future simply waits), fail it before it is applied, or apply it and report a
//! failure (a lost answer). Its clock is tokio's, so a test on a paused runtime moves the
//! bucket's clock and the publishers' together, and can offset the bucket's.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    publish, validate_key, validate_prefix, ListPage, Object, ObjectMeta, PutMode, Result, Storage,
    StorageError,
};

/// What a [`Hook`] sees of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Get(String),
    Head(String),
    List(String),
    Put(String, PutMode),
    Delete(String),
}

/// What becomes of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Applied and answered.
    None,
    /// Not applied; the caller gets an error.
    Fail,
    /// Applied, but the caller gets an error (the answer was lost).
    LoseAnswer,
}

/// Comes between the caller and every call; its future may wait as long as it likes (a stall).
#[async_trait]
pub trait Hook: Send + Sync + 'static {
    async fn call(&self, op: &Op) -> Fault;
}

struct Stored {
    body: Bytes,
    etag: String,
    modified_ms: i64,
}

pub struct MemoryStorage {
    objects: Mutex<BTreeMap<String, Stored>>,
    etags: AtomicU64,
    /// The bucket's clock: tokio's clock since `epoch`, plus `base_ms`.
    epoch: tokio::time::Instant,
    base_ms: AtomicI64,
    hook: Option<Arc<dyn Hook>>,
    timing: publish::Timing,
}

impl Default for MemoryStorage {
    fn default() -> Self {
        MemoryStorage::new()
    }
}

impl MemoryStorage {
    pub fn new() -> MemoryStorage {
        MemoryStorage {
            objects: Mutex::new(BTreeMap::new()),
            etags: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
            base_ms: AtomicI64::new(1_800_000_000_000),
            hook: None,
            timing: publish::Timing::default(),
        }
    }

    /// Every call goes through `hook` first.
    pub fn with_hook(mut self, hook: Arc<dyn Hook>) -> MemoryStorage {
        self.hook = Some(hook);
        self
    }

    /// Lease timings of [`Storage::publish_dir`].
    pub fn with_timing(mut self, t: publish::Timing) -> MemoryStorage {
        self.timing = t;
        self
    }

    pub fn timing(&self) -> publish::Timing {
        self.timing
    }

    /// Move the bucket's clock by `ms` (a bucket whose clock jumps; replicas' clocks are not
    /// the bucket's concern).
    pub fn shift_clock(&self, ms: i64) {
        self.base_ms.fetch_add(ms, Ordering::SeqCst);
    }

    fn now(&self) -> i64 {
        self.base_ms.load(Ordering::SeqCst) + self.epoch.elapsed().as_millis() as i64
    }

    /// Every key and its bytes (for invariant checks), without going through the hook.
    pub fn snapshot(&self) -> BTreeMap<String, Bytes> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.body.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Stored>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn gate(&self, op: Op) -> Fault {
        match &self.hook {
            Some(h) => h.call(&op).await,
            None => Fault::None,
        }
    }

    fn meta(key: &str, o: &Stored) -> ObjectMeta {
        ObjectMeta {
            key: key.to_owned(),
            size: o.body.len() as u64,
            version: o.etag.clone(),
            modified_ms: Some(o.modified_ms),
        }
    }
}

fn failed(key: &str) -> StorageError {
    StorageError::Backend(format!("{key}: injected failure"))
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn get(&self, key: &str) -> Result<Option<Object>> {
        validate_key(key)?;
        if self.gate(Op::Get(key.to_owned())).await != Fault::None {
            return Err(failed(key));
        }
        Ok(self.lock().get(key).map(|o| Object {
            meta: MemoryStorage::meta(key, o),
            body: o.body.clone(),
        }))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        validate_key(key)?;
        if self.gate(Op::Head(key.to_owned())).await != Fault::None {
            return Err(failed(key));
        }
        Ok(self.lock().get(key).map(|o| MemoryStorage::meta(key, o)))
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: bool,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage> {
        validate_prefix(prefix)?;
        if self.gate(Op::List(prefix.to_owned())).await != Fault::None {
            return Err(failed(prefix));
        }
        let objects = self.lock();
        let mut page = ListPage::default();
        let limit = limit.clamp(1, 1000);
        let mut count = 0;
        let mut last: Option<String> = None;
        for (k, o) in objects.range(prefix.to_owned()..) {
            if !k.starts_with(prefix) {
                break;
            }
            let entry = match delimiter.then(|| k[prefix.len()..].find('/')).flatten() {
                Some(i) => Err(format!("{}/", &k[..prefix.len() + i])),
                None => Ok(k.clone()),
            };
            let name = match &entry {
                Ok(k) | Err(k) => k.clone(),
            };
            if start_after.is_some_and(|s| name.as_str() <= s) || last.as_deref() == Some(name.as_str()) {
                continue;
            }
            if count == limit {
                page.next = last.clone();
                break;
            }
            match entry {
                Ok(k) => page.objects.push(MemoryStorage::meta(&k, o)),
                Err(p) => page.prefixes.push(p),
            }
            count += 1;
            last = Some(name);
        }
        Ok(page)
    }

    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        validate_key(key)?;
        if key.ends_with('/') {
            return Err(StorageError::InvalidKey(key.to_owned()));
        }
        let fault = self.gate(Op::Put(key.to_owned(), mode.clone())).await;
        if fault == Fault::Fail {
            return Err(failed(key));
        }
        let mut objects = self.lock();
        match (&mode, objects.get(key)) {
            (PutMode::Create, Some(_)) => return Err(StorageError::AlreadyExists(key.to_owned())),
            (PutMode::IfVersion(v), Some(o)) if &o.etag != v => {
                return Err(StorageError::PreconditionFailed(key.to_owned()))
            }
            (PutMode::IfVersion(_), None) => return Err(StorageError::PreconditionFailed(key.to_owned())),
            _ => {}
        }
        let stored = Stored {
            body,
            etag: format!("\"m{}\"", self.etags.fetch_add(1, Ordering::SeqCst)),
            modified_ms: self.now(),
        };
        let meta = MemoryStorage::meta(key, &stored);
        objects.insert(key.to_owned(), stored);
        match fault {
            Fault::LoseAnswer => Err(failed(key)),
            _ => Ok(meta),
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        validate_key(prefix)?;
        let fault = self.gate(Op::Delete(prefix.to_owned())).await;
        if fault == Fault::Fail {
            return Err(failed(prefix));
        }
        let mut objects = self.lock();
        let keys: Vec<String> = if prefix.ends_with('/') {
            objects
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, _)| k.clone())
                .collect()
        } else {
            objects
                .contains_key(prefix)
                .then(|| prefix.to_owned())
                .into_iter()
                .collect()
        };
        for k in &keys {
            objects.remove(k);
        }
        match fault {
            Fault::LoseAnswer => Err(failed(prefix)),
            _ => Ok(keys.len() as u64),
        }
    }

    async fn publish_dir(&self, staged: &Path, dest: &str, announce: &dyn publish::Announce) -> Result<()> {
        publish::publish_dir(self, staged, dest, &self.timing, announce).await
    }

    fn publish_lists_version(&self) -> bool {
        true
    }

    fn publish_timing(&self) -> Option<publish::Timing> {
        Some(self.timing())
    }

    async fn store_now_ms(&self) -> Result<i64> {
        Ok(self.now())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}
