//! The OpenAPI document (`docs/openapi.yaml`, served at `/openapi.json`) against the contract.
//!
//! - `document_agrees_with_conformance_cases`: every conformance case (`conformance/cases`, the
//!   API's contract as data) is a documented path and method with its status documented; its
//!   error code is in the `Error` schema's enum; its JSON body validates against the documented
//!   schema; a `Cache-Control` (or sandbox header) it expects equals the documented constant or
//!   is one of the documented values. A case on a path no
//!   template matches must be the 404 "Route not found"; a documented path with an undocumented
//!   method must be the 405 whose `Allow` lists the documented methods.
//! - `document_is_whole`: every `$ref` resolves, operation ids are unique, the `Error` enum is
//!   exactly the catalogue of the core crate.
//! - `openapi_json_is_served`: the route, with its cache tier, ETag and 304.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use rack_core::ErrorKind;
use serde_json::{json, Value};

fn document() -> Value {
    serde_json::from_str(rack_registry::http::openapi::JSON).expect("the document is JSON")
}

/// The value at a local `$ref` (`#/components/...`).
fn pointer<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let ptr = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("only local references are used: {reference}"));
    doc.pointer(ptr)
        .unwrap_or_else(|| panic!("dangling reference {reference}"))
}

/// `v`, or what it refers to.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, pointer(doc, r)),
        None => v,
    }
}

/// `value` against `schema`, with `#/components/...` references resolved in `doc`.
fn schema_errors(doc: &Value, schema: &Value, value: &Value) -> Vec<String> {
    let mut root = schema.clone();
    if let Some(obj) = root.as_object_mut() {
        obj.insert("components".into(), doc["components"].clone());
    } else {
        return vec![];
    }
    let validator = jsonschema::draft202012::options()
        .build(&root)
        .unwrap_or_else(|e| panic!("schema {schema} does not compile: {e}"));
    validator.iter_errors(value).map(|e| e.to_string()).collect()
}

const METHODS: [&str; 8] = [
    "get", "head", "post", "put", "delete", "patch", "options", "trace",
];

/// A path template's parameters, by name, with their schemas (path-level and operation-level).
fn path_params(doc: &Value, item: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut take = |list: &Value| {
        for p in list.as_array().into_iter().flatten() {
            let p = resolve(doc, p);
            if p["in"] == "path" {
                out.insert(p["name"].as_str().unwrap().to_owned(), p["schema"].clone());
            }
        }
    };
    take(&item["parameters"]);
    for m in METHODS {
        take(&item[m]["parameters"]);
    }
    out
}

/// Parameters that may span several path segments (`build/rollup`, a file path).
const MULTI_SEGMENT: [&str; 2] = ["registry", "path"];

/// Whether `parts` match `template` (its segments), binding parameters; `strict` also checks
/// each bound value against its schema. Multi-segment parameters take one or more parts.
fn match_parts(
    doc: &Value,
    template: &[&str],
    parts: &[String],
    params: &BTreeMap<String, Value>,
    strict: bool,
) -> bool {
    let Some((first, rest)) = template.split_first() else {
        return parts.is_empty();
    };
    let Some(name) = first.strip_prefix('{').and_then(|n| n.strip_suffix('}')) else {
        return parts.first().is_some_and(|p| p == first)
            && match_parts(doc, rest, &parts[1..], params, strict);
    };
    let ok = |value: &str| {
        !strict
            || params
                .get(name)
                .is_some_and(|schema| schema_errors(doc, schema, &json!(value)).is_empty())
    };
    let max = if MULTI_SEGMENT.contains(&name) {
        parts.len()
    } else {
        parts.len().min(1)
    };
    (1..=max).any(|n| ok(&parts[..n].join("/")) && match_parts(doc, rest, &parts[n..], params, strict))
}

