//! Read-API conformance suite, driven by data: `conformance/cases/*.json` (format in
//! `conformance/README.md`). The same files are meant to run against the server on local disk
//! (this runner, target `local`), the server on a bucket (`s3`) and the edge Worker (`worker`).
//!
//! Every case is run and every discrepancy collected, then the test fails once with the whole
//! list, so a single run shows everything that differs from the contract.
//!
//! Environment knobs: `CONFORMANCE_FILTER=<substring>` runs only the cases whose name contains it;
//! `CONFORMANCE_TARGET` (`local`, `s3` or `worker`; default: local, and s3 when an S3 server is
//! available, see `common/s3.rs`) selects the targets, and so which `only` lists apply. `worker`
//! runs the edge Worker in workerd through `crates/rack-worker/serve-local` (`common/worker.rs`).

mod common;
#[path = "common/http.rs"]
mod raw_http;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::s3::Target;
use raw_http::{RawClient, RawResponse};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    /// Targets the case applies to (`local`, `s3`, `worker`); absent means all.
    #[serde(default)]
    only: Option<Vec<String>>,
    request: Request,
    expect: Expect,
    /// Automatically replay a GET as HEAD and compare (default true).
    #[serde(default = "yes")]
    head: bool,
}

fn yes() -> bool {
    true
}

fn get() -> String {
    "GET".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    #[serde(default = "get")]
    method: String,
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    status: u16,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    /// Exact header values; `null` asserts the header is absent.
    #[serde(default)]
    headers: BTreeMap<String, Option<String>>,
    /// Media type without parameters (`text/javascript` matches `text/javascript; charset=utf-8`).
    #[serde(default)]
    content_type: Option<String>,
    /// Path relative to the world's storage root; the body must equal it byte for byte.
    #[serde(default)]
    body_file: Option<String>,
    #[serde(default)]
    body_json: Option<Value>,
    #[serde(default)]
    body_text: Option<String>,
    #[serde(default)]
    body_empty: bool,
}

/// Headers a HEAD response must repeat from the GET response.
const MIRRORED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "cache-control",
    "etag",
    "allow",
    "vary",
    "content-encoding",
    "last-modified",
];

fn cases_dir() -> PathBuf {
    common::repo_root().join("conformance/cases")
}

fn load_cases() -> Vec<(String, Case)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .expect("conformance/cases")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let parsed: CaseFile = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: invalid case file: {e}", file.display()));
        let stem = file.file_name().unwrap().to_string_lossy().into_owned();
        for case in parsed.cases {
            out.push((stem.clone(), case));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (file, case) in &out {
        assert!(
            seen.insert(case.name.clone()),
            "{file}: duplicate case name {:?}",
            case.name
        );
    }
    out
}

fn media_type(value: &str) -> String {
    value.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

fn show_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.chars().count() > 300 {
        let cut: String = text.chars().take(300).collect();
        format!("{cut:?}... ({} bytes)", body.len())
    } else {
        format!("{text:?}")
    }
}

fn compare_bytes(what: &str, expected: &[u8], actual: &[u8], problems: &mut Vec<String>) {
    if expected != actual {
        let first = expected.iter().zip(actual.iter()).position(|(a, b)| a != b);
        problems.push(format!(
            "{what}: body differs (expected {} bytes, got {} bytes, first difference at {:?}); got {}",
            expected.len(),
            actual.len(),
            first.unwrap_or(expected.len().min(actual.len())),
            show_body(actual)
        ));
    }
}

struct Runner {
    client: RawClient,
    storage: PathBuf,
    /// Every ETag seen on a GET 200, with the body it tagged and the case that saw it first.
    etags: std::cell::RefCell<BTreeMap<String, (Vec<u8>, String)>>,
}

impl Runner {
    fn send(&self, method: &str, path: &str, headers: &[(String, String)]) -> Result<RawResponse, String> {
        self.client.request(method, path, headers)
    }

