//! The state shared by every request: storage, the auth policy, the admin token, metrics and a
//! few settings. Handlers receive it explicitly (axum `State`), never through globals.

use std::path::PathBuf;
use std::sync::Arc;

use rack_core::auth::{Admin, Policy};

use crate::audit::Audit;
use crate::cache::large::LargeObjects;
use crate::cache::{HotCache, ListingCache};
use crate::config::{Limits, TrustProxy};
use crate::events::PublishSink;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::reload::Live;
use crate::storage::Storage;
use crate::versions::RegistryLocks;

pub struct AppState {
    pub storage: Arc<dyn Storage>,
    pub policy: Arc<Live<Policy>>,
    /// `publishers.json` (SPEC §16), live-reloaded like the policy.
    pub publishers: Arc<Live<rack_core::publishers::Publishers>>,
    /// ID-token verification, the issuers' keys and the single-use records.
    pub oidc: Arc<crate::auth::oidc::Oidc>,
    pub admin: Admin,
    /// Where `/schemas/<file>` is read from (the storage, or a store rooted at `SCHEMA_DIR`),
    /// and so the registry-item schema uploads validate against.
    pub schemas: crate::schemas::SchemaStore,
    pub trust_proxy: TrustProxy,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub cache: HotCache,
    /// Objects too large for `cache`: streamed, with remembered tags and compressed forms.
    pub large: Arc<LargeObjects>,
    pub listings: ListingCache,
    pub rate_limiter: RateLimiter,
    pub audit: Arc<Audit>,
    /// `<STORAGE_ROOT>/.tmp`: upload staging (same filesystem as the root, for atomic renames).
    pub staging_root: PathBuf,
    pub registry_locks: RegistryLocks,
    /// Namespaces served from upstream registries (SPEC §17).
    pub upstreams: crate::upstream::Upstreams,
    /// The lifecycle documents reads consult (SPEC §18), absence included.
    pub lifecycles: crate::lifecycle::cache::Lifecycles,
    /// Upload slots, the upload queue and the slots of uploads that cannot publish.
    pub uploads: crate::upload::admission::Admission,
    /// The deadline of each kind of request body (`http::body`).
    pub bodies: crate::http::body::Deadlines,
    /// Who hears about each publish (the webhook outbox).
    pub sinks: Vec<Arc<dyn PublishSink>>,
    /// The web pages (SPEC §15); `None` when `UI=false`.
    pub ui: Option<Arc<crate::http::pages::Ui>>,
}

impl AppState {
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.get()
    }
}

/// Current time in unix milliseconds, for expiry decisions.
pub use crate::clock::now_ms;
