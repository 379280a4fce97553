//! Webhooks (SPEC §7, §14): tell other systems when a version appears, and never lose a delivery.
//!
//! Three parts:
//!
//! - [`config`]: `webhooks.json`, parsed and validated (pure). It is live-reloaded with the same
//!   mechanism as `auth.json` ([`crate::reload`]): a broken edit is refused and the last good
//!   configuration stays in force.
//! - [`outbox`]: one fsynced JSON file per pending delivery. `Webhooks::accept` (the
//!   [`PublishSink`], awaited before the upload answers 201) builds the deliveries of an event
//!   (`uploaded` then `version.created`, to every enabled webhook subscribed to each), writes
//!   them to the outbox and hands them to the worker. Nothing is sent inline, so an upload never
//!   waits for a receiver; and since the files exist before the 201, a crash right after it
//!   still delivers (after the restart).
//! - the worker ([`start`]): one task that owns the schedule of every pending delivery (loaded
//!   from the outbox at startup, then fed by the sink) and runs attempts ([`delivery`]) as
//!   separate tasks, at most `WEBHOOK_CONCURRENCY` at a time. After an attempt the outbox file is
//!   removed (2xx, or the last attempt failed) or rewritten with the attempt count and the time
//!   of the next attempt (`WEBHOOK_BACKOFF_BASE_MS` doubled after every failure: 2 s, 4 s, 8 s
//!   by default).
//!
//! Where the deliveries live is behind [`store::OutboxStore`]: the local directory above
//! ([`store::LocalOutbox`]) on disk deployments and whenever `WEBHOOK_OUTBOX_DIR` is set, or the
//! bucket ([`bucket_outbox`], SPEC §11.4) with a bucket backend. In the bucket every attempt is
//! preceded by a claim (compare-and-swap), and a scan task lists the outbox for deliveries a dead
//! replica left claimed, at an interval that backs off while it is empty ([`schedule`]).
//!
//! Everything that goes on the wire (body, timestamp, signature, delivery id) is fixed when the
//! delivery is queued, so every attempt, before or after a restart, sends identical bytes; the
//! secret itself is never written to disk. Ordering: the `version.created` delivery to a webhook
//! names the `uploaded` delivery to the same webhook in `after`, and is not started before the
//! first attempt of that one has completed (whatever its outcome). Deliveries are at least once:
//! a crash during an attempt repeats it, and receivers deduplicate on `X-Webhook-Delivery`.
//!
//! On shutdown the worker stops starting attempts, gives in-flight ones a short grace to finish,
//! and leaves everything pending in the outbox for the next start (in the bucket, with its
//! claims handed back so that another replica takes them at once). A delivery found after a
//! restart gets at least one more attempt, even if the crash came between its last attempt and
//! the removal of its file.

pub mod bucket_outbox;
pub mod config;
pub mod delivery;
pub mod outbox;
pub mod schedule;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::WebhookSettings;
use crate::events::{PublishEvent, PublishSink};
use crate::metrics::Metrics;
use crate::reload::{self, FileContent, Live, Watch};
use config::redact_url;
pub use config::{WebhookConfig, EVENTS};
use delivery::{now_ms, Outcome};
use outbox::{Delivery, Outbox};
use store::{LocalOutbox, OutboxStore};

use crate::storage::Storage;

/// Longest wait for in-flight attempts on shutdown before they are abandoned (their deliveries
/// stay in the outbox and are attempted again after the next start).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How often an idle scan (no webhook enabled) looks at the live configuration for one.
const CONFIG_LOOK: Duration = Duration::from_secs(1);

