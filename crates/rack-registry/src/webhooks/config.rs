//! `webhooks.json` (SPEC §7): parsing and validation. Pure: no I/O, no clock.
//!
//! ```json
//! {"webhooks": [{"url": "https://ci.example.com/hook", "secret": "s3cret",
//!                "events": ["uploaded", "version.created"], "enabled": true,
//!                "description": "CI"}]}
//! ```
//!
//! A missing file means no webhooks. A present file is malformed (refused at startup; refused
//! on reload, keeping the last good one) when:
//!
//! - it is not JSON, or not an object with a `webhooks` array;
//! - an entry is not an object;
//! - `url` or `secret` is missing, not a string, or empty (blank counts as empty);
//! - `events` is missing or not an array;
//! - `enabled` is missing or not a boolean.
//!
//! Everything else is accepted: unknown event names (they never fire), non-string items in
//! `events` (ignored), unknown keys, any URL scheme and host (loopback and plain `http` are
//! allowed; a URL that cannot be parsed fails at delivery and is reported there).

use serde_json::Value;

use crate::reload::FileContent;

/// The events this server emits, in the order it emits them after each upload.
pub const EVENTS: [&str; 2] = ["uploaded", "version.created"];

/// The events of the version lifecycle (SPEC §18), one per change.
pub const LIFECYCLE_EVENTS: [&str; 5] = [
    "version.yanked",
    "version.unyanked",
    "registry.deprecated",
    "registry.undeprecated",
    "version.deleted",
];

/// One configured webhook.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Position in the file's `webhooks` array (for logs; never the secret).
    pub index: usize,
    pub url: String,
    pub secret: String,
    pub events: Vec<String>,
    pub enabled: bool,
    pub description: Option<String>,
}

impl Webhook {
    /// Enabled and subscribed to `event`.
    pub fn wants(&self, event: &str) -> bool {
        self.enabled && self.events.iter().any(|e| e == event)
    }
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("index", &self.index)
            .field("url", &redact_url(&self.url))
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .field("enabled", &self.enabled)
            .field("description", &self.description)
            .finish()
    }
}

/// The whole file. `Default` is "no webhooks" (a missing file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookConfig {
    pub webhooks: Vec<Webhook>,
}

impl WebhookConfig {
    /// Enabled webhooks subscribed to `event`.
    pub fn subscribers<'a>(&'a self, event: &'a str) -> impl Iterator<Item = &'a Webhook> + 'a {
        self.webhooks.iter().filter(move |w| w.wants(event))
    }

    pub fn enabled_count(&self) -> usize {
        self.webhooks.iter().filter(|w| w.enabled).count()
    }
}

/// Parse the content of `webhooks.json` (or its absence). The error names the problem and the
/// entry (`webhooks[2].secret is empty`), never a secret.
pub fn parse(content: &FileContent) -> Result<WebhookConfig, String> {
    match content {
        None => Ok(WebhookConfig::default()),
        Some(text) => parse_str(text),
    }
}

pub fn parse_str(text: &str) -> Result<WebhookConfig, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let Some(obj) = doc.as_object() else {
        return Err("must be a JSON object with a \"webhooks\" array".into());
    };
    let list = match obj.get("webhooks") {
        None => return Err("no \"webhooks\" array".into()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err("\"webhooks\" is not an array".into()),
    };
    let mut webhooks = Vec::with_capacity(list.len());
    for (index, entry) in list.iter().enumerate() {
        let at = format!("webhooks[{index}]");
        let Some(e) = entry.as_object() else {
            return Err(format!("{at} is not an object"));
        };
        let text = |key: &str| -> Result<String, String> {
            match e.get(key) {
                None | Some(Value::Null) => Err(format!("{at}.{key} is missing")),
                Some(Value::String(s)) if s.trim().is_empty() => Err(format!("{at}.{key} is empty")),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(format!("{at}.{key} is not a string")),
            }
        };
        let url = text("url")?.trim().to_owned();
        let secret = text("secret")?;
        let events = match e.get("events") {
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            None => return Err(format!("{at}.events is missing (an array of event names)")),
            Some(_) => return Err(format!("{at}.events is not an array")),
        };
        let enabled = match e.get("enabled") {
            Some(Value::Bool(b)) => *b,
            None => return Err(format!("{at}.enabled is missing (true or false)")),
            Some(_) => return Err(format!("{at}.enabled is not a boolean")),
        };
        let description = e.get("description").and_then(Value::as_str).map(str::to_owned);
        webhooks.push(Webhook {
            index,
            url,
            secret,
            events,
            enabled,
            description,
        });
    }
    Ok(WebhookConfig { webhooks })
}

