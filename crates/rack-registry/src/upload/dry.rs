//! Judging an upload that can only fail, without writing a byte.
//!
//! When the presented token is neither the admin token nor a live `publish: true` entry of any
//! namespace ([`rack_core::auth::Ctx::may_publish_somewhere`]), checks 8 and 9 refuse whatever
//! the package holds: all that is left to decide is *which* error the SPEC's order gives
//! (checks 3 to 9). Staging such a package would cost a disk write and an fsync per file for a
//! foregone 4xx, so it is not staged: the file part is hashed on the way (check 5) and fed, as
//! it arrives, through the very passes that extraction makes over a staged file:
//! [`extract::prescan`] (entry count, metadata sizes), then [`extract::unpack`] into a
//! [`Tally`] that writes nothing and keeps only `registry.json`. So the answer is the one the
//! staged path gives, check for check.
//!
//! Threads (all on the blocking pool, for one request): a tee checks the gzip magic,
//! decompresses under the expansion cap and hands each chunk to both passes through channels
//! two chunks deep. The processing pass is therefore never more than a few chunks ahead of the
//! prescan, so a metadata entry that the prescan refuses is never buffered whole by the other.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use bytes::Bytes;

use super::extract::{self, Entries, ExtractError, ExtractLimits, Tally};

/// What the archive held, when check 6 passed: its entries and the root `registry.json`.
pub struct Scanned {
    pub entries: Entries,
    pub manifest: Option<Vec<u8>>,
}

/// A chunk of decompressed data, or the read error the tee met (kind kept: the passes react to
/// it exactly as they would reading a file).
type Item = Result<Bytes, (io::ErrorKind, String)>;

/// Size of the chunks the tee hands to the two passes.
const CHUNK: usize = 64 * 1024;

/// A validation in progress, fed with the file part's bytes as they arrive.
pub struct Validator {
    tx: Option<tokio::sync::mpsc::Sender<Bytes>>,
    task: tokio::task::JoinHandle<Result<Scanned, ExtractError>>,
}

impl Validator {
    pub fn start(limits: ExtractLimits) -> Validator {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let task = tokio::task::spawn_blocking(move || validate(AsyncChunks::new(rx), limits));
        Validator { tx: Some(tx), task }
    }

    /// The next bytes of the package. Once the validation has its answer (an error early in
    /// the archive), the rest is not needed and is dropped.
    pub async fn feed(&mut self, chunk: Bytes) {
        if let Some(tx) = &self.tx {
            if tx.send(chunk).await.is_err() {
                self.tx = None;
            }
        }
    }

    /// The package is complete: the check-6 verdict.
    pub async fn finish(mut self) -> Result<Scanned, ExtractError> {
        self.tx = None;
        self.task
            .await
            .map_err(|e| ExtractError::Io(io::Error::other(format!("validation task: {e}"))))?
    }
}

/// Reads chunks from a channel: the end of the channel is the end of the data, and an error
/// item is an I/O error (how the tee passes on a decompression failure).
struct Chunks<S> {
    source: S,
    current: Bytes,
}

trait Source {
    fn next_chunk(&mut self) -> Option<Item>;
}

impl<S: Source> Read for Chunks<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.source.next_chunk() {
                None => return Ok(0),
                Some(Ok(b)) => self.current = b,
                Some(Err((kind, e))) => return Err(io::Error::new(kind, e)),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// The request side: chunks sent by the async receiver.
type AsyncChunks = Chunks<tokio::sync::mpsc::Receiver<Bytes>>;

impl AsyncChunks {
    fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> AsyncChunks {
        Chunks {
            source: rx,
            current: Bytes::new(),
        }
    }
}

impl Source for tokio::sync::mpsc::Receiver<Bytes> {
    fn next_chunk(&mut self) -> Option<Item> {
        self.blocking_recv().map(Ok)
    }
}

impl Source for Receiver<Item> {
    fn next_chunk(&mut self) -> Option<Item> {
        self.recv().ok()
    }
}

fn pass_reader(rx: Receiver<Item>) -> Chunks<Receiver<Item>> {
    Chunks {
        source: rx,
        current: Bytes::new(),
    }
}

/// [`Validator`] over a package already in memory (for the fuzz targets and their replay).
pub fn judge(package: &[u8], limits: ExtractLimits) -> Result<Scanned, ExtractError> {
    validate(package, limits)
}

/// Check 6 over a stream, with the answer [`extract::extract`] gives for the same bytes.
fn validate(mut input: impl Read, limits: ExtractLimits) -> Result<Scanned, ExtractError> {
    let mut magic = [0u8; 2];
    if input.read_exact(&mut magic).is_err() || !extract::is_gzip(&magic) {
        return Err(extract::not_gzip().into());
    }
    let mut decoded = extract::decompressed(io::Cursor::new(magic).chain(input), limits);
    let (prescan_tx, prescan_rx) = sync_channel(2);
    let (unpack_tx, unpack_rx) = sync_channel(2);
    let prescan_failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        let prescan = s.spawn(|| {
            let mut reader = pass_reader(prescan_rx);
            let result = extract::prescan(tar::Archive::new(&mut reader), limits);
            // Set before the channel closes: the tee reads it when its next send fails.
            prescan_failed.store(result.is_err(), Ordering::SeqCst);
            drop(reader);
            result
        });
        let unpack = s.spawn(move || {
            let mut tally = Tally::default();
            let archive = tar::Archive::new(pass_reader(unpack_rx));
            extract::unpack(archive, &mut tally, limits).map(|entries| Scanned {
                entries,
                manifest: tally.manifest,
            })
        });
        tee(&mut decoded, prescan_tx, unpack_tx, &prescan_failed);
        let prescanned = prescan
            .join()
            .unwrap_or_else(|_| Err(ExtractError::Io(io::Error::other("prescan panicked"))));
        let unpacked = unpack
            .join()
            .unwrap_or_else(|_| Err(ExtractError::Io(io::Error::other("unpack panicked"))));
        // As in `extract`: the prescan's verdict first, then the processing pass's.
        prescanned.and(unpacked)
    })
}

type Pass = SyncSender<Item>;

/// Hand the decompressed stream to both passes until both are done (or the prescan failed,
/// which decides the answer: the other pass is then cut off).
fn tee(decoded: &mut impl Read, prescan: Pass, unpack: Pass, prescan_failed: &AtomicBool) {
    let mut prescan = Some(prescan);
    let mut unpack = Some(unpack);
    let mut buf = vec![0u8; CHUNK];
    while prescan.is_some() || unpack.is_some() {
        let (item, last) = match decoded.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => (Ok(Bytes::copy_from_slice(&buf[..n])), false),
            Err(e) => (Err((e.kind(), e.to_string())), true),
        };
        if let Some(tx) = &prescan {
            if tx.send(item.clone()).is_err() {
                prescan = None;
                if prescan_failed.load(Ordering::SeqCst) {
                    return;
                }
            }
        }
        if let Some(tx) = &unpack {
            if tx.send(item).is_err() {
                unpack = None;
            }
        }
        if last {
            return;
        }
    }
}