/// Load `webhooks.json` at startup: a missing file disables webhooks; a malformed one is an
/// error naming the file and the problem.
pub fn load_config(path: &Path) -> Result<(WebhookConfig, FileContent), String> {
    let content = reload::read(path).map_err(|e| format!("WEBHOOK_CONFIG_PATH: {e}"))?;
    let parsed = config::parse(&content).map_err(|e| {
        format!(
            "WEBHOOK_CONFIG_PATH: webhook config {} is malformed: {e}",
            path.display()
        )
    })?;
    match &content {
        None => tracing::info!(path = %path.display(), "webhook config not found: webhooks are disabled"),
        Some(_) => log_loaded(&parsed),
    }
    Ok((parsed, content))
}

fn log_loaded(c: &WebhookConfig) {
    tracing::info!(
        webhooks = c.webhooks.len(),
        enabled = c.enabled_count(),
        "webhook config loaded"
    );
}

/// The watch of `webhooks.json` for live reload.
pub fn watch(path: &Path, interval: Duration) -> Watch<WebhookConfig> {
    Watch {
        name: "webhooks",
        path: path.to_owned(),
        interval,
        parse: Box::new(config::parse),
        on_change: Some(Box::new(log_loaded)),
        reader: None,
    }
}

/// The publish sink: queues deliveries durably and hands them to the worker.
pub struct Webhooks {
    config: Arc<Live<WebhookConfig>>,
    outbox: Arc<dyn OutboxStore>,
    tx: mpsc::UnboundedSender<Delivery>,
    seq: AtomicU64,
}

/// Where the pending deliveries live.
pub enum OutboxPlace {
    /// A local directory (`WEBHOOK_OUTBOX_DIR`, or `.webhooks` in a local storage root).
    Dir(PathBuf),
    /// The bucket, shared by every replica (SPEC §11.4): a bucket backend without
    /// `WEBHOOK_OUTBOX_DIR`.
    Bucket(Arc<dyn Storage>),
}

