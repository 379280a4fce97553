//! Default limits of uploads (SPEC §5.1 check 2, §5.3, §10), shared by the server's
//! configuration and `rack-registry publish --dry-run`.

/// `MAX_UPLOAD_BYTES`: the largest request body (100 MiB).
pub const MAX_UPLOAD_BYTES: u64 = 100 * 1024 * 1024;
/// `MAX_EXTRACTED_BYTES`: what an archive may expand to (512 MiB).
pub const MAX_EXTRACTED_BYTES: u64 = 512 * 1024 * 1024;
/// `MAX_MANIFEST_BYTES`: the largest `registry.json` (1 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// `MAX_ARCHIVE_ENTRIES`: entries of an archive.
pub const MAX_ARCHIVE_ENTRIES: u64 = 10_000;
