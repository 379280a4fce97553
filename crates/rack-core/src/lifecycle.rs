//! The version lifecycle of SPEC §18 as pure rules: the `lifecycle.json` document (yanked,
//! deprecated and deleted state of one registry), the management request bodies and their
//! limits, and what the state means for reads, listings and publishes. The routes, storage
//! writes, webhooks and pages that use these rules are built on top (issue 26); nothing here
//! does I/O or reads a clock (`at` timestamps are passed in).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::names::{is_namespace, is_segment};

/// The longest `reason` or `message` a request may carry, in characters.
pub const MAX_TEXT_CHARS: usize = 500;

/// `lifecycle.json` next to a registry's `versions.json`.
pub fn lifecycle_key(registry: &str) -> String {
    format!("{registry}/lifecycle.json")
}

/// One yanked version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Yank {
    pub reason: String,
    /// RFC 3339, UTC.
    pub at: String,
    /// The token entry's `mark`, or `admin`.
    pub by: String,
}

/// A deprecated registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deprecation {
    pub message: String,
    /// A registry identifier (`@ns/seg(/seg)*`), if the registry has one.
    #[serde(default)]
    pub successor: Option<String>,
    pub at: String,
    pub by: String,
}

/// One deleted version (its files are gone; it can never be published again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    pub at: String,
    pub by: String,
}

/// The state of one registry (`@ns/<segs>/lifecycle.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    #[serde(default)]
    pub yanked: BTreeMap<String, Yank>,
    #[serde(default)]
    pub deprecated: Option<Deprecation>,
    #[serde(default)]
    pub deleted: BTreeMap<String, Deletion>,
}

/// What a read of one exact version must do (SPEC §18).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionState<'a> {
    /// Served as usual.
    Live,
    /// Served, with `X-Rack-Yanked: <reason>`.
    Yanked(&'a str),
    /// 410 `VERSION_DELETED`.
    Deleted,
}

impl Lifecycle {
    /// A stored document; `None` when it is not one (a corrupt file is a 500, logged with its key,
    /// as for `versions.json`).
    pub fn parse(body: &[u8]) -> Option<Lifecycle> {
        // An object only (serde would also take a struct from an array).
        match serde_json::from_slice::<serde_json::Value>(body).ok()? {
            v @ serde_json::Value::Object(_) => serde_json::from_value(v).ok(),
            _ => None,
        }
    }

    /// Pretty-printed with two-space indent and a trailing newline, like `versions.json`.
    pub fn render(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("serializable");
        s.push('\n');
        s
    }

    /// The state of `version` for a read of it.
    pub fn state(&self, version: &str) -> VersionState<'_> {
        if self.deleted.contains_key(version) {
            VersionState::Deleted
        } else if let Some(y) = self.yanked.get(version) {
            VersionState::Yanked(&y.reason)
        } else {
            VersionState::Live
        }
    }

    /// What `versions.json` lists of the stored versions: every one neither yanked nor deleted,
    /// newest first (so `versions[0]`, the latest, is the newest live version).
    pub fn listed<I, S>(&self, stored: I) -> Vec<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        crate::version::sort_descending(stored.into_iter().filter(|v| {
            let v = v.as_ref();
            !self.yanked.contains_key(v) && !self.deleted.contains_key(v)
        }))
    }

    /// Whether a publish of `version` must be refused because a version equal to it in
    /// precedence was yanked or deleted (409 `VERSION_EXISTS`: a deleted version's bytes may be
    /// cached by clients, which must never meet other bytes under the same version).
    pub fn blocks_publish_of(&self, version: &str) -> Option<&str> {
        let taken = self.yanked.keys().chain(self.deleted.keys());
        crate::version::equal_in_precedence(version, taken).map(String::as_str)
    }

    /// The headers every read of a deprecated registry carries: `Deprecation: @<unix seconds>`
    /// (RFC 9745) and, with a successor, `Link: </registries/@ns/other>; rel="successor-version"`.
    /// Empty when the registry is not deprecated (or its `at` is not a timestamp).
    pub fn deprecation_headers(&self) -> Vec<(&'static str, String)> {
        let Some(d) = &self.deprecated else {
            return Vec::new();
        };
        let Some(ms) = crate::auth::parse_timestamp_ms(&d.at) else {
            return Vec::new();
        };
        let mut out = vec![("Deprecation", format!("@{}", ms.div_euclid(1000)))];
        if let Some(s) = &d.successor {
            out.push(("Link", format!("</registries/{s}>; rel=\"successor-version\"")));
        }
        out
    }
}

