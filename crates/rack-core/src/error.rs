//! The error catalogue (SPEC §12): every error the API can answer, mapped to its status, code
//! and message in exactly one place. Handlers build an [`ApiError`]; the HTTP layer (server or
//! Worker) only serializes it.

use std::fmt;

/// Every error code of SPEC §12.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidPath,
    InvalidPreset,
    InvalidNamespace,
    MissingFile,
    InvalidFileType,
    MissingChecksum,
    ChecksumMismatch,
    InvalidArchive,
    UploadFailed,
    SchemaValidationFailed,
    FileNotFound,
    UnsafeFile,
    UndeclaredFile,
    /// `registry.json` is JSON but ambiguous (a duplicate key): part of check 7.
    InvalidManifest,
    UnsupportedMediaType,
    /// A management request's JSON body is not what the route takes (SPEC §18).
    InvalidRequest,
    Unauthorized,
    InvalidToken,
    TokenExpired,
    ForbiddenNamespace,
    NamespaceNotAllowed,
    AnonymousUploadForbidden,
    InsufficientPermissions,
    /// A verified ID token whose claims match no trusted publisher of the namespace (SPEC §16).
    Forbidden,
    NotFound,
    NamespaceNotFound,
    MethodNotAllowed,
    VersionExists,
    /// The version was deleted by an operator (SPEC §18).
    VersionDeleted,
    PayloadTooLarge,
    /// A request body did not arrive in time: an upload's within `UPLOAD_TIMEOUT_SECONDS`, or
    /// it stopped moving for `UPLOAD_STALL_SECONDS`; a form's within `HEADER_TIMEOUT_SECONDS`.
    RequestTimeout,
    RateLimitExceeded,
    /// The upload queue is full or waited too long (`MAX_CONCURRENT_UPLOADS`,
    /// `UPLOAD_QUEUE_MAX`, `UPLOAD_QUEUE_WAIT_SECONDS`), or storage is unavailable.
    ServiceUnavailable,
    /// An upstream namespace's object is not stored and its upstream cannot give it (SPEC §17).
    UpstreamUnavailable,
    Internal,
}

impl ErrorKind {
    /// Every kind, for what must list them all (the `Error` schema of docs/openapi.yaml is
    /// checked against it). A new kind stops the test `all_lists_every_kind_once` from
    /// compiling: the reminder to list it here.
    pub const ALL: [ErrorKind; 35] = {
        use ErrorKind::*;
        [
            InvalidPath,
            InvalidPreset,
            InvalidNamespace,
            MissingFile,
            InvalidFileType,
            MissingChecksum,
            ChecksumMismatch,
            InvalidArchive,
            UploadFailed,
            SchemaValidationFailed,
            FileNotFound,
            UnsafeFile,
            UndeclaredFile,
            InvalidManifest,
            UnsupportedMediaType,
            InvalidRequest,
            Unauthorized,
            InvalidToken,
            TokenExpired,
            ForbiddenNamespace,
            NamespaceNotAllowed,
            AnonymousUploadForbidden,
            InsufficientPermissions,
            Forbidden,
            NotFound,
            NamespaceNotFound,
            MethodNotAllowed,
            VersionExists,
            VersionDeleted,
            PayloadTooLarge,
            RequestTimeout,
            RateLimitExceeded,
            ServiceUnavailable,
            UpstreamUnavailable,
            Internal,
        ]
    };

    pub fn status(self) -> u16 {
        use ErrorKind::*;
        match self {
            InvalidPath
            | InvalidPreset
            | InvalidNamespace
            | MissingFile
            | InvalidFileType
            | MissingChecksum
            | ChecksumMismatch
            | InvalidArchive
            | UploadFailed
            | SchemaValidationFailed
            | FileNotFound
            | UnsafeFile
            | UndeclaredFile
            | InvalidManifest
            | InvalidRequest => 400,
            Unauthorized | InvalidToken | TokenExpired => 401,
            ForbiddenNamespace
            | NamespaceNotAllowed
            | AnonymousUploadForbidden
            | InsufficientPermissions
            | Forbidden => 403,
            NotFound | NamespaceNotFound => 404,
            MethodNotAllowed => 405,
            RequestTimeout => 408,
            VersionExists => 409,
            VersionDeleted => 410,
            PayloadTooLarge => 413,
            UnsupportedMediaType => 415,
            RateLimitExceeded => 429,
            Internal => 500,
            UpstreamUnavailable => 502,
            ServiceUnavailable => 503,
        }
    }