    fn run(&self, case: &Case) -> Vec<String> {
        let mut problems = Vec::new();
        let method = case.request.method.to_ascii_uppercase();
        let headers: Vec<(String, String)> = case
            .request
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let resp = match self.send(&method, &case.request.path, &headers) {
            Ok(r) => r,
            Err(e) => return vec![format!("request failed: {e}")],
        };
        self.check_expect(case, &method, &resp, &mut problems);
        self.check_automatic(&method, &resp, &mut problems);

        // HEAD mirror of every GET.
        if method == "GET" && case.head {
            match self.send("HEAD", &case.request.path, &headers) {
                Err(e) => problems.push(format!("[head] request failed: {e}")),
                Ok(head) => {
                    if head.status != resp.status {
                        problems.push(format!(
                            "[head] status {} but GET gave {}",
                            head.status, resp.status
                        ));
                    }
                    for name in MIRRORED_HEADERS {
                        let (g, h) = (resp.header_all(name), head.header_all(name));
                        if g != h {
                            problems.push(format!("[head] header {name}: {h:?} but GET gave {g:?}"));
                        }
                    }
                    if !head.body.is_empty() {
                        problems.push(format!("[head] body not empty: {}", show_body(&head.body)));
                    }
                }
            }
        }

        // Strong ETag and If-None-Match on every cacheable GET 200 (SPEC section 9).
        let cacheable = resp
            .header("cache-control")
            .is_some_and(|c| !c.contains("no-store"));
        let conditional_sent = case
            .request
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("if-none-match"));
        if method == "GET" && resp.status == 200 && cacheable && !conditional_sent {
            match resp.header("etag") {
                None => problems.push("[etag] 200 without an ETag (SPEC 9)".into()),
                Some(tag) => {
                    let mut seen = self.etags.borrow_mut();
                    match seen.get(&tag) {
                        Some((body, first)) if body != &resp.body => problems.push(format!(
                            "[etag] {tag} also tags a different body (case {first}) (SPEC 9)"
                        )),
                        Some(_) => {}
                        None => {
                            seen.insert(tag.clone(), (resp.body.clone(), case.name.clone()));
                        }
                    }
                    drop(seen);
                    if !tag.starts_with('"') || !tag.ends_with('"') || tag.len() < 3 {
                        problems.push(format!("[etag] not a strong entity tag: {tag:?} (SPEC 9)"));
                    }
                    let mut h = headers.clone();
                    h.push(("if-none-match".into(), tag.clone()));
                    match self.send("GET", &case.request.path, &h) {
                        Err(e) => problems.push(format!("[etag] conditional request failed: {e}")),
                        Ok(c) => {
                            if c.status != 304 {
                                problems.push(format!(
                                    "[etag] If-None-Match: {tag} gave {} instead of 304 (SPEC 9)",
                                    c.status
                                ));
                            } else {
                                if c.header("etag").as_deref() != Some(tag.as_str()) {
                                    problems.push(format!(
                                        "[etag] 304 ETag {:?} differs from {tag:?}",
                                        c.header("etag")
                                    ));
                                }
                                if c.header("cache-control") != resp.header("cache-control") {
                                    problems.push(format!(
                                        "[etag] 304 Cache-Control {:?} differs from {:?}",
                                        c.header("cache-control"),
                                        resp.header("cache-control")
                                    ));
                                }
                                if !c.body.is_empty() {
                                    problems.push("[etag] 304 with a body".into());
                                }
                            }
                        }
                    }
                }
            }
        }
        problems
    }

    fn check_expect(&self, case: &Case, method: &str, resp: &RawResponse, problems: &mut Vec<String>) {
        let exp = &case.expect;
        if resp.status != exp.status {
            problems.push(format!(
                "status {} (expected {}); body {}",
                resp.status,
                exp.status,
                show_body(&resp.body)
            ));
        }
        if exp.code.is_some() || exp.message.is_some() {
            match serde_json::from_slice::<Value>(&resp.body) {
                Err(_) if method == "HEAD" => {}
                Err(_) => problems.push(format!("error body is not JSON: {}", show_body(&resp.body))),
                Ok(body) => {
                    if let Some(code) = &exp.code {
                        if body.get("code").and_then(Value::as_str) != Some(code.as_str()) {
                            problems.push(format!("code {:?} (expected {code:?})", body.get("code")));
                        }
                    }
                    if let Some(message) = &exp.message {
                        if body.get("message").and_then(Value::as_str) != Some(message.as_str()) {
                            problems.push(format!(
                                "message {:?} (expected {message:?})",
                                body.get("message")
                            ));
                        }
                    }
                }
            }
        }
        for (name, want) in &exp.headers {
            let got = resp.header_all(name);
            match want {
                None if got.is_some() => {
                    problems.push(format!("header {name} present ({got:?}), expected absent"))
                }
                Some(w) if got.as_deref() != Some(w.as_str()) => {
                    problems.push(format!("header {name}: {got:?} (expected {w:?})"))
                }
                _ => {}
            }
        }
        if let Some(ct) = &exp.content_type {
            let got = resp.header("content-type");
            if got.as_deref().map(media_type) != Some(ct.to_ascii_lowercase()) {
                problems.push(format!("content-type {got:?} (expected media type {ct:?})"));
            }
        }
        if let Some(file) = &exp.body_file {
            match std::fs::read(self.storage.join(file)) {
                Err(e) => problems.push(format!("body_file {file}: cannot read from the world: {e}")),
                Ok(bytes) => compare_bytes(&format!("body_file {file}"), &bytes, &resp.body, problems),
            }
        }
        if let Some(want) = &exp.body_json {
            match serde_json::from_slice::<Value>(&resp.body) {
                Err(_) => problems.push(format!("body is not JSON: {}", show_body(&resp.body))),
                Ok(got) if &got != want => problems.push(format!("body JSON {got} (expected {want})")),
                Ok(_) => {}
            }
        }
        if let Some(text) = &exp.body_text {
            compare_bytes("body_text", text.as_bytes(), &resp.body, problems);
        }
        if exp.body_empty && !resp.body.is_empty() {
            problems.push(format!("body not empty: {}", show_body(&resp.body)));
        }
    }

    /// Checks that apply to every response (see conformance/README.md).
    fn check_automatic(&self, method: &str, resp: &RawResponse, problems: &mut Vec<String>) {
        if resp.status >= 400 {
            if resp.header("cache-control").as_deref() != Some("no-store") {
                problems.push(format!(
                    "[error] Cache-Control {:?} on an error (expected \"no-store\", SPEC 4)",
                    resp.header("cache-control")
                ));
            }
            if resp.header("content-type").as_deref().map(media_type).as_deref() != Some("application/json") {
                problems.push(format!(
                    "[error] Content-Type {:?} on an error (expected application/json)",
                    resp.header("content-type")
                ));
            }
            if method != "HEAD" {
                let ok = serde_json::from_slice::<Value>(&resp.body).ok().and_then(|v| {
                    let obj = v.as_object()?.clone();
                    (obj.len() == 2
                        && obj.get("code").is_some_and(Value::is_string)
                        && obj.get("message").is_some_and(Value::is_string))
                    .then_some(())
                });
                if ok.is_none() {
                    problems.push(format!(
                        "[error] body is not exactly {{\"code\",\"message\"}} strings: {}",
                        show_body(&resp.body)
                    ));
                }
            }
        }
        if resp.status == 200 && method != "HEAD" {
            if !resp.has_content_length || resp.chunked {
                problems.push(format!(
                    "[length] 200 without Content-Length (chunked: {}) (SPEC 14)",
                    resp.chunked
                ));
            } else if resp
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
                != Some(resp.body.len())
            {
                problems.push(format!(
                    "[length] Content-Length {:?} but body has {} bytes",
                    resp.header("content-length"),
                    resp.body.len()
                ));
            }
        }
        if let Some(ct) = resp.header("content-type") {
            // Text types may carry `; charset=utf-8` (SPEC 4); any charset must be UTF-8.
            for param in ct.split(';').skip(1) {
                let p = param.trim().to_ascii_lowercase().replace(' ', "");
                if p.starts_with("charset=") && p != "charset=utf-8" && p != "charset=\"utf-8\"" {
                    problems.push(format!("[content-type] charset other than utf-8 in {ct:?}"));
                }
            }
        }
        if resp.status == 304 && !resp.body.is_empty() {
            problems.push("[304] body not empty".into());
        }
    }
}

