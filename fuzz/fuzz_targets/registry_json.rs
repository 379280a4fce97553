#![no_main]

// The body lives in `rack_registry::fuzzing`, so that `tests/fuzz_replay.rs` replays the corpus on stable.
libfuzzer_sys::fuzz_target!(|data: &[u8]| rack_registry::fuzzing::registry_json(data));
