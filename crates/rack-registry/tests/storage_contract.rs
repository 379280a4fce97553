//! The storage contract (`storage::contract`) on every backend: the local disk and both test S3
//! servers (`common::s3::S3Server`), plain, under a `STORAGE_PREFIX`, and with the single-writer
//! emulation of conditional writes.
//!
//! The outcome of races (exactly one create-only winner, no lost compare-and-swap update:
//! `contract::racing_writers`) is asserted only where conditional writes are atomic: the local
//! disk, ministack, and the single-writer emulation (one in-process lock, whatever the server).
//! **Skipped on moto**, which checks `If-None-Match`/`If-Match` and stores without a lock on a
//! threaded server, so two racing writers can both win and such a test would pass or fail by
//! chance: there `contract::racing_writers_loosely` runs the same races and asserts only what
//! holds on that server too (see `contract::all_but_race_outcomes`).

mod common;

use common::s3::{Bucket, S3Server};
use rack_registry::storage::contract;
use rack_registry::storage::s3::{S3Options, S3Storage};
use rack_registry::storage::{LocalStorage, Storage};

fn options(bucket: &Bucket, prefix: &str) -> S3Options {
    S3Options {
        endpoint: Some(bucket.endpoint.clone()),
        region: "us-east-1".into(),
        bucket: bucket.name.clone(),
        credentials: Some((common::s3::ACCESS_KEY.into(), common::s3::SECRET_KEY.into())),
        prefix: prefix.into(),
    }
}

async fn bucket_on(server: S3Server) -> Option<Bucket> {
    tokio::task::spawn_blocking(move || Bucket::on(server))
        .await
        .unwrap()
}

/// The whole contract on `server`: plain, then under a prefix, where nothing outside the prefix
/// is seen or touched. Race outcomes only on an atomic server (see the file's docs).
async fn keeps_the_contract(server: S3Server) {
    let Some(bucket) = bucket_on(server).await else {
        return;
    };
    let contract = |s: S3Storage| async move {
        if server.atomic() {
            contract::all(&s, "").await;
        } else {
            contract::all_but_race_outcomes(&s, "").await;
        }
    };
    contract(S3Storage::new(&options(&bucket, "")).unwrap()).await;
    contract(S3Storage::new(&options(&bucket, "team/a/")).unwrap()).await;

    let s = S3Storage::new(&options(&bucket, "")).unwrap();
    let prefixed = S3Storage::new(&options(&bucket, "team/a/")).unwrap();
    let root = s.list("", true, None, 100).await.unwrap();
    assert!(root.prefixes.contains(&"team/".to_owned()), "{root:?}");
    let inner = prefixed.list("", true, None, 100).await.unwrap();
    assert!(
        inner.prefixes.iter().all(|p| !p.starts_with("team/")),
        "keys come back without the prefix: {inner:?}"
    );
    assert!(prefixed.get("pgh/a/registry.json").await.unwrap().is_some());
    assert!(s.get("team/a/pgh/a/registry.json").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn local_backend_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStorage::open(dir.path()).unwrap();
    contract::all(&s, "").await;
}

/// The in-memory store of the protocol simulation (`storage::memory`): it must be a bucket.
#[tokio::test(flavor = "multi_thread")]
async fn memory_backend_keeps_the_contract() {
    contract::all(&rack_registry::storage::memory::MemoryStorage::new(), "").await;
}

/// On ministack (atomic conditional writes): everything, races included.
#[tokio::test(flavor = "multi_thread")]
async fn s3_backend_keeps_the_contract() {
    keeps_the_contract(S3Server::Ministack).await;
}

/// On moto: everything but the outcome of races (skipped on moto, see the file's docs).
#[tokio::test(flavor = "multi_thread")]
async fn s3_backend_keeps_the_contract_on_moto_but_race_outcomes() {
    keeps_the_contract(S3Server::Moto).await;
}

/// The emulation checks conditional puts under one in-process lock, so races have one winner on
/// any server: the whole contract on both.
#[tokio::test(flavor = "multi_thread")]
async fn s3_single_writer_emulation_keeps_the_contract_in_one_process() {
    for server in S3Server::all() {
        let bucket = bucket_on(server).await.unwrap();
        let s = S3Storage::new(&options(&bucket, "")).unwrap().single_writer();
        contract::all(&s, "").await;
    }
}

/// Both servers honour conditional writes (one at a time), so the startup probe passes on each.
#[tokio::test(flavor = "multi_thread")]
async fn the_test_servers_honour_conditional_writes_so_the_probe_passes() {
    for server in S3Server::all() {
        let bucket = bucket_on(server).await.unwrap();
        let s = S3Storage::new(&options(&bucket, "")).unwrap();
        assert_eq!(
            s.probe_conditional_writes().await.unwrap(),
            rack_registry::storage::s3::Probe::Honoured,
            "{}",
            server.name()
        );
        let left = s.list(".rack/", false, None, 10).await.unwrap();
        assert!(
            left.objects.is_empty(),
            "{}: the probe removes its scratch key: {left:?}",
            server.name()
        );
    }
}
