//! The bundled JSON Schemas (`schemas/*.json`) against SPEC sections 2 and 5.5: every fixture
//! manifest and preset validates, and mutated copies are rejected one rule at a time.

use std::fs;
use std::path::{Path, PathBuf};

use jsonschema::Validator;
use serde_json::{json, Value};

const REGISTRY_ITEM_SCHEMA: &str = include_str!("../schemas/registry-item.json");
const PRESET_SCHEMA: &str = include_str!("../schemas/preset.json");
const RACK_SCHEMA: &str = include_str!("../schemas/rack.json");

mod common;

const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("bundled schema is valid JSON")
}

fn compile(text: &str) -> Validator {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&parse(text))
        .expect("schema compiles")
}

fn item_validator() -> Validator {
    compile(REGISTRY_ITEM_SCHEMA)
}

fn preset_validator() -> Validator {
    compile(PRESET_SCHEMA)
}

fn errors(validator: &Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn fixtures_root() -> PathBuf {
    let root = common::fixtures_root();
    assert!(
        root.join(".healthcheck").is_file(),
        "fixture storage root not found at {}",
        root.display()
    );
    root
}

fn find_named(dir: &Path, file_name: &str, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read fixture dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            find_named(&path, file_name, out);
        } else if path.file_name().is_some_and(|n| n == file_name) {
            out.push(path);
        }
    }
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).expect("read fixture");
    serde_json::from_str(&text).expect("fixture is valid JSON")
}

/// A valid manifest that uses every top-level field, so each mutation breaks exactly one rule.
fn base_item() -> Value {
    json!({
        "$schema": "https://registry.rackjs.com/schemas/registry-item.json",
        "name": "foo",
        "namespace": "@rack",
        "path": "quality/foo",
        "type": "registry:quality",
        "version": "1.0.0",
        "description": "A test registry",
        "author": "Rack",
        "license": "MIT",
        "repository": "github:rack/rack",
        "homepage": "https://rackjs.com/foo",
        "tags": ["a", "b"],
        "priority": 3,
        "conflicts": ["@rack/quality/bar"],
        "registryDependencies": ["@rack/quality/husky", "runtimes/node"],
        "dependencies": { "left-pad": "^1.0.0" },
        "devDependencies": { "@scope/pkg": "^2.0.0" },
        "scripts": { "build": "tsc" },
        "files": [
            {
                "target": "src/index.ts",
                "type": "registry:entry",
                "path": "./templates/src/index.ts",
                "executable": false,
                "mergeStrategy": { "type": "builtin", "strategy": "overwrite" }
            }
        ],
        "languages": {
            "js": {
                "dependencies": { "a": "1" },
                "devDependencies": { "b": "2" },
                "files": [{ "target": "index.js", "type": "registry:entry", "content": "" }]
            },
            "ts": { "devDependencies": { "typescript": "^5" } }
        },
        "defaultLanguage": "ts"
    })
}

fn base_preset() -> Value {
    json!({
        "$schema": "https://registry.rackjs.com/schemas/preset.json",
        "name": "node-library",
        "version": "1.0.0",
        "description": "A preset",
        "author": "Rack",
        "tags": ["node"],
        "registries": ["runtimes/node", "@rack/build/rollup"]
    })
}

type Mutation = fn(&mut Value);

