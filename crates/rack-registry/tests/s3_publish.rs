//! The publish lease protocol of SPEC §11.2 on a real S3 server (moto): racing publishers on
//! two clients of one bucket (two replicas), and publishers that died half-way.

mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use rack_registry::storage::publish::{self, LEASES};
use rack_registry::storage::s3::{S3Options, S3Storage};
use rack_registry::storage::{PutMode, Storage, StorageError};

fn replica(bucket: &common::s3::Bucket) -> Arc<S3Storage> {
    Arc::new(
        S3Storage::new(&S3Options {
            endpoint: Some(bucket.endpoint.clone()),
            region: "us-east-1".into(),
            bucket: bucket.name.clone(),
            credentials: Some((common::s3::ACCESS_KEY.into(), common::s3::SECRET_KEY.into())),
            prefix: String::new(),
        })
        .unwrap(),
    )
}

/// A staged version directory whose every file names its publisher `tag`.
fn stage(root: &Path, tag: &str) -> std::path::PathBuf {
    let dir = root.join(tag);
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(dir.join("registry.json"), format!("{{\"by\":\"{tag}\"}}")).unwrap();
    std::fs::write(dir.join("templates/a.txt"), tag).unwrap();
    std::fs::write(dir.join("templates").join(format!("only-{tag}.txt")), tag).unwrap();
    dir
}

async fn keys(s: &dyn Storage, prefix: &str) -> Vec<String> {
    let page = s.list(prefix, false, None, 1000).await.unwrap();
    page.objects.into_iter().map(|o| o.key).collect()
}

async fn versions(s: &dyn Storage, registry: &str) -> Vec<String> {
    let obj = s
        .get(&format!("{registry}/versions.json"))
        .await
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&obj.body).unwrap();
    v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

