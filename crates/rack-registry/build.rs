//! Converts `docs/openapi.yaml` (the API's contract, written by hand as YAML) into the JSON that
//! `/openapi.json` serves, once at build time: the binary carries no YAML parser, and a document
//! that is not valid YAML, or not OpenAPI 3.1, fails the build instead of a request.

use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let source = manifest_dir.join("../../docs/openapi.yaml");
    println!("cargo:rerun-if-changed={}", source.display());
    let text =
        std::fs::read_to_string(&source).unwrap_or_else(|e| panic!("cannot read {}: {e}", source.display()));
    let doc: serde_json::Value = serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", source.display()));
    let version = doc.get("openapi").and_then(|v| v.as_str()).unwrap_or("");
    assert!(
        version.starts_with("3.1."),
        "{}: expected `openapi: 3.1.x`, found {version:?}",
        source.display()
    );
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("openapi.json");
    std::fs::write(
        &out,
        serde_json::to_string(&doc).expect("a JSON value serializes"),
    )
    .unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}