/// Open the outbox, load what a previous run left pending, and start the worker. The worker ends
/// when `shutdown` turns true; await the handle to let in-flight attempts settle.
pub fn start(
    config: Arc<Live<WebhookConfig>>,
    place: OutboxPlace,
    settings: WebhookSettings,
    metrics: Arc<Metrics>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(Arc<Webhooks>, tokio::task::JoinHandle<()>), String> {
    let (outbox, pending): (Arc<dyn OutboxStore>, Vec<Delivery>) = match place {
        OutboxPlace::Dir(outbox_dir) => {
            let describe = |e: std::io::Error| format!("WEBHOOK_OUTBOX_DIR {}: {e}", outbox_dir.display());
            let outbox = Arc::new(Outbox::open(&outbox_dir).map_err(describe)?);
            if config.get().enabled_count() > 0 {
                // Fail at startup, not at the first upload, if the outbox cannot be created.
                outbox.ensure_dir().map_err(describe)?;
            }
            let (mut pending, corrupt) = outbox.load().map_err(describe)?;
            for c in &corrupt {
                tracing::error!(file = %c, "unreadable webhook outbox file set aside (renamed to .corrupt)");
            }
            for d in &mut pending {
                // At least one more attempt after a restart.
                d.attempts = d.attempts.min(settings.max_attempts.saturating_sub(1));
            }
            (Arc::new(LocalOutbox(outbox)), pending)
        }
        // Found by the first list of the outbox, right after the start.
        OutboxPlace::Bucket(storage) => (
            Arc::new(bucket_outbox::BucketOutbox::new(storage, settings.claim)),
            Vec::new(),
        ),
    };
    if !pending.is_empty() {
        tracing::info!(pending = pending.len(), "resuming pending webhook deliveries");
    }
    for outcome in ["success", "failure", "retry"] {
        metrics.webhook_deliveries.with_label_values(&[outcome]);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let known: Arc<Mutex<HashSet<String>>> = Arc::default();
    if outbox.shared() {
        tracing::info!(outbox = %outbox.describe(), "webhook outbox in the bucket, shared by every replica");
        tokio::spawn(scan_loop(
            config.clone(),
            outbox.clone(),
            known.clone(),
            tx.clone(),
            schedule::PollBackoff::new(settings.poll_min, settings.poll_max),
            shutdown.clone(),
        ));
    }
    let worker = Worker {
        client: delivery::client(settings.timeout),
        settings,
        outbox: outbox.clone(),
        metrics,
        slots: HashMap::new(),
        known,
        busy: 0,
    };
    let handle = tokio::spawn(worker.run(pending, rx, shutdown));
    Ok((
        Arc::new(Webhooks {
            config,
            outbox,
            tx,
            seq: AtomicU64::new(0),
        }),
        handle,
    ))
}

/// A shared outbox's look for deliveries no replica is working on (left by a dead replica, or
/// by this one before a restart): list, hand what may be taken to the worker, wait, again. The
/// wait backs off while the outbox is empty, so an idle replica costs a few list calls an hour.
/// With no enabled webhook it costs none: once a list finds the outbox empty, the scan idles
/// until a reload enables a webhook ([`schedule::keep_listing`]).
async fn scan_loop(
    config: Arc<Live<WebhookConfig>>,
    outbox: Arc<dyn OutboxStore>,
    known: Arc<Mutex<HashSet<String>>>,
    tx: mpsc::UnboundedSender<Delivery>,
    mut poll: schedule::PollBackoff,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        let snapshot = known.lock().unwrap().clone();
        let (wait, pending) = match outbox.scan(&snapshot).await {
            Ok(scan) => {
                if !scan.found.is_empty() {
                    tracing::info!(found = scan.found.len(), "taking over pending webhook deliveries");
                }
                for d in scan.found {
                    if tx.send(d).is_err() {
                        return; // the worker stopped
                    }
                }
                (poll.next(scan.pending), Some(scan.pending))
            }
            Err(e) => {
                tracing::warn!(error = %e, outbox = %outbox.describe(), "cannot list the webhook outbox");
                (poll.next(0), None)
            }
        };
        if !schedule::keep_listing(config.get().enabled_count() > 0, pending) {
            tracing::info!("no webhook enabled and the outbox is empty: not listing it until one is");
            // The configuration is live-reloaded in memory: looking at it costs no request.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(CONFIG_LOOK) => {}
                    changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { return },
                }
                if config.get().enabled_count() > 0 {
                    break;
                }
            }
            tracing::info!("a webhook is enabled: listing the outbox again");
            poll.reset();
            continue;
        }
        tracing::debug!(wait_ms = wait.as_millis() as u64, "next webhook outbox list");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = shutdown.changed() => if changed.is_err() { return },
        }
    }
}

impl Webhooks {
    /// The deliveries of one event under the current configuration, with unique ids.
    fn build(&self, event: &PublishEvent) -> Vec<Delivery> {
        let cfg = self.config.get();
        let at = time::OffsetDateTime::now_utc();
        let mut batch: Vec<Delivery> = Vec::new();
        let mut ids = HashSet::new();
        for hook in cfg.webhooks.iter().filter(|h| h.enabled) {
            // A lifecycle change is one event of its own (SPEC §18).
            if let Some(change) = &event.lifecycle {
                if hook.wants(change.event) {
                    let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                    let mut d = delivery::build(hook, change.event, event, at, seq, None);
                    while ids.contains(&d.id) || self.outbox.exists(&d.id) {
                        d.id = outbox::delivery_id(d.created_ms);
                    }
                    ids.insert(d.id.clone());
                    batch.push(d);
                }
                continue;
            }
            let mut uploaded = None;
            for name in EVENTS {
                if !hook.wants(name) {
                    continue;
                }
                let after = if name == "version.created" {
                    uploaded.clone()
                } else {
                    None
                };
                let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                let mut d = delivery::build(hook, name, event, at, seq, after);
                while ids.contains(&d.id) || self.outbox.exists(&d.id) {
                    d.id = outbox::delivery_id(d.created_ms);
                }
                ids.insert(d.id.clone());
                if name == "uploaded" {
                    uploaded = Some(d.id.clone());
                }
                batch.push(d);
            }
        }
        batch
    }
}