async fn bucket() -> Option<common::s3::Bucket> {
    tokio::task::spawn_blocking(common::s3::Bucket::new)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_racing_publishers_of_one_version_leave_exactly_the_winners_bytes() {
    let Some(bucket) = bucket().await else { return };
    let (a, b) = (replica(&bucket), replica(&bucket));
    let staging = tempfile::tempdir().unwrap();
    let dest = "@race/widget/1.0.0";
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let dir = stage(staging.path(), &format!("p{i}"));
        tasks.push(tokio::spawn(async move {
            publish::publish_dir(
                s.as_ref(),
                &dir,
                dest,
                &publish::Timing::default(),
                &publish::Silent,
            )
            .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(StorageError::AlreadyExists(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1, "exactly one publish wins");
    let manifest = a.get(&format!("{dest}/registry.json")).await.unwrap().unwrap();
    let winner: serde_json::Value = serde_json::from_slice(&manifest.body).unwrap();
    let tag = winner["by"].as_str().unwrap();
    let stored = keys(a.as_ref(), &format!("{dest}/")).await;
    assert_eq!(
        stored,
        [
            format!("{dest}/registry.json"),
            format!("{dest}/templates/a.txt"),
            format!("{dest}/templates/only-{tag}.txt"),
        ],
        "only the winner wrote under the version"
    );
    let a_txt = a.get(&format!("{dest}/templates/a.txt")).await.unwrap().unwrap();
    assert_eq!(&a_txt.body[..], tag.as_bytes());
    assert_eq!(versions(b.as_ref(), "@race/widget").await, ["1.0.0"]);
    assert!(keys(a.as_ref(), LEASES).await.is_empty(), "every lease released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_racing_versions_on_two_replicas_are_all_listed() {
    let Some(bucket) = bucket().await else { return };
    let (a, b) = (replica(&bucket), replica(&bucket));
    let staging = tempfile::tempdir().unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let dir = stage(staging.path(), &format!("v{i}"));
        tasks.push(tokio::spawn(async move {
            let dest = format!("@race/many/1.{i}.0");
            publish::publish_dir(
                s.as_ref(),
                &dir,
                &dest,
                &publish::Timing::default(),
                &publish::Silent,
            )
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let listed = versions(a.as_ref(), "@race/many").await;
    let mut want: Vec<String> = (0..50).rev().map(|i| format!("1.{i}.0")).collect();
    want.sort_by(|x, y| {
        let v = |s: &str| s.split('.').nth(1).unwrap().parse::<u32>().unwrap();
        v(y).cmp(&v(x))
    });
    assert_eq!(listed, want, "every version, newest first");
}

/// What a publisher SIGKILLed mid-publish leaves: an expired lease and some of its files.
async fn dead_publisher(s: &dyn Storage, dest: &str, files: &[(&str, &str)]) {
    // Expired at once: its lifetime from its Last-Modified is zero.
    let version = dest.rsplit('/').next().unwrap();
    let rec = format!(r#"{{"owner":"dead","uploadId":"x","ttlMs":0,"version":"{version}"}}"#);
    s.put(&format!("{LEASES}{dest}"), Bytes::from(rec), PutMode::Create)
        .await
        .unwrap();
    for (rel, body) in files {
        s.put(
            &format!("{dest}/{rel}"),
            Bytes::from(body.to_string()),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_next_publish_repairs_what_a_dead_publisher_left() {
    let Some(bucket) = bucket().await else { return };
    let s = replica(&bucket);
    let staging = tempfile::tempdir().unwrap();

    // Died after some template files: the next publish of that version takes the lease over,
    // removes the partial files and publishes.
    dead_publisher(
        s.as_ref(),
        "@dead/a/1.0.0",
        &[("templates/a.txt", "dead"), ("templates/stale.txt", "x")],
    )
    .await;
    publish::publish_dir(
        s.as_ref(),
        &stage(staging.path(), "new"),
        "@dead/a/1.0.0",
        &publish::Timing::default(),
        &publish::Silent,
    )
    .await
    .unwrap();
    let stored = keys(s.as_ref(), "@dead/a/1.0.0/").await;
    assert!(!stored.iter().any(|k| k.ends_with("stale.txt")), "{stored:?}");
    let a_txt = s.get("@dead/a/1.0.0/templates/a.txt").await.unwrap().unwrap();
    assert_eq!(&a_txt.body[..], b"new");

    // Died after registry.json, before versions.json: a publish of another version of the
    // registry lists the orphan too.
    dead_publisher(
        s.as_ref(),
        "@dead/a/2.0.0",
        &[("templates/a.txt", "two"), ("registry.json", "{}")],
    )
    .await;
    publish::publish_dir(
        s.as_ref(),
        &stage(staging.path(), "three"),
        "@dead/a/3.0.0",
        &publish::Timing::default(),
        &publish::Silent,
    )
    .await
    .unwrap();
    assert_eq!(versions(s.as_ref(), "@dead/a").await, ["3.0.0", "2.0.0", "1.0.0"]);
    assert!(keys(s.as_ref(), LEASES).await.is_empty());

    // A live lease of another publisher: 409 (VERSION_EXISTS), nothing written.
    let rec = r#"{"owner":"alive","uploadId":"y","ttlMs":3600000,"version":"4.0.0"}"#;
    s.put(
        &format!("{LEASES}@dead/a/4.0.0"),
        Bytes::from(rec),
        PutMode::Create,
    )
    .await
    .unwrap();
    let busy = publish::publish_dir(
        s.as_ref(),
        &stage(staging.path(), "four"),
        "@dead/a/4.0.0",
        &publish::Timing::default(),
        &publish::Silent,
    )
    .await;
    assert!(matches!(busy, Err(StorageError::AlreadyExists(_))), "{busy:?}");
    assert!(keys(s.as_ref(), "@dead/a/4.0.0/").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_background_sweep_finishes_every_expired_lease() {
    let Some(bucket) = bucket().await else { return };
    let s = replica(&bucket);
    dead_publisher(s.as_ref(), "@sweep/a/1.0.0", &[("registry.json", "{}")]).await;
    dead_publisher(s.as_ref(), "@sweep/b/c/2.0.0", &[("templates/x", "partial")]).await;
    assert_eq!(
        publish::sweep_all(s.as_ref(), publish::Timing::default(), &publish::Silent)
            .await
            .unwrap(),
        2
    );
    assert_eq!(versions(s.as_ref(), "@sweep/a").await, ["1.0.0"]);
    assert!(
        keys(s.as_ref(), "@sweep/b/").await.is_empty(),
        "partial version removed"
    );
    assert!(keys(s.as_ref(), LEASES).await.is_empty());
    assert_eq!(
        publish::sweep_all(s.as_ref(), publish::Timing::default(), &publish::Silent)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_registries_join_the_namespace_index_even_when_racing() {
    let Some(bucket) = bucket().await else { return };
    let (a, b) = (replica(&bucket), replica(&bucket));
    let staging = tempfile::tempdir().unwrap();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let dir = stage(staging.path(), &format!("r{i}"));
        tasks.push(tokio::spawn(async move {
            let dest = format!("@idx/group/reg-{i}/1.0.0");
            publish::publish_dir(
                s.as_ref(),
                &dir,
                &dest,
                &publish::Timing::default(),
                &publish::Silent,
            )
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let index = a
        .get("@idx/.registries.json")
        .await
        .unwrap()
        .expect("index written");
    let v: serde_json::Value = serde_json::from_slice(&index.body).unwrap();
    let want: Vec<String> = (0..10).map(|i| format!("group/reg-{i}")).collect();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(v["registries"], serde_json::json!(want_sorted));
    // Listings read it: what the index says is what a listing answers (it is authoritative on
    // a bucket), with no walk.
    let fresh = replica(&bucket);
    let listed = fresh
        .find_marked_dirs("@idx/", "versions.json", rack_core::names::is_segment)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&listed[..], &want_sorted[..]);
    a.put(
        "@idx/.registries.json",
        Bytes::from_static(b"{\"registries\":[\"only-this\"]}"),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    let fresh = replica(&bucket);
    let listed = fresh
        .find_marked_dirs("@idx/", "versions.json", rack_core::names::is_segment)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&listed[..], ["only-this"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listing_without_an_index_walks_once_and_writes_it() {
    let Some(bucket) = bucket().await else { return };
    let s = replica(&bucket);
    for k in [
        "@walk/a/versions.json",
        "@walk/b/c/versions.json",
        "@walk/b/c/1.0.0/registry.json",
    ] {
        s.put(k, Bytes::from_static(b"{}"), PutMode::Overwrite)
            .await
            .unwrap();
    }
    let listed = s
        .find_marked_dirs("@walk/", "versions.json", rack_core::names::is_segment)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&listed[..], ["a", "b/c"]);
    let index = s
        .get("@walk/.registries.json")
        .await
        .unwrap()
        .expect("written by the reader");
    assert_eq!(&index.body[..], b"{\"registries\":[\"a\",\"b/c\"]}\n");
    assert!(s
        .find_marked_dirs("@nothing/", "versions.json", rack_core::names::is_segment)
        .await
        .unwrap()
        .is_none());
    assert!(s.get("@nothing/.registries.json").await.unwrap().is_none());
}