    pub fn code(self) -> &'static str {
        use ErrorKind::*;
        match self {
            InvalidPath => "INVALID_PATH",
            InvalidPreset => "INVALID_PRESET",
            InvalidNamespace => "INVALID_NAMESPACE",
            MissingFile => "MISSING_FILE",
            InvalidFileType => "INVALID_FILE_TYPE",
            MissingChecksum => "MISSING_CHECKSUM",
            ChecksumMismatch => "CHECKSUM_MISMATCH",
            InvalidArchive => "INVALID_ARCHIVE",
            UploadFailed => "UPLOAD_FAILED",
            SchemaValidationFailed => "SCHEMA_VALIDATION_FAILED",
            FileNotFound => "FILE_NOT_FOUND",
            UnsafeFile => "UNSAFE_FILE",
            UndeclaredFile => "UNDECLARED_FILE",
            InvalidManifest => "INVALID_MANIFEST",
            UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            InvalidRequest => "INVALID_REQUEST",
            Unauthorized => "UNAUTHORIZED",
            InvalidToken => "INVALID_TOKEN",
            TokenExpired => "TOKEN_EXPIRED",
            ForbiddenNamespace => "FORBIDDEN_NAMESPACE",
            NamespaceNotAllowed => "NAMESPACE_NOT_ALLOWED",
            AnonymousUploadForbidden => "ANONYMOUS_UPLOAD_FORBIDDEN",
            InsufficientPermissions => "INSUFFICIENT_PERMISSIONS",
            Forbidden => "FORBIDDEN",
            NotFound => "NOT_FOUND",
            NamespaceNotFound => "NAMESPACE_NOT_FOUND",
            MethodNotAllowed => "METHOD_NOT_ALLOWED",
            VersionExists => "VERSION_EXISTS",
            VersionDeleted => "VERSION_DELETED",
            PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            RequestTimeout => "REQUEST_TIMEOUT",
            RateLimitExceeded => "RATE_LIMIT_EXCEEDED",
            ServiceUnavailable => "SERVICE_UNAVAILABLE",
            UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Internal => "INTERNAL_SERVER_ERROR",
        }
    }
}

