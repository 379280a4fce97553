//! Property tests of the pure rules: SemVer order against the `semver` crate's, the URL grammar
//! of `/registries/...` (valid paths parse to the right resource, one bad segment is refused),
//! and the `versions.json` merge. 256 cases each (proptest's default;
//! `PROPTEST_CASES` sets another), a fraction of a second.

use std::cmp::Reverse;

use proptest::prelude::*;
use proptest::sample::select;
use rack_core::layout::VersionsFile;
use rack_core::names::is_version;
use rack_core::route::{route, ResourceKind, Route};
use rack_core::version::sort_descending;

/// A prerelease or build identifier: numeric (sometimes with a leading zero, invalid in a
/// prerelease), alphanumeric, or with hyphens.
fn identifier() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..20).prop_map(|n| n.to_string()),
        "0[0-9]",
        "[a-z]{1,3}",
        "[a-zA-Z0-9-]{1,4}",
    ]
}

/// Version strings, mostly valid, from a small space (so that equal and close versions meet).
fn version_text() -> impl Strategy<Value = String> {
    (
        0u64..3,
        0u64..3,
        prop_oneof![0u64..3, Just(u64::MAX)],
        prop::collection::vec(identifier(), 0..3),
        prop::collection::vec(identifier(), 0..2),
        prop::option::of(select(vec!["v", "01.", "1.0", "x"])),
    )
        .prop_map(|(major, minor, patch, pre, build, junk)| {
            let mut s = format!("{major}.{minor}.{patch}");
            if !pre.is_empty() {
                s = format!("{s}-{}", pre.join("."));
            }
            if !build.is_empty() {
                s = format!("{s}+{}", build.join("."));
            }
            match junk {
                Some("v") => format!("v{s}"),
                Some(j) => j.to_string(),
                _ => s,
            }
        })
}

proptest! {
    /// `sort_descending` is the `semver` crate's order (build metadata ignored, as SemVer
    /// precedence wants), newest first, ties in precedence by text; invalid names are dropped.
    #[test]
    fn semver_order_matches_the_semver_crate(list in prop::collection::vec(version_text(), 0..12)) {
        let mut expected: Vec<(semver::Version, String)> = list
            .iter()
            .filter_map(|s| semver::Version::parse(s).ok().map(|v| (v, s.clone())))
            .collect();
        expected.sort_by_key(|(v, s)| {
            let mut precedence = v.clone();
            precedence.build = semver::BuildMetadata::EMPTY;
            (Reverse(precedence), s.clone())
        });
        expected.dedup_by(|a, b| a.1 == b.1);
        let expected: Vec<String> = expected.into_iter().map(|(_, s)| s).collect();
        prop_assert_eq!(sort_descending(&list), expected);
    }

    /// A name is a version exactly when the `semver` crate parses it.
    #[test]
    fn is_version_is_semver_parse(s in prop_oneof![version_text(), "[0-9a-z.+-]{0,12}"]) {
        prop_assert_eq!(is_version(&s), semver::Version::parse(&s).is_ok());
    }

    /// `versions.json` does not depend on the order versions were published in, lists each
    /// once, and reads back as written.
    #[test]
    fn versions_file_is_order_independent(
        list in prop::collection::vec(version_text(), 0..10),
        shuffle in prop::collection::vec(any::<prop::sample::Index>(), 10),
    ) {
        let mut other = list.clone();
        for (i, ix) in shuffle.iter().enumerate().take(other.len()) {
            let j = ix.index(other.len());
            other.swap(i, j);
        }
        other.extend(list.iter().take(3).cloned()); // published twice
        let file = VersionsFile::from_versions(&list);
        prop_assert_eq!(&VersionsFile::from_versions(&other), &file);
        let mut unique = file.versions.clone();
        unique.dedup();
        prop_assert_eq!(unique.len(), file.versions.len());
        prop_assert_eq!(VersionsFile::parse(file.render().as_bytes()), Some(file));
    }
}

fn namespace() -> impl Strategy<Value = String> {
    prop_oneof!["@[a-z0-9]", "@[a-z0-9][a-z0-9_-]{0,6}[a-z0-9]"]
}

/// Registry segments (never `versions`, which as the last one would name the versions list).
fn segment() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,4}(-[a-z0-9]{1,3}){0,2}".prop_filter("versions", |s| s != "versions")
}

fn valid_version() -> impl Strategy<Value = String> {
    version_text().prop_filter("valid", |s| is_version(s))
}

fn file_path() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        "[A-Za-z0-9._@+-]{1,6}".prop_filter("dot segments", |s| s != "." && s != ".."),
        1..4,
    )
}