/// The documented path templates `raw` matches, most specific (most literal segments) first:
/// with parameters valid for their schemas if any such template exists, else ignoring them
/// (a request with a bad parameter is still that operation's, answered 400).
fn templates_for(doc: &Value, raw: &str) -> Vec<String> {
    let path = raw.split('?').next().unwrap();
    // As the server reads a path: percent-decoded (when well-formed), empty parts dropped.
    let decoded = percent_decode(path).unwrap_or_else(|| path.to_owned());
    let parts: Vec<String> = decoded
        .split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let paths = doc["paths"].as_object().unwrap();
    for strict in [true, false] {
        let mut found: Vec<(usize, String)> = paths
            .iter()
            .filter(|(template, item)| {
                let segs: Vec<&str> = template.split('/').filter(|s| !s.is_empty()).collect();
                match_parts(doc, &segs, &parts, &path_params(doc, item), strict)
            })
            .map(|(t, _)| (t.split('/').filter(|s| !s.starts_with('{')).count(), t.clone()))
            .collect();
        if !found.is_empty() {
            found.sort_by_key(|f| std::cmp::Reverse(f.0));
            return found.into_iter().map(|(_, t)| t).collect();
        }
    }
    vec![]
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The case files, parsed loosely (the conformance runner checks their format).
fn cases() -> Vec<Value> {
    let dir = common::repo_root().join("conformance/cases");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut out = vec![];
    for f in files {
        let v: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        out.extend(v["cases"].as_array().unwrap().iter().cloned());
    }
    assert!(out.len() > 50, "only {} conformance cases found", out.len());
    out
}

/// A stored file of the conformance world: the overlay wins over the fixtures.
fn world_file(rel: &str) -> Vec<u8> {
    let overlay: PathBuf = common::world_dir().join("storage").join(rel);
    let path = if overlay.is_file() {
        overlay
    } else {
        common::fixtures_root().join(rel)
    };
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn media_type(v: &str) -> String {
    v.split(';').next().unwrap().trim().to_ascii_lowercase()
}

/// The schema the document gives a response's body of `content_type`, if it names one.
fn body_schema<'a>(response: &'a Value, content_type: &str) -> Option<&'a Value> {
    let content = response.get("content")?.as_object()?;
    content
        .get(content_type)
        .or_else(|| content.get("*/*"))
        .map(|m| &m["schema"])
}

