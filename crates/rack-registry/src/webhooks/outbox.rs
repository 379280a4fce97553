//! The durable outbox: one JSON file per pending delivery in `WEBHOOK_OUTBOX_DIR`.
//!
//! A file is `<delivery id>.json`, written whole to a temporary file (`.<id>.json.tmp`), fsynced,
//! renamed into place and the directory fsynced: after a crash a delivery file is either absent
//! or complete, never torn. It holds everything that goes on the wire (URL, exact body,
//! timestamp, signature, delivery id), computed once when the delivery is queued, plus the
//! schedule (attempts made, next attempt time). No webhook secret is ever written: the
//! signature is already computed. Files are created `0600` in a `0700` directory anyway, since
//! bodies and URLs are nobody else's business.
//!
//! A file is rewritten after each failed attempt (attempt count and next time) and removed after
//! a 2xx or after the last attempt.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Version of the file format.
pub const FORMAT: u32 = 1;

/// A pending delivery, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// File format version ([`FORMAT`]).
    pub format: u32,
    /// `X-Webhook-Delivery`: the same on every attempt.
    pub id: String,
    /// `X-Webhook-Event`: `uploaded` or `version.created`.
    pub event: String,
    /// Where to POST, as configured when the delivery was queued.
    pub url: String,
    /// Index of the webhook in `webhooks.json` when queued (for logs only).
    pub webhook: usize,
    /// `X-Webhook-Timestamp`, equal to the body's `timestamp`.
    pub timestamp: String,
    /// `X-Webhook-Signature`: `sha256=<hex>` of `body` with the webhook's secret.
    pub signature: String,
    /// The exact body bytes (UTF-8 JSON).
    pub body: String,
    /// A delivery whose first attempt must have completed before this one starts (the
    /// `uploaded` delivery to the same webhook, for `version.created`).
    #[serde(default)]
    pub after: Option<String>,
    /// Attempts completed so far.
    pub attempts: u32,
    /// Earliest time of the next attempt, Unix milliseconds.
    pub next_attempt_ms: i64,
    /// When the delivery was queued, Unix milliseconds.
    pub created_ms: i64,
    /// Queue order among deliveries queued in the same millisecond.
    #[serde(default)]
    pub seq: u64,
}

pub struct Outbox {
    dir: PathBuf,
    /// The nearest ancestor of `dir` that existed when the outbox was opened. It is never
    /// re-created: the default outbox lives in the storage root, and a root removed while the
    /// server runs must stay removed (a retry would otherwise bring back an empty root).
    anchor: Option<PathBuf>,
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Outbox {
    /// Open the outbox and clear temporary files a crash left behind. The directory is created
    /// with the first delivery, so a server without webhooks leaves no trace.
    pub fn open(dir: &Path) -> std::io::Result<Outbox> {
        let outbox = Outbox {
            dir: dir.to_owned(),
            anchor: dir.ancestors().skip(1).find(|p| p.is_dir()).map(Path::to_owned),
        };
        if !dir.exists() {
            return Ok(outbox);
        }
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(outbox)
    }

    /// Create the directory (0700) if it does not exist yet.
    pub fn ensure_dir(&self) -> std::io::Result<()> {
        if self.dir.is_dir() {
            return Ok(());
        }
        if let Some(anchor) = self.anchor.as_deref().filter(|a| !a.is_dir()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is gone (it is not re-created)", anchor.display()),
            ));
        }
        std::fs::create_dir_all(&self.dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        }
        if let Some(parent) = self.dir.parent() {
            let _ = fsync_dir(parent);
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn exists(&self, id: &str) -> bool {
        self.path_of(id).exists()
    }

    fn write_file(&self, d: &Delivery) -> std::io::Result<()> {
        debug_assert!(is_delivery_id(&d.id));
        let tmp = self.dir.join(format!(".{}.json.tmp", d.id));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        let mut bytes = serde_json::to_vec_pretty(d).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, self.path_of(&d.id))
    }

    /// Persist new or updated deliveries; durable when this returns.
    pub fn write_all(&self, ds: &[Delivery]) -> std::io::Result<()> {
        self.ensure_dir()?;
        for d in ds {
            self.write_file(d)?;
        }
        fsync_dir(&self.dir)
    }

