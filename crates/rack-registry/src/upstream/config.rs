//! `upstreams.json` (SPEC §17): which namespaces live on another Rack registry.
//!
//! ```json
//! {"upstreams": [{"url": "https://registry.rackjs.com", "namespaces": ["@rack"],
//!                 "token": "...", "maxAgeSeconds": 300, "timeoutSeconds": 10}]}
//! ```
//!
//! Parsed strictly and fail-closed, like `auth.json`: a file that breaks any rule is refused
//! whole (at startup the server does not start; on a live reload the last good configuration
//! stays). `token` may instead be `tokenEnv`, the name of an environment variable (which must be
//! set). A URL is `http` or `https` without credentials, query or fragment (the token goes in its
//! own field, so that no log line that names the upstream carries it). A namespace belongs to at
//! most one upstream.

use std::time::Duration;

use rack_core::names::is_namespace;
use serde_json::Value;

use crate::reload::FileContent;

/// `maxAgeSeconds` when absent.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// `timeoutSeconds` when absent.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Upstreams in one file at most (each is a label value of the upstream metrics).
pub const MAX_UPSTREAMS: usize = 64;

/// One upstream registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Base URL without a trailing `/`: what logs and metrics name.
    pub url: String,
    pub namespaces: Vec<String>,
    pub token: Option<String>,
    /// How long a fetched `versions.json` (and listings) is served without asking again.
    pub max_age: Duration,
    /// Bound of each request to the upstream.
    pub timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &self.url)
            .field("namespaces", &self.namespaces)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("max_age", &self.max_age)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub upstreams: Vec<Upstream>,
}

impl UpstreamConfig {
    /// The upstream serving namespace `ns`, if any.
    pub fn for_namespace(&self, ns: &str) -> Option<&Upstream> {
        self.upstreams
            .iter()
            .find(|u| u.namespaces.iter().any(|n| n == ns))
    }

    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }
}

