//! The behaviour every [`Storage`] backend must share, as functions over `&dyn Storage`
//! (after object_store's `integration.rs`): `tests/storage_contract.rs` runs them against the
//! local backend and a real S3 server, so the two cannot drift apart. Each function panics with
//! a message naming the broken rule; it needs an empty storage (keys under `prefix`).

use bytes::Bytes;
use futures::StreamExt;

use super::{PutMode, Storage, StorageError};

/// Every contract, in order, under `prefix` (empty, or ending in `/`).
pub async fn all(s: &dyn Storage, prefix: &str) {
    run(s, prefix, true).await;
}

/// Every contract except the outcome of races, for a store whose conditional writes are checked
/// but not atomically (moto checks `If-None-Match`/`If-Match` and stores without a lock between:
/// two racing writers can both win): [`racing_writers_loosely`] stands in for
/// [`racing_writers`], asserting only what holds on such a store too, so the test cannot flake.
pub async fn all_but_race_outcomes(s: &dyn Storage, prefix: &str) {
    run(s, prefix, false).await;
}

async fn run(s: &dyn Storage, prefix: &str, atomic: bool) {
    put_get_head(s, &format!("{prefix}pgh/")).await;
    create_only(s, &format!("{prefix}create/")).await;
    compare_and_swap(s, &format!("{prefix}cas/")).await;
    if atomic {
        racing_writers(s, &format!("{prefix}race/")).await;
    } else {
        racing_writers_loosely(s, &format!("{prefix}race/")).await;
    }
    delimited_listing(s, &format!("{prefix}list/")).await;
    pagination(s, &format!("{prefix}pages/")).await;
    streamed_reads(s, &format!("{prefix}stream/")).await;
    delete_prefix(s, &format!("{prefix}delete/")).await;
    if atomic {
        racing_publishers(s).await;
    }
}

/// Eight racing `publish_dir` of one version, each with its own bytes: exactly one succeeds, the
/// others are refused as existing, the version holds the winner's bytes only, and its integrity
/// record describes them (SPEC §5.2, §11.2). Uses `@contract/...` keys (a version path must
/// start with a namespace), so it runs once per store, not per prefix.
pub async fn racing_publishers(s: &dyn Storage) {
    let staging = tempfile::tempdir().expect("tempdir");
    let dest = "@contract/race/1.0.0";
    let announce = super::publish::Silent;
    let tasks = (0..8).map(|i| {
        let dir = staging.path().join(format!("p{i}"));
        std::fs::create_dir_all(dir.join("t")).expect("staging");
        std::fs::write(dir.join("registry.json"), format!("{{\"by\":{i}}}")).expect("staging");
        std::fs::write(dir.join("t/a.txt"), format!("{i}")).expect("staging");
        std::fs::write(dir.join(format!("t/only-{i}.txt")), format!("{i}")).expect("staging");
        let announce = &announce;
        async move { (i, s.publish_dir(&dir, dest, announce).await) }
    });
    let results = futures::future::join_all(tasks).await;
    let winners: Vec<usize> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "one publish wins: {results:?}");
    for (i, r) in &results {
        assert!(
            r.is_ok() || matches!(r, Err(StorageError::AlreadyExists(_))),
            "publisher {i}: {r:?}"
        );
    }
    let w = winners[0];
    let page = s.list(&format!("{dest}/"), false, None, 100).await.unwrap();
    let keys: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
    let want = [
        format!("{dest}/registry.json"),
        format!("{dest}/t/a.txt"),
        format!("{dest}/t/only-{w}.txt"),
    ];
    assert_eq!(keys, want, "only the winner's files");
    let a = s.get(&format!("{dest}/t/a.txt")).await.unwrap().unwrap();
    assert_eq!(a.body, Bytes::from(format!("{w}")), "the winner's bytes");
    let findings = super::integrity::verify(s, "@contract/race", "1.0.0", true)
        .await
        .unwrap();
    assert!(findings.is_empty(), "the integrity record matches: {findings:?}");
}