/// An error response: a kind and its exact message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    /// The JSON body `{"code": "...", "message": "..."}`.
    pub fn body(&self) -> String {
        serde_json::json!({ "code": self.code(), "message": self.message }).to_string()
    }

    // Constructors for the fixed messages of SPEC §12, so no handler spells one twice.

    pub fn invalid_path() -> ApiError {
        ApiError::new(ErrorKind::InvalidPath, "Invalid registry resource path")
    }
    pub fn invalid_preset() -> ApiError {
        ApiError::new(
            ErrorKind::InvalidPreset,
            "Preset name must match ^[a-z0-9]+(?:-[a-z0-9]+)*$",
        )
    }
    pub fn invalid_namespace() -> ApiError {
        ApiError::new(
            ErrorKind::InvalidNamespace,
            "Namespace must match ^@[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?$",
        )
    }
    pub fn not_found() -> ApiError {
        ApiError::new(ErrorKind::NotFound, "Resource not found")
    }
    pub fn no_versions() -> ApiError {
        ApiError::new(ErrorKind::NotFound, "No versions available")
    }
    pub fn schema_not_found() -> ApiError {
        ApiError::new(ErrorKind::NotFound, "Schema not found")
    }
    pub fn route_not_found() -> ApiError {
        ApiError::new(ErrorKind::NotFound, "Route not found")
    }
    pub fn namespace_not_found(ns: &str) -> ApiError {
        ApiError::new(ErrorKind::NamespaceNotFound, format!("Namespace {ns} not found"))
    }
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(ErrorKind::MethodNotAllowed, "Method not allowed")
    }
    pub fn unauthorized_read() -> ApiError {
        ApiError::new(ErrorKind::Unauthorized, "Authentication token is required")
    }
    pub fn unauthorized_upload() -> ApiError {
        ApiError::new(
            ErrorKind::Unauthorized,
            "Authentication required for upload. Provide a namespace token or admin token via Authorization or X-Registry-Token.",
        )
    }
    pub fn invalid_token() -> ApiError {
        ApiError::new(ErrorKind::InvalidToken, "Provided token is invalid")
    }
    pub fn token_expired() -> ApiError {
        ApiError::new(ErrorKind::TokenExpired, "Authentication token has expired")
    }
    pub fn forbidden_namespace() -> ApiError {
        ApiError::new(ErrorKind::ForbiddenNamespace, "Namespace not allowed")
    }
    pub fn namespace_not_allowed(ns: &str) -> ApiError {
        ApiError::new(
            ErrorKind::NamespaceNotAllowed,
            format!("Namespace {ns} is not allowed"),
        )
    }
    pub fn anonymous_upload_forbidden() -> ApiError {
        ApiError::new(
            ErrorKind::AnonymousUploadForbidden,
            "Anonymous namespaces do not allow uploads. Use an admin token or configure namespace tokens.",
        )
    }
    pub fn insufficient_permissions(ns: &str) -> ApiError {
        ApiError::new(
            ErrorKind::InsufficientPermissions,
            format!("Token does not have publish permission for namespace {ns}"),
        )
    }
    /// SPEC §16: a verified ID token that no trusted publisher of `ns` matches.
    pub fn trusted_publisher_forbidden(ns: &str) -> ApiError {
        ApiError::new(
            ErrorKind::Forbidden,
            format!("No trusted publisher of namespace {ns} matches this identity"),
        )
    }
    pub fn invalid_archive(detail: impl fmt::Display) -> ApiError {
        ApiError::new(
            ErrorKind::InvalidArchive,
            format!("Uploaded file is not a valid tar.gz archive: {detail}"),
        )
    }
    pub fn too_many_entries(limit: u64) -> ApiError {
        ApiError::invalid_archive(format_args!("more than {limit} entries"))
    }
    pub fn expands_past(limit: u64) -> ApiError {
        ApiError::invalid_archive(format_args!("archive expands past {limit} bytes"))
    }
    pub fn manifest_too_large(limit: u64) -> ApiError {
        ApiError::invalid_archive(format_args!("registry.json is larger than {limit} bytes"))
    }
    pub fn manifest_not_found() -> ApiError {
        ApiError::new(ErrorKind::UploadFailed, "registry.json not found in package")
    }
    pub fn payload_too_large(limit: u64) -> ApiError {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("Upload exceeds the maximum allowed size of {limit} bytes"),
        )
    }
    pub fn schema_validation_failed(errors: &str) -> ApiError {
        ApiError::new(
            ErrorKind::SchemaValidationFailed,
            format!("Schema validation failed: {errors}"),
        )
    }
    pub fn rate_limited(retry_after_secs: u64) -> ApiError {
        ApiError::new(
            ErrorKind::RateLimitExceeded,
            format!("Rate limit exceeded. Try again in {retry_after_secs}s"),
        )
    }
    /// Check 7: `registry.json` repeats `key` inside one object (`at` is a JSON Pointer to that
    /// object, empty for the top level). The last duplicate would silently win otherwise.
    pub fn duplicate_manifest_key(key: &str, at: &str) -> ApiError {
        let place = if at.is_empty() {
            "at the top level".to_owned()
        } else {
            format!("in {at}")
        };
        ApiError::new(
            ErrorKind::InvalidManifest,
            format!("registry.json has a duplicate key \"{key}\" {place}"),
        )
    }
    /// No upload slot now: every `MAX_CONCURRENT_UPLOADS` slot is taken and the queue is full
    /// or was waited in too long; sent with `Retry-After`.
    pub fn uploads_busy(retry_after_secs: u64) -> ApiError {
        ApiError::new(
            ErrorKind::ServiceUnavailable,
            format!("Too many uploads in progress. Try again in {retry_after_secs}s"),
        )
    }
    /// The upload body did not arrive in time (`UPLOAD_TIMEOUT_SECONDS`).
    pub fn upload_timeout(secs: u64) -> ApiError {
        ApiError::new(
            ErrorKind::RequestTimeout,
            format!("Upload body was not received within {secs}s"),
        )
    }
    /// The upload body stopped moving: no byte for `UPLOAD_STALL_SECONDS`.
    pub fn upload_stalled(secs: u64) -> ApiError {
        ApiError::new(
            ErrorKind::RequestTimeout,
            format!("Upload body stalled: no data received for {secs}s"),
        )
    }
    /// A small request body (a web form) did not arrive in time.
    pub fn body_timeout(secs: u64) -> ApiError {
        ApiError::new(
            ErrorKind::RequestTimeout,
            format!("Request body was not received within {secs}s"),
        )
    }
    /// A read of a version an operator deleted (SPEC §18), or a change to it.
    pub fn version_deleted(registry: &str, version: &str) -> ApiError {
        ApiError::new(
            ErrorKind::VersionDeleted,
            format!("Registry {registry}@{version} was deleted"),
        )
    }
    /// A management request body that is not what its route takes (SPEC §18).
    pub fn invalid_request(detail: impl fmt::Display) -> ApiError {
        ApiError::new(ErrorKind::InvalidRequest, detail.to_string())
    }
    /// A read of an upstream namespace with nothing stored while its upstream is unreachable
    /// (SPEC §17). `url` is the upstream's base URL (never with credentials).
    pub fn upstream_unavailable(url: &str) -> ApiError {
        ApiError::new(
            ErrorKind::UpstreamUnavailable,
            format!("Upstream {url} is unavailable and no copy is stored"),
        )
    }
    pub fn internal() -> ApiError {
        ApiError::new(ErrorKind::Internal, "Internal server error")
    }
    /// A bucket publish stopped because it may have lost its lease (SPEC §11.2 step 4):
    /// nothing of it is visible; sent with `Retry-After`.
    pub fn publish_fenced() -> ApiError {
        ApiError::new(
            ErrorKind::ServiceUnavailable,
            "Publishing was interrupted (the publish lease could not be kept). Nothing was published; try again",
        )
    }
    /// A bucket publish failed after its `registry.json`: the version is (or may be) stored and
    /// is listed by the lease sweep; a retry answers 409.
    pub fn publish_pending(what: &str) -> ApiError {
        ApiError::new(
            ErrorKind::ServiceUnavailable,
            format!("{what} may be stored but could not be listed yet; it will be listed within the publish lease lifetime"),
        )
    }
    /// Publishing is refused while the storage root or its `.healthcheck` marker is missing.
    pub fn storage_unavailable() -> ApiError {
        ApiError::new(
            ErrorKind::ServiceUnavailable,
            "Storage is unavailable: uploads are refused until it is restored",
        )
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status(), self.code(), self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_kind_once() {
        // The match is exhaustive: a new kind breaks this test's build, a reminder to add it
        // to ALL (and to the Error schema of docs/openapi.yaml).
        fn known(k: ErrorKind) -> bool {
            use ErrorKind::*;
            match k {
                InvalidPath
                | InvalidPreset
                | InvalidNamespace
                | MissingFile
                | InvalidFileType
                | MissingChecksum
                | ChecksumMismatch
                | InvalidArchive
                | UploadFailed
                | SchemaValidationFailed
                | FileNotFound
                | UnsafeFile
                | UndeclaredFile
                | InvalidManifest
                | UnsupportedMediaType
                | InvalidRequest
                | Unauthorized
                | InvalidToken
                | TokenExpired
                | ForbiddenNamespace
                | NamespaceNotAllowed
                | AnonymousUploadForbidden
                | InsufficientPermissions
                | Forbidden
                | NotFound
                | NamespaceNotFound
                | MethodNotAllowed
                | VersionExists
                | VersionDeleted
                | PayloadTooLarge
                | RequestTimeout
                | RateLimitExceeded
                | ServiceUnavailable
                | UpstreamUnavailable
                | Internal => true,
            }
        }
        let codes: std::collections::HashSet<_> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        assert_eq!(codes.len(), ErrorKind::ALL.len(), "a kind is listed twice");
        assert!(ErrorKind::ALL.iter().all(|k| known(*k)));
    }

    #[test]
    fn body_shape() {
        let e = ApiError::namespace_not_found("@x");
        assert_eq!(e.status(), 404);
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code": "NAMESPACE_NOT_FOUND", "message": "Namespace @x not found"})
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(ApiError::invalid_path().status(), 400);
        assert_eq!(ApiError::token_expired().status(), 401);
        assert_eq!(ApiError::forbidden_namespace().status(), 403);
        assert_eq!(
            ApiError::rate_limited(3).message,
            "Rate limit exceeded. Try again in 3s"
        );
        assert_eq!(ApiError::internal().code(), "INTERNAL_SERVER_ERROR");
        assert_eq!(ApiError::uploads_busy(5).status(), 503);
        assert_eq!(ApiError::uploads_busy(5).code(), "SERVICE_UNAVAILABLE");
        assert_eq!(ApiError::upload_timeout(300).status(), 408);
        assert_eq!(ApiError::upload_timeout(300).code(), "REQUEST_TIMEOUT");
        assert_eq!(ApiError::upload_stalled(15).status(), 408);
        assert_eq!(
            ApiError::upload_stalled(15).message,
            "Upload body stalled: no data received for 15s"
        );
        assert_eq!(ApiError::body_timeout(30).code(), "REQUEST_TIMEOUT");
        let dup = ApiError::duplicate_manifest_key("namespace", "");
        assert_eq!((dup.status(), dup.code()), (400, "INVALID_MANIFEST"));
        assert_eq!(
            dup.message,
            "registry.json has a duplicate key \"namespace\" at the top level"
        );
    }
}
