//! # rack-core
//!
//! The pure rules of a Rack registry, shared by the server and (compiled to
//! `wasm32-unknown-unknown`) by the edge Worker:
//!
//! - [`names`]: the grammar of namespaces, segments, versions and template file paths (SPEC §2);
//! - [`version`]: SemVer 2.0 parsing and precedence order (SPEC §3);
//! - [`route`]: the URL grammar of the read API, including `/registries/...` (SPEC §4, §14);
//! - [`mime`]: the content-type table (SPEC §4);
//! - [`layout`]: storage keys and registry segment derivation (SPEC §3, §5.4);
//! - [`lifecycle`]: yanked, deprecated and deleted state and its rules (SPEC §18);
//! - [`auth`]: `auth.json` parsing (fail closed) and every access decision (SPEC §6);
//! - [`publishers`]: `publishers.json` (fail closed) and the trusted-publishing decision (SPEC §16);
//! - [`limits`]: the default upload and extraction limits (SPEC §5, §10);
//! - [`listing`]: the namespace index, the registry walk, listing and `/health` bodies (SPEC §3, §4, §8);
//! - [`etag`]: content-derived strong ETags and `If-None-Match` matching (SPEC §9);
//! - [`error`]: the error catalogue (SPEC §12), mapped to status, code and message in one place.
//!
//! Nothing here does I/O or reads a clock: callers pass the current time in. That keeps every
//! rule testable as a plain function and lets the Worker reuse them unchanged.

pub mod auth;
pub mod error;
pub mod etag;
pub mod layout;
pub mod lifecycle;
pub mod limits;
pub mod listing;
pub mod manifest;
pub mod mime;
pub mod names;
pub mod publishers;
pub mod route;
pub mod version;

pub use error::{ApiError, ErrorKind};
