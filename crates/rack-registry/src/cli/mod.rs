//! The operator commands of the `rack-registry` binary, apart from `serve`: each is a client
//! of the same rules the server applies (the core crate, the bundled schemas), never of the
//! server's internals.
//!
//! - [`publish`]: pack a registry directory, check it as the server would, upload it;
//! - [`tokens`]: `token` (a fresh token and its `auth.json` entry), `auth check` and `auth push`;
//! - [`storage`]: `storage push`, `pull` and `check [--repair]` (a storage root to a bucket and
//!   back, and the invariants of SPEC §3);
//! - [`healthcheck`]: `GET /health` with a short timeout, the exit status saying whether it
//!   answered 200 (the container image has no shell and no curl).

pub mod healthcheck;
pub mod publish;
pub mod storage;
pub mod tokens;
