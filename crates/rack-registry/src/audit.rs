//! The audit trail: one JSON object per line for every security-relevant event (publish success
//! and failure, every 401/403, config reloads), to stdout or to `AUDIT_LOG_PATH`.
//!
//! Events are built from typed fields only; no token, hash or secret is ever passed in, so none
//! can be written. Lines are written whole under a lock, so concurrent events never interleave.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde_json::{Map, Value};

enum Sink {
    Stdout,
    File(std::fs::File),
    /// Kept in memory (tests of this module).
    #[cfg(test)]
    Memory(Vec<u8>),
}

pub struct Audit {
    sink: Mutex<Sink>,
}

/// RFC 3339 timestamp with milliseconds, UTC.
pub fn timestamp() -> String {
    crate::clock::format_timestamp(time::OffsetDateTime::now_utc())
}

impl Audit {
    pub fn stdout() -> Audit {
        Audit {
            sink: Mutex::new(Sink::Stdout),
        }
    }

    /// Append to `path` (created if missing).
    pub fn file(path: &Path) -> std::io::Result<Audit> {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Audit {
            sink: Mutex::new(Sink::File(f)),
        })
    }

    /// Record an event: `{"timestamp", "type": "audit", "event": <event>, ...fields}`.
    pub fn record(&self, event: &str, fields: &[(&str, Value)]) {
        let mut obj = Map::new();
        obj.insert("timestamp".into(), Value::String(timestamp()));
        obj.insert("type".into(), Value::String("audit".into()));
        obj.insert("event".into(), Value::String(event.into()));
        for (k, v) in fields {
            obj.insert((*k).into(), v.clone());
        }
        let mut line = Value::Object(obj).to_string();
        line.push('\n');
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let result = match &mut *sink {
            Sink::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
            Sink::File(f) => f.write_all(line.as_bytes()),
            #[cfg(test)]
            Sink::Memory(buf) => buf.write_all(line.as_bytes()),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_json_object_per_line() {
        let a = Audit {
            sink: Mutex::new(Sink::Memory(Vec::new())),
        };
        a.record(
            "publish",
            &[("namespace", json!("@a")), ("outcome", json!("success"))],
        );
        a.record("auth_failure", &[("code", json!("INVALID_TOKEN"))]);
        let Sink::Memory(buf) = &*a.sink.lock().unwrap() else {
            unreachable!()
        };
        let text = String::from_utf8(buf.clone()).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "publish");
        assert_eq!(lines[0]["namespace"], "@a");
        assert_eq!(lines[1]["code"], "INVALID_TOKEN");
        assert!(lines[0]["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
