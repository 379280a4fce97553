//! Memory kept by manifest schema validation (issue 12, item 8).
//!
//! jsonschema 0.33 checked every schema against a process-wide draft 2020-12 meta-schema
//! validator that compiled its recursive `$dynamicRef`s lazily, one copy per nesting level of
//! the schema checked: validating the registry-item schema once left ~41 MiB allocated for the
//! life of the process (the server's RSS went from ~10 MiB to ~59 MiB at the first upload).
//! This binary counts live heap bytes with its own allocator, so it holds one test only (no
//! other thread allocates meanwhile).

#[path = "common/heap.rs"]
mod heap;

#[global_allocator]
static GLOBAL: heap::Counting = heap::Counting;

#[test]
fn schema_validation_keeps_little_memory() {
    let schema = rack_registry::validate::registry_item_schema(None).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(include_str!("../../../examples/hello/registry.json")).unwrap();
    let before = heap::live();
    for _ in 0..3 {
        assert_eq!(
            rack_registry::validate::validate(&schema, &manifest).unwrap(),
            Ok(())
        );
    }
    let kept = heap::live() - before;
    eprintln!("schema validation kept {} KiB", kept / 1024);
    // 0.33 kept ~41 MiB of heap here (47 MiB of RSS); 0.61 keeps ~0.4 MiB.
    assert!(
        kept < 8 * 1024 * 1024,
        "schema validation left {} KiB allocated",
        kept / 1024
    );
}
