//! The operator commands of the `rack-registry` binary, apart from `serve`: each is a client
//! of the same rules the server applies (the core crate, the bundled schemas), never of the
//! server's internals.
//!
//! - [`publish`]: pack a registry directory, check it as the server would, upload it;
//! - [`manage`]: `yank`, `deprecate` and `delete-version` (SPEC §18), through the server's
//!   management routes;
//! - [`client`]: what the commands that call a server share (URL and token flags, one request,
//!   retries of 503 and 429, exit statuses);
//! - [`mirror`]: copy a namespace from another registry into storage (SPEC §17), for offline
//!   networks;
//! - [`upstreams`]: `upstreams check`, the server's verdict on an `upstreams.json`;
//! - [`tokens`]: `token` (a fresh token and its `auth.json` entry), `auth check` and `auth push`;
//! - [`storage`]: `storage push`, `pull` and `check [--repair]` (a storage root to a bucket and
//!   back, and the invariants of SPEC §3);
//! - [`healthcheck`]: `GET /health` with a short timeout, the exit status saying whether it
//!   answered 200 (the container image has no shell and no curl).

pub mod client;
pub mod healthcheck;
pub mod manage;
pub mod mirror;
pub mod publish;
pub mod storage;
pub mod tokens;
pub mod upstreams;
