//! SemVer 2.0 versions and their precedence order (SPEC §3).
//!
//! Parsing is the `semver` crate's (which rejects leading zeros and a `v` prefix, as the SPEC
//! wants); ordering is SemVer *precedence*: build metadata is ignored, a prerelease sorts below
//! its release.

use std::cmp::Ordering;

/// A parsed version that remembers its original spelling (it is stored and served verbatim).
#[derive(Debug, Clone)]
pub struct Version {
    parsed: semver::Version,
    text: String,
}

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let parsed = semver::Version::parse(s).ok()?;
        Some(Version {
            parsed,
            text: s.to_owned(),
        })
    }

    /// Whether [`Version::parse`] accepts `s` (the same rule, without keeping a copy of it).
    pub fn is_valid(s: &str) -> bool {
        semver::Version::parse(s).is_ok()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// SemVer precedence (build metadata ignored).
    pub fn cmp_precedence(&self, other: &Version) -> Ordering {
        self.parsed.cmp_precedence(&other.parsed)
    }
}

/// The first of `stored` equal in SemVer precedence to `version` (the same version, with the
/// same or other build metadata: `1.0.0+b` for `1.0.0+a`). Two such versions cannot be told
/// apart by precedence, so "the latest" between them would be arbitrary: a registry keeps one.
pub fn equal_in_precedence<I, S>(version: &str, stored: I) -> Option<S>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let v = Version::parse(version)?;
    stored
        .into_iter()
        .find(|s| Version::parse(s.as_ref()).is_some_and(|o| o.cmp_precedence(&v) == Ordering::Equal))
}

/// Sort version strings newest first by precedence, dropping unparsable ones and duplicates
/// (same string). Versions equal in precedence but spelled differently (`1.0.0+a`, `1.0.0+b`)
/// are all kept, ordered by their text so the result is deterministic.
pub fn sort_descending<I, S>(versions: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut parsed: Vec<Version> = versions
        .into_iter()
        .filter_map(|v| Version::parse(v.as_ref()))
        .collect();
    parsed.sort_by(|a, b| b.cmp_precedence(a).then_with(|| a.text.cmp(&b.text)));
    parsed.dedup_by(|a, b| a.text == b.text);
    parsed.into_iter().map(|v| v.text).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_order() {
        let got = sort_descending(["1.0.0-alpha", "1.0.0-beta.1", "1.0.0", "1.0.0-rc.1"]);
        assert_eq!(got, ["1.0.0", "1.0.0-rc.1", "1.0.0-beta.1", "1.0.0-alpha"]);
    }

    #[test]
    fn numeric_not_lexical() {
        let got = sort_descending(["1.9.0", "1.10.0", "0.2.0", "10.0.0", "2.0.0"]);
        assert_eq!(got, ["10.0.0", "2.0.0", "1.10.0", "1.9.0", "0.2.0"]);
    }

    #[test]
    fn prerelease_identifiers() {
        // Numeric identifiers compare numerically and sort below alphanumeric ones.
        let got = sort_descending([
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-alpha",
            "1.0.0-beta.11",
            "1.0.0-beta.2",
            "1.0.0-beta",
        ]);
        assert_eq!(
            got,
            [
                "1.0.0-beta.11",
                "1.0.0-beta.2",
                "1.0.0-beta",
                "1.0.0-alpha.beta",
                "1.0.0-alpha.1",
                "1.0.0-alpha"
            ]
        );
    }

    #[test]
    fn build_metadata_ignored_for_precedence() {
        let a = Version::parse("1.0.0+build.1").unwrap();
        let b = Version::parse("1.0.0+zzz").unwrap();
        assert_eq!(a.cmp_precedence(&b), Ordering::Equal);
        let got = sort_descending(["1.0.0+build.5", "1.1.0", "0.9.0"]);
        assert_eq!(got, ["1.1.0", "1.0.0+build.5", "0.9.0"]);
    }

    #[test]
    fn equal_precedence_lookup() {
        let stored = ["2.0.0", "1.0.0+build.1", "1.0.0-rc.1", "junk"];
        assert_eq!(
            equal_in_precedence("1.0.0+build.2", stored),
            Some("1.0.0+build.1")
        );
        assert_eq!(equal_in_precedence("1.0.0", stored), Some("1.0.0+build.1"));
        assert_eq!(equal_in_precedence("2.0.0+x", stored), Some("2.0.0"));
        assert_eq!(equal_in_precedence("1.0.0-rc.1+b", stored), Some("1.0.0-rc.1"));
        assert_eq!(equal_in_precedence("1.0.0-rc.2", stored), None);
        assert_eq!(equal_in_precedence("1.0.1", stored), None);
        assert_eq!(equal_in_precedence("not-semver", stored), None);
    }

    #[test]
    fn drops_invalid_and_duplicates() {
        let got = sort_descending(["1.0.0", "v2.0.0", "latest", "1.0.0", "01.0.0"]);
        assert_eq!(got, ["1.0.0"]);
    }
}
