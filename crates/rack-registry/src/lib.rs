//! # rack-registry
//!
//! The Rack registry server as a library (the `rack-registry` binary is a thin `main` over it).
//!
//! - [`config`]: SPEC §10, flags over environment over `.env`, strict parsing;
//! - [`storage`]: the backend trait (shaped for object stores), the local-disk, S3 and in-memory
//!   backends, the bucket publish protocol and integrity records;
//! - [`http`]: per-thread connection serving, dispatch on the core crate's route grammar, read
//!   handlers, responses, request log, and the web pages under `/ui` (`http::pages`);
//! - [`logsink`]: log lines batched in memory and written by one thread;
//! - [`server`]: startup (storage root preparation, policy loading) and graceful shutdown;
//! - [`schemas`]: the JSON Schemas bundled in the binary;
//! - [`auth`]: the presented token, `auth.json` and `publishers.json` loading and live reload,
//!   and trusted publishing's ID-token verification (issuer keys, single use; SPEC §16);
//! - [`upload`]: the upload pipeline, and its admission (publishing slots, the queue, and the
//!   separate slots of uploads that cannot publish);
//! - [`lifecycle`]: yank, deprecate and delete (SPEC §18): the changes, in an order that is safe
//!   to repeat, and the documents reads consult;
//! - [`upstream`]: namespaces served from another Rack registry (SPEC §17): fetched on first
//!   use, stored under the publish rules, served from storage when the upstream is down;
//! - [`timed_body`]: request bodies under a stall and a total deadline (which routes read a
//!   body, and under which deadline: `http::body`).
//!
//! The rules themselves (URL grammar, auth decisions, layout, SemVer order) live in `rack-core`,
//! which has no I/O and also compiles to WebAssembly for the edge Worker.

pub mod api_error;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod compression;
pub mod config;
pub mod events;
pub mod fuzzing;
pub mod http;
pub mod lifecycle;
pub mod logsink;
pub mod metrics;
pub mod ratelimit;
pub mod reload;
pub mod schemas;
pub mod server;
pub mod state;
pub mod storage;
pub mod timed_body;
pub mod upload;
pub mod upstream;
pub mod validate;
pub mod versions;
pub mod webhooks;
