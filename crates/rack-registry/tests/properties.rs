//! Property tests of the server's storage rules: `versions.json` merging under any interleaving
//! of concurrent publishes, and key validation (no accepted key escapes the storage root).
//! 256 cases each (proptest's default; `PROPTEST_CASES` sets another).

use std::future::Future;
use std::path::{Component, Path};
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use proptest::prelude::*;
use rack_core::layout::{self, VersionsFile};
use rack_registry::storage::memory::{Fault, Hook, MemoryStorage, Op};
use rack_registry::storage::{validate_key, PutMode, Storage};
use rack_registry::versions;

/// Returns `Pending` once: each storage call is a point where another publish may run.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// Every storage call of the in-memory store (`storage::memory`, atomic conditional writes) is a
/// point where another publish may run.
struct EveryCallYields;

#[async_trait]
impl Hook for EveryCallYields {
    async fn call(&self, _: &Op) -> Fault {
        YieldOnce(false).await;
        Fault::None
    }
}

fn store() -> MemoryStorage {
    MemoryStorage::new().with_hook(std::sync::Arc::new(EveryCallYields))
}

/// One publish as a separate replica runs it (no in-process lock): the version becomes visible
/// (its manifest, create-only), then `versions.json` is rebuilt by compare-and-swap.
async fn publish(storage: &MemoryStorage, registry: &str, version: &str) {
    storage
        .put(
            &layout::manifest_key(registry, version),
            Bytes::from_static(b"{}"),
            PutMode::Create,
        )
        .await
        .expect("a fresh version");
    versions::rebuild_locked(storage, registry, Some(version))
        .await
        .expect("rebuild");
}

fn version() -> impl Strategy<Value = String> {
    (
        0u32..4,
        0u32..4,
        0u32..3,
        prop::option::of("(alpha|beta|rc)\\.[0-9]"),
        prop::option::of("b[0-9]"),
    )
        .prop_map(|(a, b, c, pre, build)| {
            let mut s = format!("{a}.{b}.{c}");
            if let Some(p) = pre {
                s = format!("{s}-{p}");
            }
            if let Some(m) = build {
                s = format!("{s}+{m}");
            }
            s
        })
}

proptest! {
    /// Whatever the interleaving of N concurrent publishes (each storage call a point where any
    /// other may run), `versions.json` ends with all N, sorted newest first.
    #[test]
    fn any_interleaving_of_publishes_keeps_every_version(
        versions in prop::collection::btree_set(version(), 1..7),
        preexisting in prop::collection::btree_set(version(), 0..3),
        schedule in prop::collection::vec(any::<prop::sample::Index>(), 1..200),
    ) {
        let registry = "@a/x";
        let storage = store();
        let fresh: Vec<String> = versions.difference(&preexisting).cloned().collect();
        // Versions already there (with a current versions.json).
        futures::executor::block_on(async {
            for v in &preexisting {
                publish(&storage, registry, v).await;
            }
        });
        let mut tasks: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> =
            fresh.iter().map(|v| Box::pin(publish(&storage, registry, v)) as Pin<Box<dyn Future<Output = ()>>>).collect();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut step = 0;
        while !tasks.is_empty() {
            // The schedule picks who runs next; past its end, round robin.
            let i = schedule.get(step).map_or(step, |ix| ix.index(tasks.len())) % tasks.len();
            step += 1;
            if tasks[i].as_mut().poll(&mut cx).is_ready() {
                drop(tasks.remove(i));
            }
            prop_assert!(step < 100_000, "publishes do not finish");
        }
        drop(tasks);
        let stored = futures::executor::block_on(storage.get(&layout::versions_key(registry)))
            .unwrap()
            .expect("versions.json");
        let file = VersionsFile::parse(&stored.body).expect("valid versions.json");
        let all: Vec<&String> = preexisting.iter().chain(fresh.iter()).collect();
        prop_assert_eq!(file.versions.len(), all.len());
        prop_assert_eq!(&file, &VersionsFile::from_versions(all));
        prop_assert_eq!(stored.body, Bytes::from(file.render()));
    }

    /// A key that passes validation has only normal components: joined to any root it names a
    /// path inside that root (no `..`, no absolute path, no `.`, no backslash or NUL aliasing).
    #[test]
    fn no_valid_key_escapes_the_root(
        parts in prop::collection::vec(
            prop_oneof![
                Just("..".to_owned()),
                Just(".".to_owned()),
                Just(String::new()),
                "[a-z.@]{1,4}",
                "[a-z\\\\./\u{0}%]{1,4}",
            ],
            1..6,
        ),
        trailing: bool,
    ) {
        let mut key = parts.join("/");
        if trailing {
            key.push('/');
        }
        if validate_key(&key).is_ok() {
            let root = Path::new("/srv/rack");
            let path = root.join(&key);
            prop_assert!(Path::new(&key).components().all(|c| matches!(c, Component::Normal(_))), "{:?}", key);
            prop_assert!(path.starts_with(root));
            prop_assert!(!key.contains('\\') && !key.contains('\0'));
            prop_assert_eq!(path.components().count(), root.components().count() + key.trim_end_matches('/').split('/').count());
        } else {
            // Refused only for a reason: some segment is empty, `.` or `..`, or a byte aliases.
            let body = key.strip_suffix('/').unwrap_or(&key);
            prop_assert!(
                body.split('/').any(|s| s.is_empty() || s == "." || s == "..") || key.contains(['\\', '\0']),
                "{:?} refused", key
            );
        }
    }
}
