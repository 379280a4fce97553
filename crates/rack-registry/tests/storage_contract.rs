//! The storage contract (`storage::contract`) on every backend: the local disk and a real S3
//! server (moto), plain, under a `STORAGE_PREFIX`, and with the single-writer emulation of
//! conditional writes.

mod common;

use rack_registry::storage::contract;
use rack_registry::storage::s3::{S3Options, S3Storage};
use rack_registry::storage::{LocalStorage, Storage};

fn options(bucket: &common::s3::Bucket, prefix: &str) -> S3Options {
    S3Options {
        endpoint: Some(bucket.endpoint.clone()),
        region: "us-east-1".into(),
        bucket: bucket.name.clone(),
        credentials: Some((common::s3::ACCESS_KEY.into(), common::s3::SECRET_KEY.into())),
        prefix: prefix.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn local_backend_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStorage::open(dir.path()).unwrap();
    contract::all(&s, "").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_backend_keeps_the_contract() {
    let Some(bucket) = tokio::task::spawn_blocking(common::s3::Bucket::new)
        .await
        .unwrap()
    else {
        return;
    };
    let s = S3Storage::new(&options(&bucket, "")).unwrap();
    contract::all(&s, "").await;

    // Under a prefix: the same contract, and nothing outside the prefix is seen or touched.
    let prefixed = S3Storage::new(&options(&bucket, "team/a/")).unwrap();
    contract::all(&prefixed, "").await;
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
async fn s3_single_writer_emulation_keeps_the_contract_in_one_process() {
    let Some(bucket) = tokio::task::spawn_blocking(common::s3::Bucket::new)
        .await
        .unwrap()
    else {
        return;
    };
    let s = S3Storage::new(&options(&bucket, "")).unwrap().single_writer();
    contract::all(&s, "").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn moto_honours_conditional_writes_so_the_probe_passes() {
    let Some(bucket) = tokio::task::spawn_blocking(common::s3::Bucket::new)
        .await
        .unwrap()
    else {
        return;
    };
    let s = S3Storage::new(&options(&bucket, "")).unwrap();
    assert_eq!(
        s.probe_conditional_writes().await.unwrap(),
        rack_registry::storage::s3::Probe::Honoured
    );
    let left = s.list(".rack/", false, None, 10).await.unwrap();
    assert!(
        left.objects.is_empty(),
        "the probe removes its scratch key: {left:?}"
    );
}
