//! The staging area of one upload: `<STORAGE_ROOT>/.tmp/upload-<random>/` (SPEC §5.3).
//!
//! Everything an upload writes before every check has passed lives here. The directory is
//! removed before the response is sent ([`Staging::remove`]); `Drop` is the fallback for a
//! request that is cancelled (client gone), and startup clears leftovers of a crash.

use std::path::{Path, PathBuf};

pub struct Staging {
    dir: Option<PathBuf>,
}

impl Staging {
    /// Create a fresh staging directory under `tmp_root` (creating `tmp_root` itself if needed,
    /// but never its parent: a storage root that is gone is not re-created here).
    pub async fn create(tmp_root: &Path) -> std::io::Result<Staging> {
        let dir = tmp_root.join(format!("upload-{:016x}", rand::random::<u64>()));
        match tokio::fs::create_dir(tmp_root).await {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        tokio::fs::create_dir(&dir).await?;
        Ok(Staging { dir: Some(dir) })
    }

    pub fn path(&self) -> &Path {
        self.dir.as_deref().expect("staging used after removal")
    }

    /// The uploaded package file.
    pub fn package(&self) -> PathBuf {
        self.path().join("package.tar.gz")
    }

    /// Where the archive is extracted: after every check it is exactly the version's content.
    pub fn tree(&self) -> PathBuf {
        self.path().join("tree")
    }

    /// Remove the directory now (what is left of it: a publish may have moved `tree` away).
    pub async fn remove(mut self) {
        if let Some(dir) = self.dir.take() {
            if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not remove staging directory");
                }
            }
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