/// Parse the file's content (a missing file: no upstream). `env` looks up `tokenEnv`.
pub fn parse_with(
    content: &FileContent,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<UpstreamConfig, String> {
    let Some(text) = content else {
        return Ok(UpstreamConfig::default());
    };
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = doc
        .as_object()
        .ok_or("must be a JSON object with an \"upstreams\" array")?;
    if let Some(k) = obj.keys().find(|k| *k != "upstreams") {
        return Err(format!("unknown key {k:?} (only \"upstreams\")"));
    }
    let list = match obj.get("upstreams") {
        Some(Value::Array(a)) => a,
        None => return Err("no \"upstreams\" array".into()),
        Some(_) => return Err("\"upstreams\" is not an array".into()),
    };
    if list.len() > MAX_UPSTREAMS {
        return Err(format!("more than {MAX_UPSTREAMS} upstreams"));
    }
    let mut upstreams: Vec<Upstream> = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let at = format!("upstreams[{i}]");
        let e = entry.as_object().ok_or(format!("{at} is not an object"))?;
        const KEYS: [&str; 6] = [
            "url",
            "namespaces",
            "token",
            "tokenEnv",
            "maxAgeSeconds",
            "timeoutSeconds",
        ];
        if let Some(k) = e.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(format!("{at}: unknown key {k:?}"));
        }
        let url = match e.get("url") {
            Some(Value::String(s)) => base_url(s).map_err(|why| format!("{at}.url: {why}"))?,
            _ => return Err(format!("{at}.url is missing or not a string")),
        };
        let namespaces: Vec<String> = match e.get("namespaces") {
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|v| match v.as_str() {
                    Some(ns) if is_namespace(ns) => Ok(ns.to_owned()),
                    _ => Err(format!("{at}.namespaces: {v} is not a namespace (@name)")),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(format!("{at}.namespaces must be a non-empty array of namespaces")),
        };
        for ns in &namespaces {
            let taken = upstreams.iter().any(|u| u.namespaces.contains(ns))
                || namespaces.iter().filter(|n| *n == ns).count() > 1;
            if taken {
                return Err(format!(
                    "{at}: namespace {ns} is given more than once (a namespace has one upstream)"
                ));
            }
        }
        let token = match (e.get("token"), e.get("tokenEnv")) {
            (Some(_), Some(_)) => return Err(format!("{at}: token and tokenEnv are exclusive")),
            (Some(Value::String(t)), None) if !t.trim().is_empty() => Some(t.trim().to_owned()),
            (Some(_), None) => return Err(format!("{at}.token must be a non-empty string")),
            (None, Some(Value::String(var))) => match env(var) {
                Some(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
                _ => return Err(format!("{at}.tokenEnv: environment variable {var} is not set")),
            },
            (None, Some(_)) => return Err(format!("{at}.tokenEnv must be a string")),
            (None, None) => None,
        };
        let seconds = |key: &str, default: Duration, min: u64| -> Result<Duration, String> {
            match e.get(key) {
                None => Ok(default),
                Some(v) => match v.as_u64() {
                    Some(n) if n >= min && n <= 7 * 24 * 3600 => Ok(Duration::from_secs(n)),
                    _ => Err(format!(
                        "{at}.{key} must be a whole number of seconds from {min} to 604800"
                    )),
                },
            }
        };
        upstreams.push(Upstream {
            url,
            namespaces,
            token,
            max_age: seconds("maxAgeSeconds", DEFAULT_MAX_AGE, 0)?,
            timeout: seconds("timeoutSeconds", DEFAULT_TIMEOUT, 1)?,
        });
    }
    Ok(UpstreamConfig { upstreams })
}

/// [`parse_with`] over the process environment.
pub fn parse(content: &FileContent) -> Result<UpstreamConfig, String> {
    parse_with(content, &|var| std::env::var(var).ok())
}

/// An upstream's base URL: `http(s)://host[:port][/path]`, without credentials, query or
/// fragment, returned without a trailing `/`.
pub fn base_url(s: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(s.trim()).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{s:?} is not http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are refused (use \"token\" or \"tokenEnv\")".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{s:?} has a query or fragment"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?} has no host"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<UpstreamConfig, String> {
        parse_with(&Some(text.to_owned()), &|var| {
            (var == "UP_TOKEN").then(|| "from-env".to_owned())
        })
    }

    #[test]
    fn a_full_entry_and_its_defaults() {
        let c = parse_text(
            r#"{"upstreams": [
                {"url": "https://registry.rackjs.com/", "namespaces": ["@rack"], "token": "t", "maxAgeSeconds": 60, "timeoutSeconds": 3},
                {"url": "http://10.0.0.5:8080/base", "namespaces": ["@team", "@other"], "tokenEnv": "UP_TOKEN"}
            ]}"#,
        )
        .unwrap();
        let rack = c.for_namespace("@rack").unwrap();
        assert_eq!(rack.url, "https://registry.rackjs.com");
        assert_eq!(
            (rack.max_age, rack.timeout),
            (Duration::from_secs(60), Duration::from_secs(3))
        );
        let team = c.for_namespace("@other").unwrap();
        assert_eq!(team.url, "http://10.0.0.5:8080/base");
        assert_eq!(team.token.as_deref(), Some("from-env"));
        assert_eq!((team.max_age, team.timeout), (DEFAULT_MAX_AGE, DEFAULT_TIMEOUT));
        assert!(c.for_namespace("@local").is_none());
        assert!(!format!("{rack:?}").contains("\"t\""), "no token in Debug");
        assert_eq!(parse_with(&None, &|_| None).unwrap(), UpstreamConfig::default());
    }

    #[test]
    fn anything_doubtful_is_refused_whole() {
        for bad in [
            "[]",
            "{}",
            r#"{"upstreams": {}}"#,
            r#"{"upstreams": [], "extra": 1}"#,
            r#"{"upstreams": [{"namespaces": ["@a"]}]}"#,
            r#"{"upstreams": [{"url": "ftp://x", "namespaces": ["@a"]}]}"#,
            r#"{"upstreams": [{"url": "https://u:p@x", "namespaces": ["@a"]}]}"#,
            r#"{"upstreams": [{"url": "https://x/?q=1", "namespaces": ["@a"]}]}"#,
            r#"{"upstreams": [{"url": "https://x", "namespaces": []}]}"#,
            r#"{"upstreams": [{"url": "https://x", "namespaces": ["rack"]}]}"#,
            r#"{"upstreams": [{"url": "https://x", "namespaces": ["@a", "@a"]}]}"#,
            r#"{"upstreams": [{"url": "https://x", "namespaces": ["@a"]}, {"url": "https://y", "namespaces": ["@a"]}]}"#,
            r#"{"upstreams": [{"url": "https://x", "namespaces": ["@a"], "token": ""}]}"#,
            r#"{"upstreams": [{"url": "https://x", "namespaces": ["@a"], "token": "t", "tokenEnv": "UP_TOKEN"}]}"#,
            r#"{"upstreams": [{"url": "https://x", "namespaces": ["@a"], "tokenEnv": "UNSET_VAR"}]}"#,
            r#"{"upstreams": [{"url": "https://x", "namespaces": ["@a"], "timeoutSeconds": 0}]}"#,
            r#"{"upstreams": [{"url": "https://x", "namespaces": ["@a"], "maxAgeSeconds": -1}]}"#,
            r#"{"upstreams": [{"url": "https://x", "namespaces": ["@a"], "maxAge": 5}]}"#,
        ] {
            assert!(parse_text(bad).is_err(), "{bad}");
        }
    }
}