#[derive(Debug, Clone)]
enum Kind {
    Versions,
    Latest,
    Version(String),
    File(String, Vec<String>),
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Versions),
        Just(Kind::Latest),
        valid_version().prop_map(Kind::Version),
        (valid_version(), file_path()).prop_map(|(v, p)| Kind::File(v, p)),
    ]
}

/// The path's parts: namespace, segments, then what the kind adds.
fn parts(ns: &str, segs: &[String], kind: &Kind, dot_slash: bool) -> Vec<String> {
    let mut p = vec![ns.to_owned()];
    p.extend(segs.iter().cloned());
    match kind {
        Kind::Versions => p.push("versions".into()),
        Kind::Latest => {}
        Kind::Version(v) => p.push(v.clone()),
        Kind::File(v, path) => {
            p.push(v.clone());
            p.push("files".into());
            if dot_slash {
                p.push(".".into());
            }
            p.extend(path.iter().cloned());
        }
    }
    p
}

/// `/registries/` + parts, with some characters percent-encoded, some `//` and maybe a trailing
/// `/` (all of which the grammar accepts, SPEC §4).
fn spell(parts: &[String], escapes: &[bool], double: &[bool], trailing: bool) -> String {
    let mut s = String::from("/registries/");
    let mut n = 0;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            s.push('/');
            if double[i % double.len()] {
                s.push('/');
            }
        }
        for c in part.chars() {
            n += 1;
            if escapes[n % escapes.len()] {
                s.push_str(&format!("%{:02X}", c as u32));
            } else {
                s.push(c);
            }
        }
    }
    if trailing {
        s.push('/');
    }
    s
}

proptest! {
    /// Every valid path parses to its resource: the registry key, the namespace and the kind.
    #[test]
    fn valid_paths_parse_to_their_resource(
        ns in namespace(),
        segs in prop::collection::vec(segment(), 1..4),
        kind in kind(),
        dot_slash: bool,
        escapes in prop::collection::vec(prop::bool::weighted(0.1), 1..16),
        double in prop::collection::vec(prop::bool::weighted(0.1), 1..8),
        trailing: bool,
    ) {
        let path = spell(&parts(&ns, &segs, &kind, dot_slash), &escapes, &double, trailing);
        let res = match route(&path) {
            Route::Registry(Ok(res)) => res,
            other => return Err(TestCaseError::fail(format!("{path}: {other:?}"))),
        };
        let key = format!("{ns}/{}", segs.join("/"));
        prop_assert_eq!(res.registry_key(), key.as_str());
        prop_assert_eq!(res.namespace(), ns.as_str());
        let expected = match kind {
            Kind::Versions => ResourceKind::Versions,
            Kind::Latest => ResourceKind::Latest,
            Kind::Version(v) => ResourceKind::Version(v),
            Kind::File(version, p) => ResourceKind::File { version, path: p.join("/") },
        };
        prop_assert_eq!(res.kind, expected);
    }

    /// The same paths with one part replaced by something the grammar forbids are refused with
    /// `INVALID_PATH`.
    #[test]
    fn one_bad_segment_is_refused(
        ns in namespace(),
        segs in prop::collection::vec(segment(), 1..4),
        kind in kind(),
        which in any::<prop::sample::Index>(),
        bad_ns in select(vec!["rack", "@", "@Rack", "@-a", "@a-", "@a.b", "@%zz", "..", "@a%2"]),
        bad_seg in select(vec!["A", "a_b", "-a", "a-", "a--b", "..", ".", "a.b", "a b", "%zz", "\u{e9}", "@a"]),
        bad_version in select(vec!["01.0.0", "1.0", "1.0.0.0", "v1.0.0", "1.0.0-", "1.0.0-01"]),
        bad_file in select(vec!["..", "a%5Cb", "a b", "a?b", "a#b", "a%00b", "\u{e9}"]),
    ) {
        let mut p = parts(&ns, &segs, &kind, false);
        // Which part to break: the namespace, a segment, the version or a file path segment
        // (not `.`: a leading `./` is allowed).
        let mut slots: Vec<(usize, &str)> = vec![(0, bad_ns)];
        slots.extend((1..=segs.len()).map(|i| (i, bad_seg)));
        match &kind {
            Kind::Version(_) => slots.push((segs.len() + 1, bad_version)),
            Kind::File(_, path) => {
                slots.push((segs.len() + 1, bad_version));
                slots.extend((0..path.len()).map(|i| (segs.len() + 3 + i, bad_file)));
            }
            _ => {}
        }
        let (at, bad) = slots[which.index(slots.len())];
        p[at] = bad.to_owned();
        let path = spell(&p, &[false], &[false], false);
        match route(&path) {
            Route::Registry(Err(e)) => prop_assert_eq!(e.code(), "INVALID_PATH", "{}", path),
            other => return Err(TestCaseError::fail(format!("{path} accepted: {other:?}"))),
        }
    }
}
