//! The grammar of names (SPEC §2).
//!
//! The patterns are tiny and sit on the hot path of every request, so they are written as
//! byte-level checks instead of pulling a regex engine into the core (and into the Worker's wasm).
//! The unit tests cross-check each one against the SPEC's regular expression.

/// `^@[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?$`
pub fn is_namespace(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('@') else {
        return false;
    };
    let b = rest.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    match (b.first(), b.last()) {
        (Some(&f), Some(&l)) => alnum(f) && alnum(l) && b.iter().all(|&c| alnum(c) || c == b'_' || c == b'-'),
        _ => false,
    }
}

/// `^[a-z0-9]+(?:-[a-z0-9]+)*$`: registry path segments and preset names.
pub fn is_segment(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    // One pass: alphanumeric runs joined by single hyphens.
    match (b.first(), b.last()) {
        (Some(&f), Some(&l)) if alnum(f) && alnum(l) => b
            .windows(2)
            .all(|w| alnum(w[1]) || (w[1] == b'-' && w[0] != b'-')),
        _ => false,
    }
}

/// A full SemVer 2.0 version (no `v` prefix, no leading zeros).
pub fn is_version(s: &str) -> bool {
    // Every version starts with a digit; most path segments do not, and are told apart here
    // without a parse (the router asks this of every segment).
    s.as_bytes().first().is_some_and(u8::is_ascii_digit) && crate::version::Version::is_valid(s)
}

/// The `/`-separated parts of `s`, exactly as `s.split('/')` yields them. By hand because the
/// router and the path checks split every request's path: `str::split` with a `char` sets up
/// a `memchr` search per part, which for parts of a few bytes costs more than a plain scan
/// (callgrind: ~800 of the ~27,000 instructions of a small read).
pub fn slash_parts(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.bytes().position(|b| b == b'/') {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// Template file path: relative POSIX path, optional leading `./`, segments of
/// `[A-Za-z0-9._@+-]+`, no `.`/`..`/empty segment, never absolute. (`%`, `?`, `#`, `\` are
/// excluded by the segment alphabet.)
pub fn is_file_path(s: &str) -> bool {
    let p = s.strip_prefix("./").unwrap_or(s);
    !p.is_empty()
        && slash_parts(p).all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'@' | b'+' | b'-'))
        })
}

/// The canonical form of a valid file path: without its leading `./`.
pub fn normalize_file_path(s: &str) -> &str {
    s.strip_prefix("./").unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    #[test]
    fn slash_parts_split_as_str_split_does() {
        for s in [
            "",
            "/",
            "a",
            "a/b",
            "/a/",
            "//a//b//",
            "@r/x/1.0.0/files/./t.ts",
            "é/ü/",
            "a/é",
        ] {
            assert_eq!(
                slash_parts(s).collect::<Vec<_>>(),
                s.split('/').collect::<Vec<_>>(),
                "{s:?}"
            );
        }
    }

    const SAMPLES: &[&str] = &[
        "",
        "@",
        "@a",
        "@rack",
        "@Rack",
        "@ra_ck",
        "@rack-",
        "@rack_",
        "@-rack",
        "@_r",
        "@r.a",
        "rack",
        "a",
        "a-b",
        "a--b",
        "-a",
        "a-",
        "A",
        "a_b",
        "a.b",
        "1.0.0",
        "abc123",
        "@1",
        "@a b",
        "é",
        "@é",
        "a/b",
        "ab-cd-ef",
        "@my-org_x9",
    ];

    #[test]
    fn namespace_matches_spec_regex() {
        let re = Regex::new(r"^@[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?$").unwrap();
        for s in SAMPLES {
            assert_eq!(is_namespace(s), re.is_match(s), "{s:?}");
        }
    }

    #[test]
    fn segment_matches_spec_regex() {
        let re = Regex::new(r"^[a-z0-9]+(?:-[a-z0-9]+)*$").unwrap();
        for s in SAMPLES {
            assert_eq!(is_segment(s), re.is_match(s), "{s:?}");
        }
    }

    #[test]
    fn file_paths() {
        for ok in [
            "a",
            "./a",
            "templates/x.json",
            "./templates/.gitignore",
            "a/b/c.d.e",
            "@x/+y",
            ".husky/pre-commit",
            "A-Z_0.9",
            "...",
            ".a",
        ] {
            assert!(is_file_path(ok), "{ok:?} should be valid");
        }
        for bad in [
            "",
            "./",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            "a//b",
            "a/",
            ".",
            "..",
            "././a",
            "a%2e",
            "a?b",
            "a#b",
            "a\\b",
            "a b",
            "é",
            "a\0b",
            ".//a",
        ] {
            assert!(!is_file_path(bad), "{bad:?} should be invalid");
        }
        assert_eq!(normalize_file_path("./a/b"), "a/b");
    }

    #[test]
    fn versions() {
        for ok in [
            "0.0.0",
            "1.0.0",
            "1.0.0-rc.1",
            "1.0.0+build.5",
            "1.0.0-alpha+001",
            "10.20.30",
        ] {
            assert!(is_version(ok), "{ok}");
        }
        for bad in [
            "v1.0.0", "01.0.0", "1.0", "1.0.0-", "1.0.0-01", "1", "latest", "1.0.0 ", "",
        ] {
            assert!(!is_version(bad), "{bad}");
        }
    }
}
