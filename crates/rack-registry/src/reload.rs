//! Live reload of configuration files (`auth.json`, `webhooks.json`): one mechanism for all.
//!
//! A small task re-reads the file every interval and compares its *content* (SHA-256) with the
//! last one seen, so in-place edits, atomic replacement by rename, and edits that keep the mtime
//! are all noticed (SPEC §14: by content, not by inode or mtime alone). A changed file is parsed;
//! if it is valid it replaces the live value at once, otherwise it is refused, logged with the
//! reason and counted, and the last good value stays in force. Polling a small file once a
//! second costs nothing measurable and needs no platform-specific notification API.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};

use serde_json::json;

use crate::audit::Audit;
use crate::metrics::Metrics;

/// How long to wait before reading a file again when it does not parse.
const SETTLE: Duration = Duration::from_millis(250);

/// A value that can be swapped whole while readers hold the previous one.
pub struct Live<T>(RwLock<Arc<T>>);

impl<T> Live<T> {
    pub fn new(value: T) -> Live<T> {
        Live(RwLock::new(Arc::new(value)))
    }

    pub fn get(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, value: T) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
    }
}

impl<T: Default> Default for Live<T> {
    fn default() -> Self {
        Live::new(T::default())
    }
}

/// The content of a config file: `None` when it does not exist.
pub type FileContent = Option<String>;

/// Read a config file; a missing file is `Ok(None)`.
pub fn read(path: &std::path::Path) -> Result<FileContent, String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn fingerprint(content: &FileContent) -> Option<[u8; 32]> {
    content.as_ref().map(|c| Sha256::digest(c.as_bytes()).into())
}

/// Turns a file's content (or its absence) into a value, or says why it is refused.
pub type Parser<T> = Box<dyn Fn(&FileContent) -> Result<T, String> + Send + Sync>;
/// Runs after a new value went live.
pub type OnChange<T> = Box<dyn Fn(&T) + Send + Sync>;
/// Reads the content from somewhere else than `path` (an object in a bucket).
pub type Reader =
    Box<dyn Fn() -> futures::future::BoxFuture<'static, Result<FileContent, String>> + Send + Sync>;

/// What to watch and how to understand it.
pub struct Watch<T> {
    /// Short name for logs and the `file` metric label (`auth`, `webhooks`).
    pub name: &'static str,
    pub path: PathBuf,
    pub interval: Duration,
    /// Turn the file's content (or its absence) into a value, or say why it is refused.
    pub parse: Parser<T>,
    /// Called after a new value went live (e.g. to log its rejected namespaces).
    pub on_change: Option<OnChange<T>>,
    /// Where the content comes from instead of the file at `path` (`AUTH_SOURCE=bucket`);
    /// `path` then only names it in logs.
    pub reader: Option<Reader>,
}

impl<T> Watch<T> {
    async fn read(&self) -> Result<FileContent, String> {
        match &self.reader {
            Some(r) => r().await,
            None => {
                let path = self.path.clone();
                tokio::task::spawn_blocking(move || read(&path))
                    .await
                    .map_err(|e| e.to_string())?
            }
        }
    }
}

/// Spawn the watcher. `initial` is the content the live value was built from at startup.
pub fn spawn<T: Send + Sync + 'static>(
    watch: Watch<T>,
    live: Arc<Live<T>>,
    initial: &FileContent,
    metrics: Arc<Metrics>,
    audit: Arc<Audit>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let mut last = fingerprint(initial);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(watch.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let content = match watch.read().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(file = watch.name, error = %e, "config file unreadable; keeping the last good one");
                    continue;
                }
            };
            let mut content = content;
            let mut parsed = (watch.parse)(&content);
            if parsed.is_err() && fingerprint(&content) != last {
                // An editor writing in place may have been caught half-way (truncated, then
                // written): look again shortly before refusing, so that a good edit is never
                // counted as a refused one.
                tokio::time::sleep(SETTLE).await;
                if let Ok(again) = watch.read().await {
                    if again != content {
                        parsed = (watch.parse)(&again);
                        content = again;
                    }
                }
            }
            let fp = fingerprint(&content);
            if fp == last {
                continue;
            }
            last = fp;
            match parsed {
                Ok(value) => {
                    if let Some(f) = &watch.on_change {
                        f(&value);
                    }
                    live.set(value);
                    metrics
                        .config_reloads
                        .with_label_values(&[watch.name, "success"])
                        .inc();
                    tracing::info!(file = watch.name, path = %watch.path.display(), "config reloaded");
                    audit.record(
                        "config_reload",
                        &[("file", json!(watch.name)), ("outcome", json!("accepted"))],
                    );
                }
                Err(reason) => {
                    metrics
                        .config_reloads
                        .with_label_values(&[watch.name, "failure"])
                        .inc();
                    tracing::error!(
                        file = watch.name,
                        path = %watch.path.display(),
                        reason = %reason,
                        "config change refused; the last good configuration stays in force"
                    );
                    audit.record(
                        "config_reload",
                        &[
                            ("file", json!(watch.name)),
                            ("outcome", json!("refused")),
                            ("reason", json!(reason)),
                        ],
                    );
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn picks_up_edits_and_refuses_broken_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.txt");
        std::fs::write(&path, "1").unwrap();
        let initial = read(&path).unwrap();
        let live = Arc::new(Live::new(1u32));
        let metrics = Arc::new(Metrics::new());
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let watch = Watch {
            name: "auth",
            path: path.clone(),
            interval: Duration::from_millis(20),
            parse: Box::new(|c: &FileContent| {
                c.as_deref()
                    .unwrap_or("0")
                    .trim()
                    .parse::<u32>()
                    .map_err(|e| e.to_string())
            }),
            on_change: None,
            reader: None,
        };
        spawn(
            watch,
            live.clone(),
            &initial,
            metrics.clone(),
            Arc::new(Audit::stdout()),
            rx,
        );
        let wait_for = |want: u32| {
            let live = live.clone();
            async move {
                for _ in 0..200 {
                    if *live.get() == want {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                false
            }
        };
        std::fs::write(&path, "2").unwrap();
        assert!(wait_for(2).await, "in-place edit");
        let tmp = dir.path().join("n.tmp");
        std::fs::write(&tmp, "3").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(wait_for(3).await, "atomic replace");
        std::fs::write(&path, "not a number").unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(*live.get(), 3, "broken edit keeps the last good value");
        assert!(metrics
            .render()
            .contains("registry_config_reloads_total{file=\"auth\",outcome=\"failure\"} 1"));
        std::fs::remove_file(&path).unwrap();
        assert!(wait_for(0).await, "removal is a change too");
    }
}
