//! Safe extraction of an uploaded `.tar.gz` into staging (SPEC §5.1 check 6, §5.3).
//!
//! Runs on the blocking pool. Nothing is trusted: every entry path is normalized and refused if
//! absolute or containing `..`; each regular file's declared size is compared with the remaining
//! expansion budget *before* any of its bytes are written (a gzip bomb stops at the first entry
//! that would cross the limit); the decompressed stream as a whole is capped too, so header
//! padding or skipped data cannot run unbounded. Links, devices and fifos are recorded, never
//! created; a file is created with `O_EXCL` inside a directory tree that holds nothing but what
//! this function made, so nothing can redirect a write outside staging.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;

use rack_core::manifest::{clip, unstorable_path, EntryKind, CLIP};
use rack_core::ApiError;
use tar::EntryType;

/// Extraction limits (SPEC §5.3; configurable).
#[derive(Debug, Clone, Copy)]
pub struct ExtractLimits {
    pub max_entries: u64,
    pub max_bytes: u64,
    pub max_manifest_bytes: u64,
}

/// What the archive held: normalized path (no `./`, no trailing `/`) to kind.
pub type Entries = BTreeMap<String, EntryKind>;

fn invalid(detail: impl std::fmt::Display) -> ApiError {
    ApiError::invalid_archive(detail)
}

/// Normalize an entry path: drop `.` and empty segments; `None` if absolute or with `..`.
fn normalize(raw: &str) -> Option<String> {
    if raw.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for seg in raw.split('/') {
        match seg {
            "" | "." => {}
            ".." => return None,
            s => parts.push(s),
        }
    }
    Some(parts.join("/"))
}

/// A reader that fails once more than `left` bytes have been read through it.
pub(super) struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::other("archive expands past the configured limit"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The decompressed size an archive may reach: the contents budget plus headers and padding
/// (at most a few blocks per entry).
fn stream_cap(limits: ExtractLimits) -> u64 {
    limits
        .max_bytes
        .saturating_add(limits.max_entries.saturating_mul(3 * 512))
        .saturating_add(1 << 20)
}

/// The decompressed stream of a package, capped at [`stream_cap`].
pub(super) fn decompressed<R: Read>(
    compressed: R,
    limits: ExtractLimits,
) -> Capped<flate2::read::GzDecoder<R>> {
    Capped {
        inner: flate2::read::GzDecoder::new(compressed),
        left: stream_cap(limits),
    }
}

/// Whether `head` (the first bytes of the package) is gzip's magic number.
pub(super) fn is_gzip(head: &[u8]) -> bool {
    head.len() >= 2 && head[..2] == [0x1f, 0x8b]
}

pub(super) fn not_gzip() -> ApiError {
    invalid("not gzip data")
}

/// Extract `package` into `dest` (which must not exist yet).
pub fn extract(package: &Path, dest: &Path, limits: ExtractLimits) -> Result<Entries, ExtractError> {
    std::fs::create_dir(dest).map_err(ExtractError::Io)?;
    let file = std::fs::File::open(package).map_err(ExtractError::Io)?;
    let mut magic = [0u8; 2];
    {
        let mut f = &file;
        if f.read_exact(&mut magic).is_err() || !is_gzip(&magic) {
            return Err(not_gzip().into());
        }
    }
    let open = || -> Result<tar::Archive<Capped<GzFile>>, ExtractError> {
        let file = std::fs::File::open(package).map_err(ExtractError::Io)?;
        Ok(tar::Archive::new(decompressed(io::BufReader::new(file), limits)))
    };
    // The entry limit and metadata sizes are enforced here, before anything is written.
    prescan(open()?, limits)?;
    unpack(open()?, &mut Disk { dest }, limits)
}

/// Where [`unpack`] puts entries: the staging directory ([`Disk`]), or nowhere ([`Tally`]).
/// Both report the same conflicts, so that a package gets the same answer either way.
pub(super) trait Sink {
    /// A regular file of `size` bytes read from `data`. A file or directory already at `path`,
    /// or a file where a parent directory should be, is `AlreadyExists`/`NotADirectory`.
    fn file(&mut self, path: &str, data: &mut dyn Read, size: u64) -> io::Result<()>;
    /// A directory and its parents (existing directories are fine, a file in the way is not).
    fn dir(&mut self, path: &str) -> io::Result<()>;
}

/// Writes into a fresh directory tree, fsyncing each file.
struct Disk<'a> {
    dest: &'a Path,
}