/// Applies each mutation to a fresh base and collects the rows whose outcome differs from `want`.
fn check_table(validator: &Validator, base: fn() -> Value, rows: &[(&str, Mutation)], want_valid: bool) {
    assert!(
        validator.is_valid(&base()),
        "base document must be valid: {:?}",
        errors(validator, &base())
    );
    let mut wrong = Vec::new();
    for (label, mutate) in rows {
        let mut doc = base();
        mutate(&mut doc);
        if validator.is_valid(&doc) != want_valid {
            wrong.push(format!("{label}: {doc} {:?}", errors(validator, &doc)));
        }
    }
    let verb = if want_valid { "accepted" } else { "rejected" };
    assert!(
        wrong.is_empty(),
        "{} row(s) should have been {verb}:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

fn remove(doc: &mut Value, key: &str) {
    doc.as_object_mut().expect("object").remove(key);
}

fn file0(doc: &mut Value) -> &mut Value {
    &mut doc["files"][0]
}

fn set_file_path(doc: &mut Value, path: &str) {
    file0(doc)["path"] = json!(path);
}

// ---------------------------------------------------------------------------------------------
// The bundled schemas themselves
// ---------------------------------------------------------------------------------------------

#[test]
fn bundled_schemas_are_draft_2020_12_json() {
    for (file, text, id) in [
        (
            "registry-item.json",
            REGISTRY_ITEM_SCHEMA,
            "https://registry.rackjs.com/schemas/registry-item.json",
        ),
        (
            "preset.json",
            PRESET_SCHEMA,
            "https://registry.rackjs.com/schemas/preset.json",
        ),
        (
            "rack.json",
            RACK_SCHEMA,
            "https://registry.rackjs.com/schemas/rack.json",
        ),
    ] {
        let schema = parse(text);
        assert_eq!(schema["$schema"], DRAFT_2020_12, "{file}: $schema");
        assert_eq!(schema["$id"], id, "{file}: $id");
        if let Err(e) = jsonschema::draft202012::meta::validate(&schema) {
            panic!("{file} is not a valid draft 2020-12 schema: {e}");
        }
        compile(text);
    }
}

#[test]
fn bundled_rack_schema_is_the_fixture_copy() {
    let fixture = fs::read(fixtures_root().join("schema/rack.json")).expect("fixture rack.json");
    assert_eq!(RACK_SCHEMA.as_bytes(), fixture.as_slice());
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

#[test]
fn every_fixture_manifest_validates() {
    let validator = item_validator();
    let mut manifests = Vec::new();
    find_named(&fixtures_root().join("@rack"), "registry.json", &mut manifests);
    assert_eq!(manifests.len(), 10, "expected 10 fixture manifests");
    for path in manifests {
        let doc = read_json(&path);
        let errs = errors(&validator, &doc);
        assert!(errs.is_empty(), "{}: {errs:?}", path.display());
    }
}

#[test]
fn every_fixture_preset_validates() {
    let validator = preset_validator();
    let mut presets = Vec::new();
    find_named(&fixtures_root().join("presets"), "preset.json", &mut presets);
    assert_eq!(presets.len(), 2, "expected 2 fixture presets");
    for path in presets {
        let doc = read_json(&path);
        let errs = errors(&validator, &doc);
        assert!(errs.is_empty(), "{}: {errs:?}", path.display());
    }
}

// ---------------------------------------------------------------------------------------------
// registry-item.json
// ---------------------------------------------------------------------------------------------

#[test]
fn item_missing_required_fields_rejected() {
    check_table(
        &item_validator(),
        base_item,
        &[
            ("no name", |d| remove(d, "name")),
            ("no namespace", |d| remove(d, "namespace")),
            ("no type", |d| remove(d, "type")),
            ("no version", |d| remove(d, "version")),
            ("no priority", |d| remove(d, "priority")),
        ],
        false,
    );
}

#[test]
fn item_minimal_required_only_accepted() {
    let doc = json!({
        "name": "foo", "namespace": "@rack", "type": "registry:feature",
        "version": "0.0.0", "priority": 0
    });
    let validator = item_validator();
    assert!(validator.is_valid(&doc), "{:?}", errors(&validator, &doc));
}

#[test]
fn item_top_level_rules_rejected() {
    check_table(
        &item_validator(),
        base_item,
        &[
            ("unknown top-level field", |d| d["foo"] = json!(1)),
            ("name upper case", |d| d["name"] = json!("Foo")),
            ("name with dot", |d| d["name"] = json!("foo.bar")),
            ("name trailing dash", |d| d["name"] = json!("foo-")),
            ("name leading dash", |d| d["name"] = json!("-foo")),
            ("name double dash", |d| d["name"] = json!("foo--bar")),
            ("name empty", |d| d["name"] = json!("")),
            ("name with slash", |d| d["name"] = json!("a/b")),
            ("namespace without @", |d| d["namespace"] = json!("rack")),
            ("namespace upper case", |d| d["namespace"] = json!("@Rack")),
            ("namespace trailing dash", |d| d["namespace"] = json!("@rack-")),
            ("namespace trailing underscore", |d| {
                d["namespace"] = json!("@rack_")
            }),
            ("namespace with dot", |d| d["namespace"] = json!("@rack.io")),
            ("namespace bare @", |d| d["namespace"] = json!("@")),
            ("version leading zero major", |d| d["version"] = json!("01.0.0")),
            ("version leading zero minor", |d| d["version"] = json!("1.01.0")),
            ("version leading zero prerelease", |d| {
                d["version"] = json!("1.0.0-01")
            }),
            ("version v prefix", |d| d["version"] = json!("v1.0.0")),
            ("version two parts", |d| d["version"] = json!("1.0")),
            ("version empty build", |d| d["version"] = json!("1.0.0+")),
            ("version empty prerelease id", |d| {
                d["version"] = json!("1.0.0-alpha..1")
            }),
            ("version trailing newline", |d| d["version"] = json!("1.0.0\n")),
            ("version not a string", |d| d["version"] = json!(1)),
            ("type unknown", |d| d["type"] = json!("registry:unknown")),
            ("type without prefix", |d| d["type"] = json!("runtime")),
            ("type file kind", |d| d["type"] = json!("registry:config")),
            ("priority negative", |d| d["priority"] = json!(-1)),
            ("priority fractional", |d| d["priority"] = json!(1.5)),
            ("priority string", |d| d["priority"] = json!("1")),
            ("path upper case", |d| d["path"] = json!("Quality/foo")),
            ("path absolute", |d| d["path"] = json!("/quality/foo")),
            ("path empty segment", |d| d["path"] = json!("quality//foo")),
            ("path trailing slash", |d| d["path"] = json!("quality/foo/")),
            ("homepage not a uri", |d| d["homepage"] = json!("not a uri")),
            ("$schema not a uri", |d| d["$schema"] = json!("registry-item")),
            ("description not a string", |d| d["description"] = json!(1)),
            ("author not a string", |d| d["author"] = json!(["a"])),
            ("license not a string", |d| d["license"] = json!(null)),
            ("repository not a string", |d| d["repository"] = json!({})),
            ("tags empty string", |d| d["tags"] = json!(["ok", ""])),
            ("tags not an array", |d| d["tags"] = json!("a")),
            ("dependencies empty value", |d| {
                d["dependencies"] = json!({ "a": "" })
            }),
            ("dependencies empty key", |d| {
                d["dependencies"] = json!({ "": "1" })
            }),
            ("devDependencies non-string value", |d| {
                d["devDependencies"] = json!({ "a": 1 })
            }),
            ("scripts empty value", |d| d["scripts"] = json!({ "build": "" })),
            ("scripts not an object", |d| d["scripts"] = json!(["build"])),
            ("defaultLanguage py", |d| d["defaultLanguage"] = json!("py")),
        ],
        false,
    );
}

#[test]
fn item_identifier_rules_rejected() {
    check_table(
        &item_validator(),
        base_item,
        &[
            ("registryDependencies with @version", |d| {
                d["registryDependencies"] = json!(["@rack/foo@1.0.0"])
            }),
            ("registryDependencies shorthand with @version", |d| {
                d["registryDependencies"] = json!(["quality/foo@1.0.0"])
            }),
            ("registryDependencies with :ts", |d| {
                d["registryDependencies"] = json!(["@rack/foo:ts"])
            }),
            ("registryDependencies upper case", |d| {
                d["registryDependencies"] = json!(["@rack/Foo"])
            }),
            ("registryDependencies segment leading dash", |d| {
                d["registryDependencies"] = json!(["@rack/-foo"])
            }),
            ("registryDependencies segment double dash", |d| {
                d["registryDependencies"] = json!(["quality/foo--bar"])
            }),
            ("registryDependencies segment with underscore", |d| {
                d["registryDependencies"] = json!(["quality/foo_bar"])
            }),
            ("registryDependencies namespace only", |d| {
                d["registryDependencies"] = json!(["@rack"])
            }),
            ("registryDependencies trailing slash", |d| {
                d["registryDependencies"] = json!(["@rack/foo/"])
            }),
            ("registryDependencies empty string", |d| {
                d["registryDependencies"] = json!([""])
            }),
            ("conflicts v-prefixed version", |d| {
                d["conflicts"] = json!(["@rack/foo@v1.0.0"])
            }),
            ("conflicts partial version", |d| {
                d["conflicts"] = json!(["@rack/foo@1.0"])
            }),
            ("conflicts language py", |d| {
                d["conflicts"] = json!(["@rack/foo:py"])
            }),
            ("conflicts language before version", |d| {
                d["conflicts"] = json!(["@rack/foo:ts@1.0.0"])
            }),
            ("conflicts segment trailing dash", |d| {
                d["conflicts"] = json!(["@rack/foo-@1.0.0"])
            }),
            ("conflicts bad namespace", |d| {
                d["conflicts"] = json!(["@Rack/foo"])
            }),
        ],
        false,
    );
}

#[test]
fn item_file_path_rules_rejected() {
    check_table(
        &item_validator(),
        base_item,
        &[
            ("absolute", |d| set_file_path(d, "/etc/passwd")),
            ("parent", |d| set_file_path(d, "../x")),
            ("dot-slash parent", |d| set_file_path(d, "./../x")),
            ("inner parent", |d| set_file_path(d, "a/../b")),
            ("trailing parent", |d| set_file_path(d, "a/..")),
            ("inner dot", |d| set_file_path(d, "a/./b")),
            ("only dot", |d| set_file_path(d, ".")),
            ("only dot-slash", |d| set_file_path(d, "./")),
            ("double dot-slash", |d| set_file_path(d, "././x")),
            ("empty segment", |d| set_file_path(d, "a//b")),
            ("trailing slash", |d| set_file_path(d, "a/")),
            ("empty", |d| set_file_path(d, "")),
            ("percent-encoded", |d| set_file_path(d, "%2e")),
            ("percent inside", |d| set_file_path(d, "a%2fb")),
            ("backslash", |d| set_file_path(d, "a\\b")),
            ("query", |d| set_file_path(d, "a?b")),
            ("fragment", |d| set_file_path(d, "a#b")),
            ("space", |d| set_file_path(d, "a b")),
            ("non-ascii", |d| set_file_path(d, "caf\u{e9}")),
            ("windows drive", |d| set_file_path(d, "C:/x")),
            ("not a string", |d| file0(d)["path"] = json!(1)),
        ],
        false,
    );
}

#[test]
fn item_file_object_rules_rejected() {
    check_table(
        &item_validator(),
        base_item,
        &[
            ("neither path nor content", |d| {
                d["files"] = json!([{ "target": "a", "type": "registry:config" }])
            }),
            ("unknown key", |d| file0(d)["mode"] = json!("0755")),
            ("missing target", |d| remove(file0(d), "target")),
            ("empty target", |d| file0(d)["target"] = json!("")),
            ("missing type", |d| remove(file0(d), "type")),
            ("bad type", |d| file0(d)["type"] = json!("registry:quality")),
            ("content not a string", |d| file0(d)["content"] = json!(1)),
            ("executable not a bool", |d| {
                file0(d)["executable"] = json!("true")
            }),
            ("files not an array", |d| {
                d["files"] = json!({ "target": "a", "type": "registry:lib", "content": "" })
            }),
            ("mergeStrategy unknown builtin", |d| {
                file0(d)["mergeStrategy"] = json!({ "type": "builtin", "strategy": "yaml" })
            }),
            ("mergeStrategy builtin without strategy", |d| {
                file0(d)["mergeStrategy"] = json!({ "type": "builtin" })
            }),
            ("mergeStrategy builtin with script", |d| {
                file0(d)["mergeStrategy"] = json!({ "type": "builtin", "strategy": "json", "script": "m.js" })
            }),
            ("mergeStrategy custom without script", |d| {
                file0(d)["mergeStrategy"] = json!({ "type": "custom" })
            }),
            ("mergeStrategy custom with strategy", |d| {
                file0(d)["mergeStrategy"] = json!({ "type": "custom", "strategy": "json" })
            }),
            ("mergeStrategy custom bad script path", |d| {
                file0(d)["mergeStrategy"] = json!({ "type": "custom", "script": "../m.js" })
            }),
            ("mergeStrategy unknown type", |d| {
                file0(d)["mergeStrategy"] = json!({ "type": "other", "strategy": "json" })
            }),
            ("mergeStrategy bare string", |d| {
                file0(d)["mergeStrategy"] = json!("json")
            }),
        ],
        false,
    );
}

#[test]
fn item_languages_rules_rejected() {
    check_table(
        &item_validator(),
        base_item,
        &[
            ("language key py", |d| {
                d["languages"]["py"] = json!({ "dependencies": {} })
            }),
            ("language with scripts", |d| {
                d["languages"]["ts"]["scripts"] = json!({ "a": "b" })
            }),
            ("language with name", |d| {
                d["languages"]["js"]["name"] = json!("x")
            }),
            ("language file without path and content", |d| {
                d["languages"]["js"]["files"] = json!([{ "target": "a", "type": "registry:lib" }])
            }),
            ("language dependency empty value", |d| {
                d["languages"]["js"]["dependencies"] = json!({ "a": "" })
            }),
            ("language not an object", |d| d["languages"]["js"] = json!([])),
        ],
        false,
    );
}

#[test]
fn item_positive_edge_cases_accepted() {
    check_table(
        &item_validator(),
        base_item,
        &[
            ("prerelease and build", |d| {
                d["version"] = json!("1.0.0-alpha.1+build.5")
            }),
            ("numeric prerelease", |d| d["version"] = json!("1.0.0-0.3.7")),
            ("alphanumeric prerelease with leading digit", |d| {
                d["version"] = json!("1.0.0-0alpha")
            }),
            ("build only, leading zeros allowed", |d| {
                d["version"] = json!("10.20.30+001.sha-5114f85")
            }),
            ("dot-slash path", |d| set_file_path(d, "./templates/x")),
            ("plain relative path", |d| set_file_path(d, "templates/x")),
            ("at and plus in file name", |d| {
                set_file_path(d, "templates/@scope/a+b@1.txt")
            }),
            ("dotfile in dot dir", |d| {
                set_file_path(d, "./templates/.husky/pre-commit")
            }),
            ("segments made of dots and more", |d| {
                set_file_path(d, "a/.../..b/.c/x..")
            }),
            (
                "content-only file",
                |d| d["files"] = json!([{ "target": "a.txt", "type": "registry:docs", "content": "hi" }]),
            ),
            ("path and content", |d| file0(d)["content"] = json!("x")),
            ("custom mergeStrategy with script", |d| {
                file0(d)["mergeStrategy"] = json!({ "type": "custom", "script": "./scripts/merge.js" })
            }),
            ("every builtin strategy", |d| {
                let files: Vec<Value> = ["json", "ignore", "env", "overwrite"]
                    .iter()
                    .map(|s| {
                        json!({
                            "target": "a", "type": "registry:asset", "path": "a",
                            "mergeStrategy": { "type": "builtin", "strategy": s }
                        })
                    })
                    .collect();
                d["files"] = Value::Array(files);
            }),
            ("every file type", |d| {
                let files: Vec<Value> = [
                    "registry:entry",
                    "registry:config",
                    "registry:lib",
                    "registry:test",
                    "registry:docs",
                    "registry:script",
                    "registry:asset",
                ]
                .iter()
                .map(|t| json!({ "target": "a", "type": t, "content": "" }))
                .collect();
                d["files"] = Value::Array(files);
            }),
            ("conflicts with version and language", |d| {
                d["conflicts"] = json!([
                    "@rack/foo@1.2.3:ts",
                    "@rack/a/b@1.0.0-rc.1+b.2",
                    "foo",
                    "foo:js",
                    "quality/foo@2.0.0"
                ])
            }),
            ("registryDependencies shorthand and full", |d| {
                d["registryDependencies"] = json!(["quality/husky", "@my_org-1/a/b-c"])
            }),
            ("single-char namespace", |d| d["namespace"] = json!("@a")),
            ("namespace with underscore and dash", |d| {
                d["namespace"] = json!("@my_org-1")
            }),
            ("priority zero", |d| d["priority"] = json!(0)),
            ("every registry type", |d| d["type"] = json!("registry:framework")),
            ("no path", |d| remove(d, "path")),
            ("legacy path", |d| d["path"] = json!("legacy/foo")),
            ("empty arrays and maps", |d| {
                d["files"] = json!([]);
                d["tags"] = json!([]);
                d["conflicts"] = json!([]);
                d["registryDependencies"] = json!([]);
                d["dependencies"] = json!({});
                d["languages"] = json!({});
            }),
            ("defaultLanguage js", |d| d["defaultLanguage"] = json!("js")),
        ],
        true,
    );
}

// ---------------------------------------------------------------------------------------------
// preset.json
// ---------------------------------------------------------------------------------------------

#[test]
fn preset_rules_rejected() {
    check_table(
        &preset_validator(),
        base_preset,
        &[
            ("no name", |d| remove(d, "name")),
            ("no version", |d| remove(d, "version")),
            ("no registries", |d| remove(d, "registries")),
            ("empty registries", |d| d["registries"] = json!([])),
            ("unknown field", |d| d["priority"] = json!(1)),
            ("unknown field files", |d| d["files"] = json!([])),
            ("name upper case", |d| d["name"] = json!("Node")),
            ("name with dot", |d| d["name"] = json!("node.js")),
            ("name trailing dash", |d| d["name"] = json!("node-")),
            ("version leading zero", |d| d["version"] = json!("1.0.01")),
            ("version v prefix", |d| d["version"] = json!("v1.0.0")),
            ("registry upper case", |d| {
                d["registries"] = json!(["Runtimes/node"])
            }),
            ("registry partial version", |d| {
                d["registries"] = json!(["@rack/foo@1.0:ts"])
            }),
            ("registry language py", |d| {
                d["registries"] = json!(["runtimes/node:py"])
            }),
            ("registry empty string", |d| d["registries"] = json!([""])),
            ("registries not an array", |d| {
                d["registries"] = json!("runtimes/node")
            }),
            ("tags empty string", |d| d["tags"] = json!([""])),
            ("$schema not a uri", |d| d["$schema"] = json!("preset")),
            ("description not a string", |d| d["description"] = json!(1)),
        ],
        false,
    );
}

#[test]
fn preset_positive_edge_cases_accepted() {
    check_table(
        &preset_validator(),
        base_preset,
        &[
            ("registries with version and language", |d| {
                d["registries"] = json!(["@rack/foo@1.2.3:ts", "runtimes/node:js", "a@0.1.0-rc.1"])
            }),
            (
                "required only",
                |d| *d = json!({ "name": "n", "version": "1.0.0-beta+exp.sha.5114f85", "registries": ["a"] }),
            ),
        ],
        true,
    );
}