#[async_trait]
impl PublishSink for Webhooks {
    async fn accept(&self, event: &PublishEvent) {
        let batch = self.build(event);
        if batch.is_empty() {
            return;
        }
        // Persisting and handing over happen together in one task, which runs to completion
        // even if the upload's future is dropped (client gone) while awaiting it: a written
        // delivery always reaches the worker too.
        let outbox = self.outbox.clone();
        let tx = self.tx.clone();
        let handover = tokio::spawn(async move {
            if let Err(e) = outbox.enqueue(&batch).await {
                tracing::error!(
                    error = %e,
                    outbox = %outbox.describe(),
                    deliveries = batch.len(),
                    "cannot write webhook deliveries to the outbox: they are kept in memory only and lost if the server stops"
                );
            }
            for d in batch {
                tracing::debug!(delivery = %d.id, event = %d.event, webhook = d.webhook, "webhook delivery queued");
                // A closed channel means the worker stopped (shutdown): the delivery is picked
                // up on the next start.
                let _ = tx.send(d);
            }
        });
        if let Err(e) = handover.await {
            tracing::error!(error = %e, "webhook outbox write task failed");
        }
    }
}

/// Delay before the attempt after `attempts` failed ones: base, 2 x base, 4 x base, ...
pub fn backoff(base: Duration, attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(20);
    base.saturating_mul(factor)
}

/// What an attempt task reports back.
struct Report {
    /// The delivery after the attempt (attempt count and next time updated).
    delivery: Delivery,
    /// Finished (delivered, or given up): forget it.
    done: bool,
}

struct Slot {
    delivery: Delivery,
    busy: bool,
}

struct Worker {
    client: reqwest::Client,
    settings: WebhookSettings,
    outbox: Arc<dyn OutboxStore>,
    metrics: Arc<Metrics>,
    slots: HashMap<String, Slot>,
    /// The ids in `slots`, for the scan of a shared outbox (which skips them).
    known: Arc<Mutex<HashSet<String>>>,
    busy: usize,
}

impl Worker {
    fn insert(&mut self, d: Delivery) {
        // A scan of a shared outbox may offer a delivery this replica already schedules.
        if self.slots.contains_key(&d.id) {
            return;
        }
        self.known.lock().unwrap().insert(d.id.clone());
        self.slots.insert(
            d.id.clone(),
            Slot {
                delivery: d,
                busy: false,
            },
        );
    }

    /// May `d` start (as far as ordering goes)?
    fn unblocked(&self, d: &Delivery) -> bool {
        match &d.after {
            None => true,
            Some(first) => self.slots.get(first).is_none_or(|s| s.delivery.attempts >= 1),
        }
    }

    /// Start every due delivery there is room for; return when the next one is due.
    fn start_due(&mut self, tasks: &mut JoinSet<Report>) -> Option<i64> {
        let now = now_ms();
        let mut ready: Vec<(i64, i64, u64, String)> = self
            .slots
            .values()
            .filter(|s| !s.busy && self.unblocked(&s.delivery))
            .map(|s| {
                let d = &s.delivery;
                (d.next_attempt_ms, d.created_ms, d.seq, d.id.clone())
            })
            .collect();
        ready.sort();
        for (at, _, _, id) in ready {
            if at > now {
                return Some(at);
            }
            if self.busy >= self.settings.concurrency {
                return None;
            }
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            slot.busy = true;
            self.busy += 1;
            tasks.spawn(attempt(
                self.client.clone(),
                self.outbox.clone(),
                self.metrics.clone(),
                self.settings.clone(),
                slot.delivery.clone(),
            ));
        }
        None
    }

    fn finish(&mut self, r: Report) {
        self.busy = self.busy.saturating_sub(1);
        if r.done {
            self.slots.remove(&r.delivery.id);
            self.known.lock().unwrap().remove(&r.delivery.id);
        } else if let Some(slot) = self.slots.get_mut(&r.delivery.id) {
            slot.delivery = r.delivery;
            slot.busy = false;
        }
    }

