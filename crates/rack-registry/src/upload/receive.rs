//! Receiving the multipart body (SPEC §5.1 checks 1 to 5) without ever holding it in memory.
//!
//! A pump task owns the request body: it counts bytes and forwards chunks through a small
//! bounded channel to the multipart parser (`multer`), which streams the first file part to the
//! staging file while hashing it. When the body passes the limit the pump reports it (413) and
//! then keeps reading and discarding, for a bounded time, so that the client can finish sending
//! and read the answer instead of seeing a reset connection (SPEC §14). The same drain is used
//! when the request is refused before its body is read (401, 415, 503).
//!
//! The body comes with its deadlines (`http::body`): no byte for `UPLOAD_STALL_SECONDS`, or not
//! whole within `UPLOAD_TIMEOUT_SECONDS`, and the read ends with an error that is answered 408
//! (connection closed) instead of holding an upload slot and its staging files.
//!
//! The file part goes where [`Target`] says: to the staging file, or (an upload that can only
//! fail, see [`super::dry`]) through a validator that writes nothing.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::dry::{Scanned, Validator};
use super::extract::{ExtractError, ExtractLimits};
use crate::timed_body::BodyTimeout;

use axum::body::Body;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rack_core::{ApiError, ErrorKind};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// How long a refused body is still read and discarded so the client sees the answer.
const DRAIN_FOR: Duration = Duration::from_secs(10);
/// At most this much of a refused body is drained.
const DRAIN_MAX_BYTES: u64 = 1 << 30;

/// The content types accepted for the file part (SPEC §5.1 check 4).
const FILE_TYPES: [&str; 5] = [
    "application/gzip",
    "application/x-gzip",
    "application/x-tar",
    "application/x-compressed",
    "application/octet-stream",
];

/// What the body held, once fully read and within the limit.
pub struct Received {
    /// Lowercase hex SHA-256 of the file part, if there was one.
    pub sha256: Option<String>,
    /// The file part's content type (`application/octet-stream` when the part gave none).
    pub file_type: Option<String>,
    pub checksum: Option<String>,
    /// With [`Target::Judge`]: the check-6 verdict on the file part.
    pub scanned: Option<Result<Scanned, ExtractError>>,
}

/// Where the file part goes.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// Written to this staging file (then extracted).
    Stage(&'a Path),
    /// Validated as it streams, under these limits; nothing is written.
    Judge(ExtractLimits),
}

impl Received {
    /// Checks 3, 4 and 5, in order.
    pub fn verify(&self) -> Result<(), ApiError> {
        let (Some(sha), Some(file_type)) = (&self.sha256, &self.file_type) else {
            return Err(ApiError::new(ErrorKind::MissingFile, "No file uploaded"));
        };
        let essence = file_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !FILE_TYPES.contains(&essence.as_str()) {
            return Err(ApiError::new(
                ErrorKind::InvalidFileType,
                "File must be a tar.gz archive",
            ));
        }
        match self.checksum.as_deref() {
            None | Some("") => Err(ApiError::new(
                ErrorKind::MissingChecksum,
                "SHA256 checksum is required for upload verification",
            )),
            Some(c) if c == sha => Ok(()),
            Some(_) => Err(ApiError::new(
                ErrorKind::ChecksumMismatch,
                "Checksum verification failed",
            )),
        }
    }
}

/// Read and discard what is left of a refused body, bounded in time and bytes, in the background.
pub fn drain(body: Body) {
    tokio::spawn(drain_stream(body.into_data_stream()));
}

/// Read and discard a body stream for at most [`DRAIN_FOR`] and [`DRAIN_MAX_BYTES`].
async fn drain_stream(mut stream: axum::body::BodyDataStream) {
    let mut seen = 0u64;
    let _ = tokio::time::timeout(DRAIN_FOR, async {
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len() as u64;
            if seen > DRAIN_MAX_BYTES {
                break;
            }
        }
    })
    .await;
}

/// Why the pump stopped feeding the parser.
#[derive(Debug)]
enum Cut {
    TooLarge,
    TimedOut(BodyTimeout),
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cut::TooLarge => f.write_str("upload body exceeds the limit"),
            Cut::TimedOut(t) => t.fmt(f),
        }
    }
}

impl std::error::Error for Cut {}