#[test]
fn read_api_conformance() {
    // Every target by default (s3 when an S3 server is available, see common/s3.rs);
    // CONFORMANCE_TARGET picks one.
    let targets: Vec<Target> = match std::env::var("CONFORMANCE_TARGET").ok().as_deref() {
        None | Some("") => Target::all(),
        Some("local") => vec![Target::Local],
        Some("s3") => {
            assert!(
                common::s3::endpoint().is_some(),
                "CONFORMANCE_TARGET=s3 needs an S3 server"
            );
            vec![Target::S3]
        }
        Some("worker") => {
            if !common::worker::available() {
                return;
            }
            vec![Target::Worker]
        }
        Some(other) => panic!("CONFORMANCE_TARGET={other}: local, s3 or worker"),
    };
    let filter = std::env::var("CONFORMANCE_FILTER").ok();
    let cases = load_cases();
    let mut failures = Vec::new();
    for target in targets {
        if let Err(report) = run_target(target, &cases, filter.as_deref()) {
            failures.push(report);
        }
    }
    if !failures.is_empty() {
        panic!("{}", failures.join("\n\n"));
    }
}

/// Run every case that applies to `target` on a fresh world; the report of the failures.
fn run_target(target: Target, cases: &[(String, Case)], filter: Option<&str>) -> Result<(), String> {
    let name = target.name();
    let world = common::World::new();
    let (server, _bucket) = common::s3::serve_on(&world, target);
    let runner = Runner {
        client: RawClient::new(&server.base),
        storage: world.storage(),
        etags: Default::default(),
    };

    let mut results: Vec<(String, Vec<String>)> = Vec::new();
    let (mut ran, mut skipped) = (0, 0);
    for (file, case) in cases {
        if case
            .only
            .as_ref()
            .is_some_and(|only| !only.iter().any(|t| t == name))
            || filter.is_some_and(|f| !case.name.contains(f))
        {
            skipped += 1;
            continue;
        }
        ran += 1;
        let problems = runner.run(case);
        if !problems.is_empty() {
            let title = format!(
                "{file} :: {}  [{} {}]",
                case.name, case.request.method, case.request.path
            );
            results.push((title, problems));
        }
    }
    let failed = results.len();
    eprintln!("conformance [{name}]: {ran} cases run, {skipped} skipped, {failed} failed");
    if failed > 0 {
        return Err(format!(
            "[{name}] {failed} of {ran} conformance cases failed:\n\n{}\n\nserver warnings and errors (tail):\n{}",
            report(&results),
            tail(&server.output(), 20)
        ));
    }
    Ok(())
}