pub async fn put_get_head(s: &dyn Storage, p: &str) {
    let key = format!("{p}a/registry.json");
    let meta = s
        .put(&key, Bytes::from_static(b"one"), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!((meta.key.as_str(), meta.size), (key.as_str(), 3));
    let obj = s.get(&key).await.unwrap().expect("written object is read back");
    assert_eq!(&obj.body[..], b"one");
    assert_eq!(
        obj.meta.version, meta.version,
        "get reports the version put returned"
    );
    let head = s.head(&key).await.unwrap().unwrap();
    assert_eq!(head, obj.meta, "head and get agree");
    let two = s
        .put(&key, Bytes::from_static(b"two"), PutMode::Overwrite)
        .await
        .unwrap();
    assert_ne!(two.version, meta.version, "an overwrite changes the version");
    assert!(s.get(&format!("{p}missing")).await.unwrap().is_none());
    assert!(s.head(&format!("{p}missing")).await.unwrap().is_none());
    assert!(
        s.get(&format!("{p}a")).await.unwrap().is_none(),
        "a directory is no object"
    );
    assert!(s.head(&format!("{p}a/")).await.unwrap().is_none());
    assert!(matches!(
        s.get(&format!("{p}../x")).await,
        Err(StorageError::InvalidKey(_))
    ));
}

pub async fn create_only(s: &dyn Storage, p: &str) {
    let key = format!("{p}registry.json");
    s.put(&key, Bytes::from_static(b"first"), PutMode::Create)
        .await
        .expect("create-only on a new key");
    match s.put(&key, Bytes::from_static(b"second"), PutMode::Create).await {
        Err(StorageError::AlreadyExists(k)) => assert_eq!(k, key),
        other => panic!("a second create-only put must be AlreadyExists: {other:?}"),
    }
    assert_eq!(&s.get(&key).await.unwrap().unwrap().body[..], b"first");
}

pub async fn compare_and_swap(s: &dyn Storage, p: &str) {
    let key = format!("{p}versions.json");
    let v1 = s
        .put(&key, Bytes::from_static(b"1"), PutMode::Create)
        .await
        .unwrap();
    let v2 = s
        .put(
            &key,
            Bytes::from_static(b"2"),
            PutMode::IfVersion(v1.version.clone()),
        )
        .await
        .expect("swap on the current version");
    assert_ne!(v1.version, v2.version);
    match s
        .put(&key, Bytes::from_static(b"3"), PutMode::IfVersion(v1.version))
        .await
    {
        Err(StorageError::PreconditionFailed(_)) => {}
        other => panic!("a swap on a stale version must be PreconditionFailed: {other:?}"),
    }
    assert_eq!(&s.get(&key).await.unwrap().unwrap().body[..], b"2");
    match s
        .put(
            &format!("{p}absent"),
            Bytes::from_static(b"x"),
            PutMode::IfVersion(v2.version),
        )
        .await
    {
        Err(StorageError::PreconditionFailed(_)) => {}
        other => panic!("a swap on a missing object must be PreconditionFailed: {other:?}"),
    }
}

/// Racing writers: of 8 create-only puts one wins; 8 read-modify-swap loops lose no update.
pub async fn racing_writers(s: &dyn Storage, p: &str) {
    let key = format!("{p}once");
    let creates = (0..8u8).map(|i| s.put(&key, Bytes::from(vec![i]), PutMode::Create));
    let results = futures::future::join_all(creates).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "exactly one create-only put wins: {results:?}");
    assert!(results
        .iter()
        .all(|r| r.is_ok() || matches!(r, Err(StorageError::AlreadyExists(_)))));

    let counter = format!("{p}counter");
    s.put(&counter, Bytes::from_static(b"0"), PutMode::Create)
        .await
        .unwrap();
    let bump = || async {
        loop {
            let cur = s.get(&counter).await.unwrap().unwrap();
            let n: u32 = std::str::from_utf8(&cur.body).unwrap().parse().unwrap();
            let next = Bytes::from((n + 1).to_string());
            match s.put(&counter, next, PutMode::IfVersion(cur.meta.version)).await {
                Ok(_) => return,
                Err(StorageError::PreconditionFailed(_)) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    };
    futures::future::join_all((0..8).map(|_| bump())).await;
    assert_eq!(
        &s.get(&counter).await.unwrap().unwrap().body[..],
        b"8",
        "no lost update"
    );
}

/// [`racing_writers`] without asserting who won, for a store whose conditional writes are not
/// atomic: the same 8 create-only puts and 8 read-modify-swap loops, checked only for what any
/// store that checks the conditions guarantees: at least one create wins and the others are
/// `AlreadyExists`, the object holds a winner's bytes, every swap loop ends, and the counter
/// counts at least one and at most 8 updates. Exactly one winner and no lost update are not
/// asserted (they are by [`racing_writers`] on an atomic store).
pub async fn racing_writers_loosely(s: &dyn Storage, p: &str) {
    let key = format!("{p}once");
    let creates = (0..8u8).map(|i| s.put(&key, Bytes::from(vec![i]), PutMode::Create));
    let results = futures::future::join_all(creates).await;
    let winners: Vec<u8> = (0..8u8).filter(|i| results[*i as usize].is_ok()).collect();
    assert!(!winners.is_empty(), "a create-only put wins: {results:?}");
    assert!(results
        .iter()
        .all(|r| r.is_ok() || matches!(r, Err(StorageError::AlreadyExists(_)))));
    let body = s.get(&key).await.unwrap().unwrap().body;
    assert!(
        body.len() == 1 && winners.contains(&body[0]),
        "the object holds a winner's bytes: {body:?}, winners {winners:?}"
    );

    let counter = format!("{p}counter");
    s.put(&counter, Bytes::from_static(b"0"), PutMode::Create)
        .await
        .unwrap();
    let bump = || async {
        for _ in 0..1000 {
            let cur = s.get(&counter).await.unwrap().unwrap();
            let n: u32 = std::str::from_utf8(&cur.body).unwrap().parse().unwrap();
            let next = Bytes::from((n + 1).to_string());
            match s.put(&counter, next, PutMode::IfVersion(cur.meta.version)).await {
                Ok(_) => return,
                Err(StorageError::PreconditionFailed(_)) => continue,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("a swap loop never got its update in");
    };
    futures::future::join_all((0..8).map(|_| bump())).await;
    let body = s.get(&counter).await.unwrap().unwrap().body;
    let n: u32 = std::str::from_utf8(&body).unwrap().parse().unwrap();
    assert!((1..=8).contains(&n), "the counter counts 1 to 8 updates: {n}");
}

pub async fn delimited_listing(s: &dyn Storage, p: &str) {
    for k in ["1", "b/2", "b/3", "c/d/4", "e"] {
        s.put(&format!("{p}{k}"), Bytes::from_static(b"x"), PutMode::Overwrite)
            .await
            .unwrap();
    }
    let page = s.list(p, true, None, 100).await.unwrap();
    let objects: Vec<&str> = page.objects.iter().map(|o| &o.key[p.len()..]).collect();
    assert_eq!(objects, ["1", "e"]);
    assert_eq!(page.prefixes, [format!("{p}b/"), format!("{p}c/")]);
    assert!(page.next.is_none());
    assert_eq!(page.objects[0].size, 1);
    let deep = s.list(p, false, None, 100).await.unwrap();
    let keys: Vec<&str> = deep.objects.iter().map(|o| &o.key[p.len()..]).collect();
    assert_eq!(keys, ["1", "b/2", "b/3", "c/d/4", "e"]);
    let empty = s.list(&format!("{p}none/"), true, None, 100).await.unwrap();
    assert!(empty.objects.is_empty() && empty.prefixes.is_empty());
    assert!(matches!(
        s.list(&format!("{p}b"), true, None, 10).await,
        Err(StorageError::InvalidKey(_))
    ));
}

pub async fn pagination(s: &dyn Storage, p: &str) {
    let mut want = Vec::new();
    for i in 0..7 {
        let k = format!("{p}f{i}");
        s.put(&k, Bytes::from_static(b"x"), PutMode::Overwrite)
            .await
            .unwrap();
        want.push(k);
        // A sub-directory with several objects: rolled up once, never repeated on a later page.
        for j in 0..3 {
            s.put(
                &format!("{p}d{i}/o{j}"),
                Bytes::from_static(b"y"),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        }
        want.push(format!("{p}d{i}/"));
    }
    want.sort();
    for limit in [1, 2, 5] {
        let mut got = Vec::new();
        let mut start: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = s.list(p, true, start.as_deref(), limit).await.unwrap();
            pages += 1;
            assert!(
                page.objects.len() + page.prefixes.len() <= limit,
                "page over the limit"
            );
            got.extend(page.objects.iter().map(|o| o.key.clone()));
            got.extend(page.prefixes.iter().cloned());
            match page.next {
                Some(n) => start = Some(n),
                None => break,
            }
            assert!(pages < 100, "pagination does not end");
        }
        got.sort();
        assert_eq!(got, want, "delimited pages of {limit}");
    }
    let mut all = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let page = s.list(p, false, start.as_deref(), 4).await.unwrap();
        all.extend(page.objects.iter().map(|o| o.key.clone()));
        match page.next {
            Some(n) => start = Some(n),
            None => break,
        }
    }
    assert_eq!(all.len(), 28, "undelimited pages: {all:?}");
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(all, sorted, "sorted, without repeats");
}

pub async fn streamed_reads(s: &dyn Storage, p: &str) {
    let key = format!("{p}big.bin");
    let body: Vec<u8> = (0..700 * 1024u32).map(|i| (i % 251) as u8).collect();
    let meta = s
        .put(&key, Bytes::from(body.clone()), PutMode::Overwrite)
        .await
        .unwrap();
    let stream = s.get_stream(&key).await.unwrap().expect("streamed object");
    assert_eq!(stream.meta.version, meta.version);
    assert_eq!(stream.meta.size, body.len() as u64);
    let chunks: Vec<Bytes> = stream.body.map(|c| c.unwrap()).collect().await;
    assert_eq!(chunks.concat(), body);
    assert!(s.get_stream(&format!("{p}missing")).await.unwrap().is_none());
}

pub async fn delete_prefix(s: &dyn Storage, p: &str) {
    for k in ["a/1", "a/b/2", "ab", "c"] {
        s.put(&format!("{p}{k}"), Bytes::from_static(b"x"), PutMode::Overwrite)
            .await
            .unwrap();
    }
    assert_eq!(s.delete_prefix(&format!("{p}a/")).await.unwrap(), 2);
    assert!(s.head(&format!("{p}a/1")).await.unwrap().is_none());
    assert!(
        s.head(&format!("{p}ab")).await.unwrap().is_some(),
        "a sibling with the same start stays"
    );
    assert_eq!(
        s.delete_prefix(&format!("{p}c")).await.unwrap(),
        1,
        "a single object"
    );
    assert_eq!(s.delete_prefix(&format!("{p}c")).await.unwrap(), 0);
    assert_eq!(s.delete_prefix(&format!("{p}none/")).await.unwrap(), 0);
}