impl Sink for Disk<'_> {
    fn file(&mut self, path: &str, data: &mut dyn Read, size: u64) -> io::Result<()> {
        write_file(data, &self.dest.join(path), size)
    }
    fn dir(&mut self, path: &str) -> io::Result<()> {
        std::fs::create_dir_all(self.dest.join(path))
    }
}

/// Writes nothing: remembers which paths are files and which directories (to report the
/// conflicts [`Disk`] would meet), reads every file to its end, and keeps `registry.json`.
#[derive(Default)]
pub(super) struct Tally {
    files: std::collections::HashSet<String>,
    dirs: std::collections::HashSet<String>,
    /// The root `registry.json`, if the archive has one as a regular file.
    pub manifest: Option<Vec<u8>>,
}

impl Tally {
    /// Mark every parent of `path` a directory, or fail if one is a file.
    fn parents(&mut self, path: &str) -> io::Result<()> {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let parent = &path[..end + i];
            if self.files.contains(parent) {
                return Err(io::ErrorKind::NotADirectory.into());
            }
            self.dirs.insert(parent.to_owned());
            end += i + 1;
        }
        Ok(())
    }
}

impl Sink for Tally {
    fn file(&mut self, path: &str, data: &mut dyn Read, size: u64) -> io::Result<()> {
        self.parents(path)?;
        if self.files.contains(path) || self.dirs.contains(path) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        self.files.insert(path.to_owned());
        let mut data = data.take(size);
        let read = if path == "registry.json" {
            // Its size was checked against the manifest limit before this call.
            let mut bytes = Vec::with_capacity(size as usize);
            let n = data.read_to_end(&mut bytes)?;
            self.manifest = Some(bytes);
            n as u64
        } else {
            io::copy(&mut data, &mut io::sink())?
        };
        if read != size {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated entry"));
        }
        Ok(())
    }
    fn dir(&mut self, path: &str) -> io::Result<()> {
        self.parents(path)?;
        if self.files.contains(path) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        self.dirs.insert(path.to_owned());
        Ok(())
    }
}

/// The processing pass of check 6 (after [`prescan`]): every entry checked, then handed to
/// `sink`; the gzip trailer verified at the end.
pub(super) fn unpack<R: Read>(
    mut archive: tar::Archive<R>,
    sink: &mut dyn Sink,
    limits: ExtractLimits,
) -> Result<Entries, ExtractError> {
    let mut entries = Entries::new();
    let mut budget = limits.max_bytes;
    let iter = archive.entries().map_err(invalid)?;
    for entry in iter {
        let mut entry = entry.map_err(invalid)?;
        let raw = entry.path_bytes();
        let raw = std::str::from_utf8(&raw)
            .map_err(|_| invalid("an entry name is not UTF-8"))?
            .to_owned();
        let unsafe_path = || invalid(format!("unsafe entry path {:?}", clip(&raw, CLIP)));
        let path = normalize(&raw).ok_or_else(unsafe_path)?;
        let ty = entry.header().entry_type();
        if matches!(ty, EntryType::XGlobalHeader) {
            continue;
        }
        if path.is_empty() {
            if ty.is_dir() {
                continue; // the archive root itself (`./`)
            }
            return Err(unsafe_path().into());
        }
        // Judged by rule, not by the filesystem, so that an entry no disk could hold is a 400
        // (not a 500), and the same 400 whether or not the upload is written (see `dry`). Links
        // and special entries are never created, so only files and directories are judged.
        let written = matches!(
            ty,
            EntryType::Regular | EntryType::Continuous | EntryType::Directory
        );
        if let Some(why) = unstorable_path(&path).filter(|_| written) {
            return Err(invalid(format!("entry name cannot be stored: {why}")).into());
        }
        if entries.contains_key(&path) {
            return Err(invalid(format!("duplicate entry {path}")).into());
        }
        let conflict = || ExtractError::Api(invalid(format!("conflicting entry {path}")));
        let kind = match ty {
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.header().size().map_err(invalid)?;
                if path == "registry.json" && size > limits.max_manifest_bytes {
                    return Err(ApiError::manifest_too_large(limits.max_manifest_bytes).into());
                }
                if size > budget {
                    return Err(ApiError::expands_past(limits.max_bytes).into());
                }
                sink.file(&path, &mut entry, size).map_err(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists | io::ErrorKind::NotADirectory => conflict(),
                    _ => ExtractError::Api(invalid(e)),
                })?;
                budget -= size;
                EntryKind::File
            }
            EntryType::Directory => {
                sink.dir(&path).map_err(|_| conflict())?;
                EntryKind::Dir
            }
            EntryType::Symlink | EntryType::Link => {
                let link = entry.link_name_bytes().unwrap_or_default();
                let link = String::from_utf8_lossy(&link);
                // A symlink resolves from its own directory, a hardlink from the archive root.
                let base = if ty == EntryType::Symlink {
                    path.rsplit_once('/').map_or("", |(d, _)| d)
                } else {
                    ""
                };
                if !link_stays_inside(base, &link) {
                    return Err(invalid(format!("link {path} points outside the package")).into());
                }
                EntryKind::Special
            }
            _ => EntryKind::Special,
        };
        entries.insert(path, kind);
    }
    verify_trailer(archive)?;
    Ok(entries)
}

