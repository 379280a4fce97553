//! `GET /openapi.json`: the OpenAPI 3.1 document of the HTTP API (`docs/openapi.yaml`, turned
//! into JSON by `build.rs`). Served like any stored object: a strong ETag, 304s, compressed
//! variants made once and kept (the document is fixed for the life of the process).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use rack_core::route::CacheTier;

use super::response::Reply;
use crate::cache::Cached;

/// The document, as JSON (the same bytes on every replica of one build).
pub const JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// The reply for `/openapi.json`, from one cache entry built on first use.
pub fn reply() -> Reply {
    static DOC: OnceLock<Arc<Cached>> = OnceLock::new();
    let doc = DOC.get_or_init(|| {
        Arc::new(Cached::from_bytes(
            Bytes::from_static(JSON.as_bytes()),
            "openapi".to_owned(),
        ))
    });
    Reply::object(doc.clone(), "application/json", CacheTier::Short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_openapi_3_1_json_with_paths() {
        let doc: serde_json::Value = serde_json::from_str(JSON).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
        assert!(doc["paths"]["/registries"]["post"].is_object());
    }
}