    async fn run(
        mut self,
        initial: Vec<Delivery>,
        mut rx: mpsc::UnboundedReceiver<Delivery>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        for d in initial {
            self.insert(d);
        }
        let mut tasks: JoinSet<Report> = JoinSet::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let next = self.start_due(&mut tasks);
            let sleep = async {
                match next {
                    Some(at) => {
                        let wait = (at - now_ms()).max(0) as u64;
                        tokio::time::sleep(Duration::from_millis(wait)).await
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                received = rx.recv() => match received {
                    Some(d) => self.insert(d),
                    None => break,
                },
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    match joined {
                        Ok(report) => self.finish(report),
                        Err(e) => {
                            // Cannot happen short of a panic in an attempt: count the slot free;
                            // the delivery stays busy in memory and is retried after a restart.
                            self.busy = self.busy.saturating_sub(1);
                            tracing::error!(error = %e, "webhook attempt task failed");
                        }
                    }
                }
                _ = sleep => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break; // the sender is gone: the server is stopping
                    }
                }
            }
        }
        let in_flight = tasks.len();
        if in_flight > 0 {
            tracing::info!(in_flight, "waiting for in-flight webhook attempts");
            let grace = SHUTDOWN_GRACE.min(self.settings.timeout + Duration::from_secs(1));
            let _ = tokio::time::timeout(grace, async {
                while let Some(joined) = tasks.join_next().await {
                    if let Ok(report) = joined {
                        self.finish(report);
                    }
                }
            })
            .await;
            tasks.abort_all();
            // Aborted attempts stop at their next await: wait, so that what they hold is known.
            while tasks.join_next().await.is_some() {}
        }
        // Claims of a shared outbox are handed back at once, so another replica need not wait
        // for them to expire; bounded like the attempts (past it, the claims simply expire).
        if self.outbox.shared() {
            match tokio::time::timeout(SHUTDOWN_GRACE, self.outbox.release_claims()).await {
                Ok(0) => {}
                Ok(released) => {
                    tracing::info!(released, "webhook deliveries handed back to the other replicas")
                }
                Err(_) => {
                    tracing::warn!("releasing webhook claims took too long: the rest expire on their own")
                }
            }
        }
        let pending = self.slots.len();
        tracing::info!(
            pending,
            "webhook worker stopped; pending deliveries stay in the outbox"
        );
    }
}