/// Why a management request body is refused (a 400 with this message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

/// The body of `PUT /-/yank/...`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct YankRequest {
    pub reason: String,
}

/// The body of `PUT /-/deprecate/...`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeprecateRequest {
    pub message: String,
    #[serde(default)]
    pub successor: Option<String>,
}

/// Plain text of at most [`MAX_TEXT_CHARS`] characters, not blank, with no control character:
/// it goes into a response header (`X-Rack-Yanked`) and onto web pages.
fn plain_text(field: &str, s: &str) -> Result<(), Invalid> {
    if s.trim().is_empty() {
        return Err(Invalid(format!("{field} must not be empty")));
    }
    if s.chars().count() > MAX_TEXT_CHARS {
        return Err(Invalid(format!(
            "{field} is longer than {MAX_TEXT_CHARS} characters"
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(Invalid(format!(
            "{field} must be plain text (no control characters)"
        )));
    }
    Ok(())
}

/// A registry identifier: `@ns/seg(/seg)*`.
pub fn is_registry_identifier(s: &str) -> bool {
    let mut parts = s.split('/');
    let ns = parts.next().unwrap_or_default();
    let segs: Vec<&str> = parts.collect();
    is_namespace(ns) && !segs.is_empty() && segs.iter().all(|p| is_segment(p))
}

impl YankRequest {
    pub fn parse(body: &[u8]) -> Result<YankRequest, Invalid> {
        let r: YankRequest =
            serde_json::from_slice(body).map_err(|_| Invalid("body must be {\"reason\": \"...\"}".into()))?;
        plain_text("reason", &r.reason)?;
        Ok(r)
    }
}

impl DeprecateRequest {
    pub fn parse(body: &[u8]) -> Result<DeprecateRequest, Invalid> {
        let r: DeprecateRequest = serde_json::from_slice(body).map_err(|_| {
            Invalid(
                "body must be {\"message\": \"...\", \"successor\": \"@ns/registry\"} (successor optional)"
                    .into(),
            )
        })?;
        plain_text("message", &r.message)?;
        if let Some(s) = &r.successor {
            if !is_registry_identifier(s) {
                return Err(Invalid(format!(
                    "successor {:?} is not a registry identifier (@ns/segment...)",
                    s.chars().take(80).collect::<String>()
                )));
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yanked(v: &str, reason: &str) -> (String, Yank) {
        let y = Yank {
            reason: reason.into(),
            at: "2026-12-07T10:00:00Z".into(),
            by: "admin".into(),
        };
        (v.to_owned(), y)
    }

    #[test]
    fn the_document_round_trips_and_defaults_to_nothing() {
        let empty = Lifecycle::parse(b"{}").unwrap();
        assert_eq!(empty, Lifecycle::default());
        let mut lc = Lifecycle::default();
        lc.yanked.extend([yanked("1.0.0", "broken template")]);
        lc.deprecated = Some(Deprecation {
            message: "use the new one".into(),
            successor: Some("@ns/other".into()),
            at: "2026-12-07T10:00:00Z".into(),
            by: "CI".into(),
        });
        lc.deleted.insert(
            "0.9.0".into(),
            Deletion {
                at: "2026-12-07T11:00:00Z".into(),
                by: "admin".into(),
            },
        );
        let text = lc.render();
        assert!(text.ends_with("}\n") && text.contains("\n  \"yanked\""), "{text}");
        assert_eq!(Lifecycle::parse(text.as_bytes()), Some(lc));
        assert_eq!(Lifecycle::parse(b"[]"), None);
        assert_eq!(Lifecycle::parse(b"{\"yanked\": 3}"), None);
        assert_eq!(lifecycle_key("@ns/a/b"), "@ns/a/b/lifecycle.json");
    }

    #[test]
    fn listings_skip_yanked_and_deleted_versions_and_the_latest_is_the_newest_live_one() {
        let mut lc = Lifecycle::default();
        lc.yanked.extend([yanked("2.0.0", "oops")]);
        lc.deleted.insert(
            "1.5.0".into(),
            Deletion {
                at: "2026-12-07T11:00:00Z".into(),
                by: "admin".into(),
            },
        );
        let stored = ["1.0.0", "2.0.0", "1.5.0", "1.1.0-rc.1"];
        assert_eq!(lc.listed(stored), ["1.1.0-rc.1", "1.0.0"]);
        lc.yanked
            .extend([yanked("1.0.0", "x"), yanked("1.1.0-rc.1", "y")]);
        assert!(lc.listed(stored).is_empty(), "every version yanked: no latest");
        assert_eq!(Lifecycle::default().listed(stored)[0], "2.0.0");
    }

    #[test]
    fn reads_of_an_exact_version_know_its_state() {
        let mut lc = Lifecycle::default();
        lc.yanked.extend([yanked("1.0.0", "leaked a secret")]);
        lc.deleted.insert(
            "0.1.0".into(),
            Deletion {
                at: "2026-12-07T11:00:00Z".into(),
                by: "admin".into(),
            },
        );
        assert_eq!(lc.state("1.0.0"), VersionState::Yanked("leaked a secret"));
        assert_eq!(lc.state("0.1.0"), VersionState::Deleted);
        assert_eq!(lc.state("2.0.0"), VersionState::Live);
    }

    #[test]
    fn yanked_and_deleted_versions_can_never_be_published_again() {
        let mut lc = Lifecycle::default();
        lc.yanked.extend([yanked("1.0.0+a", "x")]);
        lc.deleted.insert(
            "2.0.0".into(),
            Deletion {
                at: "2026-12-07T11:00:00Z".into(),
                by: "admin".into(),
            },
        );
        assert_eq!(
            lc.blocks_publish_of("1.0.0+b"),
            Some("1.0.0+a"),
            "equal precedence"
        );
        assert_eq!(lc.blocks_publish_of("2.0.0"), Some("2.0.0"));
        assert_eq!(lc.blocks_publish_of("1.0.1"), None);
    }

    #[test]
    fn deprecation_headers_follow_rfc_9745() {
        let mut lc = Lifecycle::default();
        assert!(lc.deprecation_headers().is_empty());
        lc.deprecated = Some(Deprecation {
            message: "m".into(),
            successor: None,
            at: "2026-12-07T10:00:00Z".into(),
            by: "admin".into(),
        });
        assert_eq!(
            lc.deprecation_headers(),
            [("Deprecation", "@1796637600".to_owned())]
        );
        lc.deprecated.as_mut().unwrap().successor = Some("@ns/next/thing".into());
        assert_eq!(
            lc.deprecation_headers()[1],
            (
                "Link",
                "</registries/@ns/next/thing>; rel=\"successor-version\"".to_owned()
            )
        );
    }

    #[test]
    fn request_bodies_are_bounded_plain_text_and_successors_are_identifiers() {
        assert_eq!(
            YankRequest::parse(br#"{"reason": "broken"}"#).unwrap().reason,
            "broken"
        );
        for bad in [
            &br#"{}"#[..],
            br#"{"reason": ""}"#,
            br#"{"reason": "   "}"#,
            br#"{"reason": "a\nb"}"#,
            br#"{"reason": "x", "extra": 1}"#,
            br#"not json"#,
        ] {
            assert!(
                YankRequest::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(r#"{{"reason": "{}"}}"#, "é".repeat(MAX_TEXT_CHARS + 1));
        assert!(YankRequest::parse(long.as_bytes()).is_err());
        let at_limit = format!(r#"{{"reason": "{}"}}"#, "é".repeat(MAX_TEXT_CHARS));
        assert!(
            YankRequest::parse(at_limit.as_bytes()).is_ok(),
            "500 characters, not bytes"
        );

        let d = DeprecateRequest::parse(br#"{"message": "moved", "successor": "@ns/a/b"}"#).unwrap();
        assert_eq!(d.successor.as_deref(), Some("@ns/a/b"));
        assert!(DeprecateRequest::parse(br#"{"message": "moved"}"#).is_ok());
        for bad in [
            "@ns",
            "ns/a",
            "@ns/A",
            "@ns/a/../b",
            "@ns/a/",
            "@ns//a",
            "@ns/a@1.0.0",
        ] {
            let body = format!(r#"{{"message": "m", "successor": "{bad}"}}"#);
            assert!(DeprecateRequest::parse(body.as_bytes()).is_err(), "{bad}");
        }
    }
}