    /// Forget a delivery (delivered, or out of attempts).
    pub fn remove(&self, id: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path_of(id)) {
            Ok(()) => fsync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every pending delivery, oldest first. A file that cannot be understood is renamed to
    /// `<name>.corrupt` (kept for the operator, never retried) and reported in the second list.
    pub fn load(&self) -> std::io::Result<(Vec<Delivery>, Vec<String>)> {
        let mut found = Vec::new();
        let mut corrupt = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((found, corrupt)),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            if name.starts_with('.') || !entry.file_type()?.is_file() {
                continue;
            }
            let parsed = std::fs::read(entry.path())
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Delivery>(&b).map_err(|e| e.to_string()))
                .and_then(|d| {
                    if d.id != stem || !is_delivery_id(&d.id) {
                        Err("file name and delivery id differ".into())
                    } else if d.format != FORMAT {
                        Err(format!("unknown format {}", d.format))
                    } else {
                        Ok(d)
                    }
                });
            match parsed {
                Ok(d) => found.push(d),
                Err(reason) => {
                    let _ = std::fs::rename(entry.path(), self.dir.join(format!("{name}.corrupt")));
                    corrupt.push(format!("{name}: {reason}"));
                }
            }
        }
        found.sort_by(|a, b| (a.created_ms, a.seq, &a.id).cmp(&(b.created_ms, b.seq, &b.id)));
        Ok((found, corrupt))
    }
}

/// `<epoch ms>-<6 random base36 characters>` (SPEC §14 allows 1 to 6).
pub fn delivery_id(ms: i64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    use rand::Rng;
    let mut rng = rand::rng();
    let suffix: String = (0..6).map(|_| DIGITS[rng.random_range(0..36)] as char).collect();
    format!("{ms}-{suffix}")
}

/// Is `id` shaped like a delivery id (so it is safe as a file name)?
pub fn is_delivery_id(id: &str) -> bool {
    let Some((ms, suffix)) = id.split_once('-') else {
        return false;
    };
    !ms.is_empty()
        && ms.len() <= 20
        && ms.bytes().all(|b| b.is_ascii_digit())
        && (1..=6).contains(&suffix.len())
        && suffix
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: &str, created: i64) -> Delivery {
        Delivery {
            format: FORMAT,
            id: id.into(),
            event: "uploaded".into(),
            url: "http://127.0.0.1:1/".into(),
            webhook: 0,
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            signature: "sha256=00".into(),
            body: "{\"event\":\"uploaded\",\"x\":\"\u{e9}\\\"\"}".into(),
            after: None,
            attempts: 0,
            next_attempt_ms: created,
            created_ms: created,
            seq: 0,
        }
    }

    #[test]
    fn a_vanished_parent_is_not_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("storage");
        std::fs::create_dir(&root).unwrap();
        let ob = Outbox::open(&root.join(".webhooks")).unwrap();
        std::fs::remove_dir(&root).unwrap();
        assert!(ob.write_all(&[delivery("1-a", 1)]).is_err());
        assert!(!root.exists(), "the storage root was re-created");
        std::fs::create_dir(&root).unwrap();
        ob.write_all(&[delivery("1-a", 1)]).unwrap();
        assert!(root.join(".webhooks/1-a.json").is_file());
        // Missing parents below the anchor are still created.
        let ob = Outbox::open(&dir.path().join("a/b/outbox")).unwrap();
        ob.write_all(&[]).unwrap();
        assert!(dir.path().join("a/b/outbox").is_dir());
    }

    #[test]
    fn write_load_update_remove() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("outbox");
        let ob = Outbox::open(&root).unwrap();
        assert!(!root.exists(), "created lazily");
        assert!(ob.load().unwrap().0.is_empty());
        ob.write_all(&[]).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&root).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        std::fs::write(root.join(".1-a.json.tmp"), "partial").unwrap();
        std::fs::write(root.join("9-zz.json"), "{not json").unwrap();
        std::fs::write(root.join("README"), "ignored").unwrap();
        let ob2 = Outbox::open(&root).unwrap();
        assert!(
            !root.join(".1-a.json.tmp").exists(),
            "stale temp files are cleared"
        );
        let a = delivery("2-bbb", 2);
        let mut b = delivery("1-aaa", 1);
        b.after = Some("x".into());
        ob.write_all(&[a.clone(), b.clone()]).unwrap();
        let (loaded, corrupt) = ob2.load().unwrap();
        assert_eq!(loaded, vec![b.clone(), a.clone()], "oldest first, bytes intact");
        assert_eq!(corrupt.len(), 1);
        assert!(root.join("9-zz.json.corrupt").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(root.join("2-bbb.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mut a2 = a.clone();
        a2.attempts = 2;
        a2.next_attempt_ms = 99;
        ob.write_all(std::slice::from_ref(&a2)).unwrap();
        ob.remove("1-aaa").unwrap();
        ob.remove("1-aaa").unwrap();
        let (loaded, _) = ob.load().unwrap();
        assert_eq!(loaded, vec![a2]);
        assert!(ob.exists("2-bbb") && !ob.exists("1-aaa"));
    }
}
