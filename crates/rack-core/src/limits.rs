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

/// Longest name (one path segment) of anything the server stores: `NAME_MAX` of the common
/// filesystems (ext4, xfs, btrfs, zfs, apfs). An archive entry or registry with a longer segment
/// is refused with a 400 instead of failing on disk.
pub const MAX_SEGMENT_BYTES: usize = 255;
/// Longest relative path of an archive entry, and of a version's key (`@ns/<segments>/<version>`).
/// S3 and R2 keys are at most 1024 bytes, and on disk the two together, below any sensible
/// storage root, stay far under Linux's `PATH_MAX` (4096).
pub const MAX_PATH_BYTES: usize = 1024;