/// One case against the document: the problems found (empty when it agrees).
fn check_case(doc: &Value, case: &Value) -> Vec<String> {
    let req = &case["request"];
    let expect = &case["expect"];
    let method = req["method"].as_str().unwrap_or("GET").to_ascii_lowercase();
    let raw = req["path"].as_str().unwrap();
    let status = expect["status"].as_u64().unwrap();
    let code = expect["code"].as_str();
    let mut problems = vec![];

    let mut templates = templates_for(doc, raw);
    // `/registries/...` is the grammar's, never the upload route, even once collapsed.
    let under_registries = raw.starts_with("/registries/");
    if under_registries {
        templates.retain(|t| t != "/registries");
    }
    if templates.is_empty() && under_registries {
        // The grammar's catch-all (documented in the info text): 400 INVALID_PATH, or the 405
        // of a read path.
        let invalid_path = status == 400 && code == Some("INVALID_PATH");
        if !invalid_path && status != 405 {
            problems.push(format!(
                "{raw} matches no registry template, yet answers {status} {code:?}"
            ));
        }
        return problems;
    }
    if templates.is_empty() {
        // Not a documented path: only the catch-all 404 may answer it.
        if status != 404 || code.is_some_and(|c| c != "NOT_FOUND") {
            problems.push(format!(
                "{raw} matches no documented path, yet answers {status} {code:?}"
            ));
        }
        return problems;
    }
    let with_method: Vec<&String> = templates
        .iter()
        .filter(|t| doc["paths"][t.as_str()].get(&method).is_some())
        .collect();
    if with_method.is_empty() {
        // A documented path, an undocumented method: 405 with the documented methods in Allow.
        let item = &doc["paths"][templates[0].as_str()];
        let allow: Vec<String> = METHODS
            .iter()
            .filter(|m| item.get(**m).is_some())
            .map(|m| m.to_ascii_uppercase())
            .collect();
        if status != 405 {
            problems.push(format!(
                "{} {raw}: method not documented on {}, yet answers {status}",
                method.to_uppercase(),
                templates[0]
            ));
        } else if let Some(sent) = expect["headers"]["allow"].as_str() {
            if sent != allow.join(", ") {
                problems.push(format!("{raw}: Allow {sent:?}, documented methods {allow:?}"));
            }
        }
        return problems;
    }
    // The operations this request may be (several only when its parameters are invalid).
    let status_key = status.to_string();
    let Some((template, response)) = with_method.iter().find_map(|t| {
        let op = &doc["paths"][t.as_str()][&method];
        op["responses"]
            .get(&status_key)
            .map(|r| (t.as_str(), resolve(doc, r)))
    }) else {
        problems.push(format!(
            "{} {raw}: status {status} is not documented on {}",
            method.to_uppercase(),
            with_method
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        ));
        return problems;
    };
    let where_ = format!("{} {raw} ({template}, {status})", method.to_uppercase());

    // The body, as far as the case gives it.
    let body: Option<Value> = if let Some(c) = code {
        Some(json!({"code": c, "message": expect["message"].as_str().unwrap_or("a message")}))
    } else if let Some(v) = expect.get("body_json") {
        Some(v.clone())
    } else if let Some(f) = expect["body_file"].as_str() {
        serde_json::from_slice(&world_file(f)).ok()
    } else {
        None
    };
    let content_type = expect["content_type"]
        .as_str()
        .map(media_type)
        .unwrap_or_else(|| "application/json".to_owned());
    if method != "head" && status != 304 {
        match (body, body_schema(response, &content_type)) {
            (Some(body), Some(schema)) => {
                for e in schema_errors(doc, schema, &body) {
                    problems.push(format!("{where_}: body breaks the documented schema: {e}"));
                }
            }
            (Some(_), None) if content_type == "application/json" => {
                problems.push(format!(
                    "{where_}: a JSON body, no documented {content_type} content"
                ));
            }
            _ => {}
        }
    }
    // A documented constant (or set of values) of a header must hold the value the case
    // expects: `Cache-Control` (public, or private in a namespace that needs a token), the
    // sandbox headers of files.
    for name in [
        "cache-control",
        "content-security-policy",
        "x-content-type-options",
    ] {
        let Some(sent) = expect["headers"][name].as_str() else {
            continue;
        };
        let documented = response["headers"]
            .as_object()
            .and_then(|h| h.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
            .map(|(_, h)| resolve(doc, h)["schema"].clone());
        let Some(schema) = documented else {
            continue;
        };
        if let Some(c) = schema["const"].as_str() {
            if c != sent {
                problems.push(format!("{where_}: {name} {sent:?}, documented {c:?}"));
            }
        }
        if let Some(values) = schema["enum"].as_array() {
            if !values.iter().any(|v| v == sent) {
                problems.push(format!("{where_}: {name} {sent:?}, documented one of {values:?}"));
            }
        }
    }
    problems
}

#[test]
fn document_agrees_with_conformance_cases() {
    let doc = document();
    let mut problems = vec![];
    let mut checked = 0;
    for case in cases() {
        let applies = case["only"]
            .as_array()
            .is_none_or(|only| only.iter().any(|t| t == "local"));
        if !applies {
            continue;
        }
        checked += 1;
        for p in check_case(&doc, &case) {
            problems.push(format!("{}: {p}", case["name"].as_str().unwrap()));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {checked} cases disagree with docs/openapi.yaml:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The checker itself: a case the document does not allow is reported (so the test above
/// would fail on a document that drifted).
#[test]
fn checker_reports_drift() {
    let doc = document();
    let bad = [
        // An undocumented status on a documented operation.
        json!({"request": {"path": "/health"}, "expect": {"status": 418}}),
        // An error code outside the catalogue.
        json!({"request": {"path": "/presets/Bad"}, "expect": {"status": 400, "code": "NO_SUCH_CODE"}}),
        // A body that breaks the documented shape.
        json!({"request": {"path": "/namespaces"}, "expect": {"status": 200, "body_json": {"namespaces": 3}}}),
        // A wrong cache tier.
        json!({"request": {"path": "/registries/@rack/a/1.0.0"}, "expect": {"status": 200, "headers": {"cache-control": "no-store"}}}),
        // A tier that is neither public nor private, and a file without its sandbox.
        json!({"request": {"path": "/registries/@rack/a/1.0.0/files/x.html"}, "expect": {"status": 200, "headers": {"cache-control": "public, max-age=60"}}}),
        json!({"request": {"path": "/registries/@rack/a/1.0.0/files/x.html"}, "expect": {"status": 200, "headers": {"content-security-policy": "default-src 'none'"}}}),
        // A non-404 on an undocumented path.
        json!({"request": {"path": "/nowhere"}, "expect": {"status": 200}}),
        // A registry path the grammar refuses, answered other than 400 INVALID_PATH.
        json!({"request": {"path": "/registries/@rack"}, "expect": {"status": 404, "code": "NOT_FOUND"}}),
        // A wrong method that is not a 405.
        json!({"request": {"method": "DELETE", "path": "/health"}, "expect": {"status": 404}}),
    ];
    for case in bad {
        assert!(!check_case(&doc, &case).is_empty(), "not reported: {case}");
    }
    let good = json!({"request": {"path": "/registries/%40rack/build/rollup/1.0.0/files/a/b.ts"}, "expect": {"status": 200, "content_type": "text/typescript"}});
    assert_eq!(check_case(&doc, &good), Vec::<String>::new());
    // The version pivot decides, as in the server: latest of a two-segment registry, not a
    // version.
    assert_eq!(
        templates_for(&doc, "/registries/@rack/build/rollup")[0],
        "/registries/{namespace}/{registry}"
    );
    assert_eq!(
        templates_for(&doc, "/registries/@rack/build/rollup/versions")[0],
        "/registries/{namespace}/{registry}/versions"
    );
    assert_eq!(
        templates_for(&doc, "/registries/@rack/build/rollup/1.0.0-rc.1")[0],
        "/registries/{namespace}/{registry}/{version}"
    );
}

/// Collect every `$ref` in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn document_is_whole() {
    let doc = document();
    let mut all = vec![];
    refs(&doc, &mut all);
    assert!(all.len() > 50);
    for r in &all {
        pointer(&doc, r);
    }
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                let id = op["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{m} {path}: no operationId"));
                assert!(ids.insert(id.to_owned()), "operationId {id} twice");
                // Every read answers HEAD as well (SPEC §4).
                if m == "get" {
                    assert!(item.get("head").is_some(), "{path}: GET without HEAD");
                }
            }
        }
    }
    // The error enum is the catalogue, no more, no less.
    let documented: BTreeSet<&str> = doc["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let catalogue: BTreeSet<&str> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
    assert_eq!(documented, catalogue);
    // Every schema compiles.
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        let _ = schema_errors(&doc, schema, &json!(null));
        assert!(schema.is_object(), "{name}");
    }
}

#[test]
fn openapi_json_is_served() {
    let (_world, server) = common::start();
    let client = common::client();
    let res = client.get(server.url("/openapi.json")).send().unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["cache-control"], "public, max-age=60");
    let etag = h["etag"].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong ETag: {etag}"
    );
    let body = res.bytes().unwrap();
    assert_eq!(&body[..], rack_registry::http::openapi::JSON.as_bytes());
    let served: Value = serde_json::from_slice(&body).unwrap();
    assert!(served["paths"]["/openapi.json"]["get"].is_object());

    let again = client
        .get(server.url("/openapi.json"))
        .header("if-none-match", &etag)
        .send()
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);

    let head = client.head(server.url("/openapi.json")).send().unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(head.headers()["content-length"], body.len().to_string().as_str());

    let post = client.post(server.url("/openapi.json")).send().unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");

    // Compressed on request, identical once decompressed.
    let gz = client
        .get(server.url("/openapi.json"))
        .header("accept-encoding", "gzip")
        .send()
        .unwrap();
    assert_eq!(gz.status(), 200);
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    let mut plain = vec![];
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&gz.bytes().unwrap()[..]),
        &mut plain,
    )
    .unwrap();
    assert_eq!(plain, body);
}