/// One block per failing case; an automatic-check problem (`[...]`) shared word for word by
/// many cases is printed once, with the count and a few case names, to keep the list readable.
fn report(results: &[(String, Vec<String>)]) -> String {
    let mut counts: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (title, problems) in results {
        for p in problems.iter().filter(|p| p.starts_with('[')) {
            counts.entry(p.as_str()).or_default().push(title.as_str());
        }
    }
    let grouped = |p: &str| counts.get(p).is_some_and(|v| v.len() >= 4);
    let mut out = Vec::new();
    for (title, problems) in results {
        let own: Vec<&String> = problems.iter().filter(|p| !grouped(p)).collect();
        if !own.is_empty() {
            let lines: Vec<&str> = own.iter().map(|p| p.as_str()).collect();
            out.push(format!("{title}\n    - {}", lines.join("\n    - ")));
        }
    }
    for (problem, titles) in counts.iter().filter(|(p, _)| grouped(p)) {
        let names: Vec<&str> = titles
            .iter()
            .take(5)
            .map(|t| t.split("  [").next().unwrap())
            .collect();
        out.push(format!(
            "{problem}\n    - in {} cases, e.g. {}",
            titles.len(),
            names.join(", ")
        ));
    }
    out.join("\n")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The world itself is sound: case files parse, names are unique, every `body_file` exists,
/// and every manifest of the overlay validates against the fixtures' registry-item schema.
#[test]
fn world_is_consistent() {
    let cases = load_cases();
    let overlay = common::world_dir().join("storage");
    let fixtures = common::fixtures_root();
    for (file, case) in &cases {
        if let Some(body) = &case.expect.body_file {
            assert!(
                overlay.join(body).is_file() || fixtures.join(body).is_file(),
                "{file} :: {}: body_file {body} exists neither in the overlay nor in the fixtures",
                case.name
            );
        }
        assert!(
            case.request.path.starts_with('/'),
            "{}: path must start with /",
            case.name
        );
    }

    let schema: Value =
        serde_json::from_slice(&std::fs::read(fixtures.join("schema/registry-item.json")).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("registry-item schema compiles");
    let mut manifests = Vec::new();
    collect(&overlay, "registry.json", &mut manifests);
    assert!(manifests.len() >= 10, "overlay manifests: {manifests:?}");
    let mut bad = Vec::new();
    for path in manifests {
        let value: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
        if !errors.is_empty() {
            bad.push(format!("{}: {}", path.display(), errors.join("; ")));
        }
        for f in value.get("files").and_then(Value::as_array).into_iter().flatten() {
            if let Some(p) = f.get("path").and_then(Value::as_str) {
                let file = path.parent().unwrap().join(p.trim_start_matches("./"));
                if !file.is_file() {
                    bad.push(format!("{}: declared file {p} missing", path.display()));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "invalid manifests in the world:\n{}",
        bad.join("\n")
    );
    let auth: Value =
        serde_json::from_slice(&std::fs::read(common::world_dir().join("auth.json")).unwrap()).unwrap();
    assert!(auth.is_object());
    let world: Value =
        serde_json::from_slice(&std::fs::read(common::world_dir().join("world.json")).unwrap()).unwrap();
    assert_eq!(world["adminToken"], common::ADMIN_TOKEN);
}

fn collect(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            collect(&path, name, out);
        } else if entry.file_name() == name {
            out.push(path);
        }
    }
}
