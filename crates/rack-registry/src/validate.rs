//! JSON Schema validation of manifests (SPEC §5.1 check 10), shared by the upload pipeline and
//! `rack-registry publish --dry-run`. Uses the `jsonschema` crate (draft 2020-12).

use std::path::Path;

use serde_json::Value;

/// A registry-item schema from a directory: `<schema_dir>/registry-item.json` when that file
/// exists (an operator may tighten it), the bundled one otherwise (and with `None`). For the
/// command line (`publish --dry-run`); the server validates uploads against the schema it
/// serves, from whichever storage serves it ([`crate::schemas::SchemaStore::registry_item`]).
pub fn registry_item_schema(schema_dir: Option<&Path>) -> Result<Value, String> {
    if let Some(dir) = schema_dir {
        let path = dir.join("registry-item.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                return serde_json::from_slice(&bytes)
                    .map_err(|e| format!("schema {} is not valid JSON: {e}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read schema {}: {e}", path.display())),
        }
    }
    let bundled = crate::schemas::bundled("registry-item.json").expect("bundled schema");
    Ok(serde_json::from_str(bundled).expect("bundled schema is valid JSON"))
}

/// Validate `doc` against `schema`. `Ok(Err(message))` lists the validation errors
/// (`<instance path>: <error>` joined by `; `); `Err` means the schema itself is unusable.
pub fn validate(schema: &Value, doc: &Value) -> Result<Result<(), String>, String> {
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| format!("registry-item schema does not compile: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("{at}: {e}")
            }
        })
        .collect();
    Ok(if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bundled_schema_accepts_and_rejects() {
        let schema = registry_item_schema(None).unwrap();
        let good = json!({"name": "x", "namespace": "@a", "type": "registry:build", "version": "1.0.0", "priority": 1});
        assert_eq!(validate(&schema, &good).unwrap(), Ok(()));
        let bad = json!({"name": "X", "namespace": "@a", "type": "registry:build", "version": "1.0.0", "priority": 1, "extra": 1});
        let msg = validate(&schema, &bad).unwrap().unwrap_err();
        assert!(msg.contains("/name"), "{msg}");
        assert!(msg.contains("extra"), "{msg}");
    }

    #[test]
    fn schema_dir_overrides_bundled() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("registry-item.json"),
            r#"{"type": "object", "required": ["zzz"]}"#,
        )
        .unwrap();
        let schema = registry_item_schema(Some(dir.path())).unwrap();
        assert!(validate(&schema, &json!({})).unwrap().is_err());
        let none = tempfile::tempdir().unwrap();
        let bundled = registry_item_schema(Some(none.path())).unwrap();
        assert_eq!(
            bundled["$id"],
            "https://registry.rackjs.com/schemas/registry-item.json"
        );
    }
}
