//! The state shared by every request: storage, the auth policy, the admin token and a few
//! settings. Handlers receive it explicitly (axum `State`), never through globals.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rack_core::auth::{Admin, Policy};

use crate::config::TrustProxy;
use crate::storage::Storage;

pub struct AppState {
    pub storage: Arc<dyn Storage>,
    /// Swapped whole when `auth.json` is reloaded; readers clone the `Arc` and never hold the lock.
    policy: RwLock<Arc<Policy>>,
    pub admin: Admin,
    pub schema_dir: PathBuf,
    pub trust_proxy: TrustProxy,
}

impl AppState {
    pub fn new(
        storage: Arc<dyn Storage>,
        policy: Policy,
        admin: Admin,
        schema_dir: PathBuf,
        trust_proxy: TrustProxy,
    ) -> AppState {
        AppState {
            storage,
            policy: RwLock::new(Arc::new(policy)),
            admin,
            schema_dir,
            trust_proxy,
        }
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
    }
}

/// Current time in unix milliseconds, for expiry decisions.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