/// The URL for logs: scheme, host, port and path; never user info or query (which may carry
/// credentials of the receiver).
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let mut s = format!("{}://{}", u.scheme(), u.host_str().unwrap_or(""));
            if let Some(p) = u.port() {
                s.push_str(&format!(":{p}"));
            }
            s.push_str(u.path());
            if u.query().is_some() {
                s.push_str("?...");
            }
            s
        }
        Err(_) => "<invalid url>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(extra: &str) -> String {
        format!(
            r#"{{"webhooks":[{{"url":"http://127.0.0.1:9/h","secret":"hook-secret-xyz","events":["uploaded"],"enabled":true{extra}}}]}}"#
        )
    }

    #[test]
    fn missing_file_is_no_webhooks() {
        assert_eq!(parse(&None).unwrap(), WebhookConfig::default());
    }

    #[test]
    fn valid_file() {
        let c = parse_str(
            r#"{"webhooks":[
                {"url":"http://127.0.0.1:9/a","secret":"one","events":["uploaded","version.created"],"enabled":true,"description":"A"},
                {"url":"https://x.example/b","secret":"two","events":["version.created","nope",42],"enabled":false},
                {"url":"http://localhost/c","secret":"three","events":[],"enabled":true,"extra":1}
            ]}"#,
        )
        .unwrap();
        assert_eq!(c.webhooks.len(), 3);
        assert_eq!(c.webhooks[0].description.as_deref(), Some("A"));
        assert_eq!(c.webhooks[1].events, vec!["version.created", "nope"]);
        assert_eq!(c.enabled_count(), 2);
        let up: Vec<usize> = c.subscribers("uploaded").map(|w| w.index).collect();
        assert_eq!(up, vec![0]);
        let created: Vec<usize> = c.subscribers("version.created").map(|w| w.index).collect();
        assert_eq!(created, vec![0], "disabled hooks never fire");
        assert_eq!(c.subscribers("nope").count(), 0);
        assert!(parse_str(r#"{"webhooks":[]}"#).unwrap().webhooks.is_empty());
    }

    #[test]
    fn malformed_files_name_the_problem() {
        let cases: Vec<(String, &str)> = vec![
            ("not json".into(), "not valid JSON"),
            ("[]".into(), "JSON object"),
            ("{}".into(), "no \"webhooks\" array"),
            (r#"{"webhooks":{}}"#.into(), "\"webhooks\" is not an array"),
            (r#"{"webhooks":[1]}"#.into(), "webhooks[0] is not an object"),
            (
                r#"{"webhooks":[{"secret":"s","events":[],"enabled":true}]}"#.into(),
                "webhooks[0].url is missing",
            ),
            (
                r#"{"webhooks":[{"url":"","secret":"s","events":[],"enabled":true}]}"#.into(),
                "webhooks[0].url is empty",
            ),
            (
                r#"{"webhooks":[{"url":"http://h","secret":"  ","events":[],"enabled":true}]}"#.into(),
                "webhooks[0].secret is empty",
            ),
            (
                r#"{"webhooks":[{"url":"http://h","secret":7,"events":[],"enabled":true}]}"#.into(),
                "webhooks[0].secret is not a string",
            ),
            (
                r#"{"webhooks":[{"url":"http://h","secret":"s","events":"uploaded","enabled":true}]}"#.into(),
                "webhooks[0].events is not an array",
            ),
            (
                r#"{"webhooks":[{"url":"http://h","secret":"s","enabled":true}]}"#.into(),
                "webhooks[0].events is missing",
            ),
            (
                r#"{"webhooks":[{"url":"http://h","secret":"s","events":[],"enabled":"yes"}]}"#.into(),
                "webhooks[0].enabled is not a boolean",
            ),
            (
                r#"{"webhooks":[{"url":"http://h","secret":"s","events":[]}]}"#.into(),
                "webhooks[0].enabled is missing",
            ),
        ];
        for (text, want) in cases {
            let e = parse_str(&text).unwrap_err();
            assert!(e.contains(want), "{text}: {e:?} lacks {want:?}");
        }
    }

    #[test]
    fn errors_and_debug_never_show_the_secret() {
        let text = r#"{"webhooks":[{"url":"http://h","secret":"TOPSECRET","events":[],"enabled":1}]}"#;
        assert!(!parse_str(text).unwrap_err().contains("TOPSECRET"));
        let c = parse_str(&hook(r#","description":"d""#)).unwrap();
        assert!(!format!("{c:?}").contains("hook-secret-xyz"));
        assert!(format!("{c:?}").contains("<redacted>"));
    }
}