/// Stream the multipart body: the first file part goes to `target` (hashed on the way), the
/// `checksum` field is kept, everything else is read and dropped. Errors are API errors in the
/// pipeline's order (413 wins over whatever the parser thinks of a truncated body; then 408 when
/// the body's deadline passed).
pub async fn receive(
    body: Body,
    boundary: String,
    limit: u64,
    target: Target<'_>,
) -> Result<Received, ReceiveError> {
    let too_large = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(Mutex::new(None));
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, Cut>>(4);
    let (flag, late) = (too_large.clone(), timed_out.clone());
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    // Past the body's deadline: not drained (a client this slow would hold the
                    // drain for nothing); the answer goes out with `Connection: close`. Any
                    // other error is the connection's: the parser sees a truncated body.
                    if let Some(t) = crate::timed_body::timeout_of(&e) {
                        *late.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
                        let _ = tx.send(Err(Cut::TimedOut(t))).await;
                    }
                    return;
                }
            };
            total += chunk.len() as u64;
            if total > limit {
                flag.store(true, Ordering::SeqCst);
                let _ = tx.send(Err(Cut::TooLarge)).await;
                drop(tx);
                // Keep reading so that the client can finish and read the 413.
                drain_stream(stream).await;
                return;
            }
            if tx.send(Ok(chunk)).await.is_err() {
                // The parser stopped early (malformed body): drain like any refused body.
                drain_stream(stream).await;
                return;
            }
        }
    });

    let result = parse(rx, boundary, target).await;
    if too_large.load(Ordering::SeqCst) {
        return Err(ReceiveError::Api(ApiError::payload_too_large(limit)));
    }
    if let Some(t) = *timed_out.lock().unwrap_or_else(|e| e.into_inner()) {
        let secs = t.after.as_secs();
        return Err(ReceiveError::Api(if t.stalled {
            ApiError::upload_stalled(secs)
        } else {
            ApiError::upload_timeout(secs)
        }));
    }
    result
}

enum PartSink {
    File(tokio::fs::File),
    Validator(Validator),
}

/// Receive failures: an API answer, or local I/O (a 500).
pub enum ReceiveError {
    Api(ApiError),
    Io(std::io::Error),
}

async fn parse(
    rx: futures::channel::mpsc::Receiver<Result<Bytes, Cut>>,
    boundary: String,
    target: Target<'_>,
) -> Result<Received, ReceiveError> {
    let mut multipart = multer::Multipart::new(rx, boundary);
    let mut received = Received {
        sha256: None,
        file_type: None,
        checksum: None,
        scanned: None,
    };
    // A body that is not well-formed multipart simply yields no file part (MISSING_FILE), unless
    // the pump reported it too large.
    while let Ok(Some(mut field)) = multipart.next_field().await {
        if field.file_name().is_some() {
            if received.sha256.is_some() {
                while let Ok(Some(_)) = field.chunk().await {}
                continue;
            }
            let file_type = field
                .content_type()
                .map(|m| m.to_string())
                .unwrap_or_else(|| "application/octet-stream".into());
            let mut sink = match target {
                Target::Stage(package) => {
                    PartSink::File(tokio::fs::File::create(package).await.map_err(ReceiveError::Io)?)
                }
                Target::Judge(limits) => PartSink::Validator(Validator::start(limits)),
            };
            let mut hasher = Sha256::new();
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => {
                        hasher.update(&chunk);
                        match &mut sink {
                            PartSink::File(f) => f.write_all(&chunk).await.map_err(ReceiveError::Io)?,
                            PartSink::Validator(v) => v.feed(chunk).await,
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return Ok(received),
                }
            }
            match sink {
                PartSink::File(mut f) => f.flush().await.map_err(ReceiveError::Io)?,
                PartSink::Validator(v) => received.scanned = Some(v.finish().await),
            }
            received.sha256 = Some(hex::encode(hasher.finalize()));
            received.file_type = Some(file_type);
        } else if field.name() == Some("checksum") && received.checksum.is_none() {
            // A checksum is 64 characters; anything much longer is read no further.
            let mut text = Vec::new();
            while let Ok(Some(chunk)) = field.chunk().await {
                if text.len() < 1024 {
                    text.extend_from_slice(&chunk);
                }
            }
            received.checksum = Some(String::from_utf8_lossy(&text).into_owned());
        } else {
            while let Ok(Some(_)) = field.chunk().await {}
        }
    }
    Ok(received)
}