/// One attempt of `d`, then the outbox brought up to date, metrics and logs.
async fn attempt(
    client: reqwest::Client,
    outbox: Arc<dyn OutboxStore>,
    metrics: Arc<Metrics>,
    settings: WebhookSettings,
    d: Delivery,
) -> Report {
    let mut d = match outbox.claim(&d).await {
        Ok(Some(stored)) => stored,
        Ok(None) => {
            tracing::debug!(delivery = %d.id, "webhook delivery done or held by another replica");
            return Report {
                delivery: d,
                done: true,
            };
        }
        Err(e) => {
            // The outbox cannot be reached: no attempt without a claim; try again later.
            let mut d = d;
            let delay = settings.backoff_base.max(Duration::from_secs(1));
            d.next_attempt_ms = now_ms() + delay.as_millis() as i64;
            tracing::warn!(delivery = %d.id, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot claim a webhook delivery");
            return Report {
                delivery: d,
                done: false,
            };
        }
    };
    let outcome = delivery::attempt(&client, &d).await;
    d.attempts += 1;
    let url = redact_url(&d.url);
    let done = match &outcome {
        Outcome::Delivered(status) => {
            metrics.webhook_deliveries.with_label_values(&["success"]).inc();
            tracing::info!(
                delivery = %d.id, event = %d.event, webhook = d.webhook, url = %url,
                attempts = d.attempts, status = *status,
                "webhook delivered"
            );
            true
        }
        Outcome::Failed(reason) | Outcome::Invalid(reason)
            if d.attempts >= settings.max_attempts || matches!(outcome, Outcome::Invalid(_)) =>
        {
            metrics.webhook_deliveries.with_label_values(&["failure"]).inc();
            tracing::warn!(
                delivery = %d.id, event = %d.event, webhook = d.webhook, url = %url,
                attempts = d.attempts, error = %reason,
                "webhook delivery failed; giving up"
            );
            true
        }
        Outcome::Failed(reason) | Outcome::Invalid(reason) => {
            metrics.webhook_deliveries.with_label_values(&["retry"]).inc();
            let delay = backoff(settings.backoff_base, d.attempts);
            d.next_attempt_ms = now_ms() + delay.as_millis() as i64;
            tracing::info!(
                delivery = %d.id, event = %d.event, webhook = d.webhook, url = %url,
                attempts = d.attempts, error = %reason, retry_in_ms = delay.as_millis() as u64,
                "webhook attempt failed; will retry"
            );
            false
        }
    };
    if let Err(e) = outbox.settle(&d, done).await {
        tracing::error!(delivery = %d.id, error = %e, "cannot update the webhook outbox");
    }
    Report { delivery: d, done }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles() {
        let b = Duration::from_secs(2);
        assert_eq!(backoff(b, 1), Duration::from_secs(2));
        assert_eq!(backoff(b, 2), Duration::from_secs(4));
        assert_eq!(backoff(b, 3), Duration::from_secs(8));
        assert_eq!(backoff(Duration::ZERO, 3), Duration::ZERO);
        assert!(backoff(b, u32::MAX) >= Duration::from_secs(2 << 19));
    }

    fn live(text: &str) -> Arc<Live<WebhookConfig>> {
        Arc::new(Live::new(config::parse_str(text).unwrap()))
    }

    #[tokio::test]
    async fn accept_persists_before_returning_and_orders_events() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = live(
            r#"{"webhooks":[
                {"url":"http://127.0.0.1:9/a","secret":"a","events":["uploaded","version.created"],"enabled":true},
                {"url":"http://127.0.0.1:9/b","secret":"b","events":["version.created"],"enabled":true},
                {"url":"http://127.0.0.1:9/c","secret":"c","events":["uploaded","version.created"],"enabled":false},
                {"url":"http://127.0.0.1:9/d","secret":"d","events":["other"],"enabled":true}
            ]}"#,
        );
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let settings = WebhookSettings {
            backoff_base: Duration::from_secs(3600),
            timeout: Duration::from_millis(200),
            ..WebhookSettings::default()
        };
        let outbox_dir = dir.path().join("ob");
        let (sink, _worker) = start(
            cfg,
            OutboxPlace::Dir(outbox_dir.clone()),
            settings,
            Arc::new(Metrics::new()),
            rx,
        )
        .unwrap();
        sink.accept(&PublishEvent {
            namespace: "@a".into(),
            name: "x".into(),
            version: "1.0.0".into(),
            path: "@a/x/1.0.0".into(),
            lifecycle: None,
        })
        .await;
        let (all, _) = Outbox::open(&outbox_dir).unwrap().load().unwrap();
        let summary: Vec<(String, String)> = all.iter().map(|d| (d.url.clone(), d.event.clone())).collect();
        assert_eq!(
            summary,
            vec![
                ("http://127.0.0.1:9/a".to_owned(), "uploaded".to_owned()),
                ("http://127.0.0.1:9/a".to_owned(), "version.created".to_owned()),
                ("http://127.0.0.1:9/b".to_owned(), "version.created".to_owned()),
            ]
        );
        assert_eq!(all[1].after.as_deref(), Some(all[0].id.as_str()));
        assert_eq!(all[2].after, None);
        let text = std::fs::read_to_string(outbox_dir.join(format!("{}.json", all[0].id))).unwrap();
        assert!(!text.contains("\"secret\""), "{text}");
    }
}