type GzFile = flate2::read::GzDecoder<io::BufReader<std::fs::File>>;

/// Metadata entries (GNU long names and links, pax headers) larger than this are refused: the
/// `tar` crate reads them into memory whole, and no real path needs more.
const MAX_METADATA_ENTRY: u64 = 64 * 1024;

/// A first pass over the raw entries (no long-name or pax processing, so nothing is buffered):
/// refuse oversized metadata entries before the processing pass would read them into memory,
/// and too many entries before anything is written.
pub(super) fn prescan<R: Read>(
    mut archive: tar::Archive<R>,
    limits: ExtractLimits,
) -> Result<(), ExtractError> {
    let raw = archive.entries().map_err(invalid)?.raw(true);
    let mut count = 0u64;
    for entry in raw {
        let entry = entry.map_err(invalid)?;
        let ty = entry.header().entry_type();
        let size = entry.header().size().map_err(invalid)?;
        let metadata = matches!(
            ty,
            EntryType::GNULongName | EntryType::GNULongLink | EntryType::XHeader | EntryType::XGlobalHeader
        );
        if metadata && size > MAX_METADATA_ENTRY {
            return Err(invalid(format!(
                "a metadata entry of {size} bytes (at most {MAX_METADATA_ENTRY})"
            ))
            .into());
        }
        if !metadata {
            count += 1;
            if count > limits.max_entries {
                return Err(ApiError::too_many_entries(limits.max_entries).into());
            }
        }
    }
    Ok(())
}

/// Read what follows the end of the tar through the gzip decoder, so that its trailer (CRC-32
/// and length) is verified: a truncated or altered package is not a valid archive.
fn verify_trailer<R: Read>(archive: tar::Archive<R>) -> Result<(), ExtractError> {
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| invalid(format!("corrupt gzip stream: {e}")))?;
    Ok(())
}

/// Whether a link target, resolved lexically from `base` (a directory inside the package),
/// stays inside the package. Absolute targets never do.
fn link_stays_inside(base: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return false;
    }
    let mut depth: Vec<&str> = base.split('/').filter(|s| !s.is_empty()).collect();
    for seg in target.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            s => depth.push(s),
        }
    }
    true
}

fn write_file(entry: &mut dyn Read, target: &Path, size: u64) -> io::Result<()> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)?;
    let written = io::copy(&mut entry.take(size), &mut out)?;
    if written != size {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated entry"));
    }
    // Durable before the version becomes visible (the publish rename comes after).
    out.sync_all()
}

pub enum ExtractError {
    Api(ApiError),
    Io(io::Error),
}

impl From<ApiError> for ExtractError {
    fn from(e: ApiError) -> Self {
        ExtractError::Api(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization() {
        assert_eq!(normalize("./registry.json").as_deref(), Some("registry.json"));
        assert_eq!(normalize("././a//b/").as_deref(), Some("a/b"));
        assert_eq!(normalize("./").as_deref(), Some(""));
        assert_eq!(normalize("/etc/passwd"), None);
        assert_eq!(normalize("a/../b"), None);
        assert_eq!(normalize(".."), None);
    }

    #[test]
    fn links() {
        assert!(link_stays_inside("templates", "../registry.json"));
        assert!(link_stays_inside("", "templates/a"));
        assert!(link_stays_inside("a/b", "../../c"));
        assert!(!link_stays_inside("a/b", "../../../c"));
        assert!(!link_stays_inside("", "../etc/passwd"));
        assert!(!link_stays_inside("templates", "/etc/passwd"));
    }
}
