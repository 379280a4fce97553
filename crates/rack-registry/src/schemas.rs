//! The JSON Schemas bundled in the binary (SPEC §5.5). `registry-item.json` and `preset.json`
//! are written by us from the SPEC; `rack.json` is the Rack project's own CLI config schema.

/// `(file name, contents)` of every bundled schema, in `/schemas/` allowlist order.
pub const BUNDLED: [(&str, &str); 3] = [
    (
        "registry-item.json",
        include_str!("../schemas/registry-item.json"),
    ),
    ("preset.json", include_str!("../schemas/preset.json")),
    ("rack.json", include_str!("../schemas/rack.json")),
];

pub fn bundled(file: &str) -> Option<&'static str> {
    BUNDLED
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, body)| *body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bundled_files_match_the_allowlist_and_parse() {
        let names: Vec<_> = super::BUNDLED.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, rack_core::route::SCHEMA_FILES);
        for (name, body) in super::BUNDLED {
            serde_json::from_str::<serde_json::Value>(body).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
