//! Receiving the multipart body (SPEC §5.1 checks 1 to 5) without ever holding it in memory.
//!
//! A pump task owns the request body: it counts bytes and forwards chunks through a small
//! bounded channel to the multipart parser (`multer`), which streams the first file part to the
//! staging file while hashing it. When the body passes the limit the pump reports it (413) and
//! then keeps reading and discarding, for a bounded time, so that the client can finish sending
//! and read the answer instead of seeing a reset connection (SPEC §14). The same drain is used
//! when the request is refused before its body is read (401, 415).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

#[derive(Debug)]
struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upload body exceeds the limit")
    }
}

impl std::error::Error for TooLarge {}

/// Stream the multipart body: the first file part goes to `package` (hashed as it is written),
/// the `checksum` field is kept, everything else is read and dropped. Errors are API errors in
/// the pipeline's order (413 wins over whatever the parser thinks of a truncated body).
pub async fn receive(
    body: Body,
    boundary: String,
    limit: u64,
    package: &Path,
) -> Result<Received, ReceiveError> {
    let too_large = Arc::new(AtomicBool::new(false));
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, TooLarge>>(4);
    let flag = too_large.clone();
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { return };
            total += chunk.len() as u64;
            if total > limit {
                flag.store(true, Ordering::SeqCst);
                let _ = tx.send(Err(TooLarge)).await;
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

    let result = parse(rx, boundary, package).await;
    if too_large.load(Ordering::SeqCst) {
        return Err(ReceiveError::Api(ApiError::payload_too_large(limit)));
    }
    result
}

/// Receive failures: an API answer, or local I/O (a 500).
pub enum ReceiveError {
    Api(ApiError),
    Io(std::io::Error),
}

async fn parse(
    rx: futures::channel::mpsc::Receiver<Result<Bytes, TooLarge>>,
    boundary: String,
    package: &Path,
) -> Result<Received, ReceiveError> {
    let mut multipart = multer::Multipart::new(rx, boundary);
    let mut received = Received {
        sha256: None,
        file_type: None,
        checksum: None,
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
            let mut file = tokio::fs::File::create(package).await.map_err(ReceiveError::Io)?;
            let mut hasher = Sha256::new();
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => {
                        hasher.update(&chunk);
                        file.write_all(&chunk).await.map_err(ReceiveError::Io)?;
                    }
                    Ok(None) => break,
                    Err(_) => return Ok(received),
                }
            }
            file.flush().await.map_err(ReceiveError::Io)?;
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
