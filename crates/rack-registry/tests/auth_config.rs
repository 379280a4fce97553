//! `auth.json` fail-closed parsing (SPEC §6, §14), over HTTP against the real server: each test
//! writes its own policy into a fresh world and starts its own server.

mod common;

use std::time::{Duration, Instant};

use common::{client, copy_tree, Server, World, ADMIN_TOKEN};
use serde_json::{json, Value};

/// A registry every test namespace gets a copy of (from the fixtures' `@rack`).
const REGISTRY: &str = "build/rollup";

struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn get_with(server: &Server, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = client().get(server.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = res.status().as_u16();
    Reply {
        status,
        body: res.bytes().unwrap().to_vec(),
    }
}

/// GET the latest of `<ns>/build/rollup`, with an optional bearer token.
fn read(server: &Server, ns: &str, token: Option<&str>) -> Reply {
    let path = format!("/registries/{ns}/{REGISTRY}");
    match token {
        Some(t) => {
            let bearer = format!("Bearer {t}");
            get_with(server, &path, &[("Authorization", &bearer)])
        }
        None => get_with(server, &path, &[]),
    }
}

#[track_caller]
fn assert_ok(r: &Reply, what: &str) {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    assert_eq!(r.json()["name"], "rollup", "{what}: {}", r.text());
}

#[track_caller]
fn assert_error(r: &Reply, status: u16, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert_eq!(r.json()["code"], code, "{what}: {}", r.text());
}

#[track_caller]
fn assert_forbidden(server: &Server, ns: &str, tokens: &[&str]) {
    let r = read(server, ns, None);
    assert_error(&r, 403, "FORBIDDEN_NAMESPACE", &format!("{ns} anonymous"));
    assert_eq!(
        r.json(),
        json!({"code": "FORBIDDEN_NAMESPACE", "message": "Namespace not allowed"})
    );
    for t in tokens.iter().chain([&ADMIN_TOKEN]) {
        let r = read(server, ns, Some(t));
        assert_error(&r, 403, "FORBIDDEN_NAMESPACE", &format!("{ns} with token {t}"));
    }
    let r = get_with(server, &format!("/namespaces/{ns}/registries"), &[]);
    assert_error(&r, 403, "FORBIDDEN_NAMESPACE", &format!("{ns} listing"));
}

/// A world whose storage also holds a copy of `@rack/build/rollup` under each of `namespaces`,
/// with `auth` (raw text) as its `auth.json`.
fn world_with(auth: &str, namespaces: &[&str]) -> World {
    let world = World::new();
    for ns in namespaces {
        copy_tree(
            &world.storage().join("@rack").join(REGISTRY),
            &world.storage().join(ns).join(REGISTRY),
        );
    }
    std::fs::write(world.auth_path(), auth).unwrap();
    world
}

fn listed(server: &Server, token: Option<&str>) -> Vec<String> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
    let r = get_with(server, "/namespaces", &headers);
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_value(r.json()["namespaces"].clone()).unwrap()
}

/// The server output holds a line naming `ns` (as a JSON string) that says it was rejected and
/// contains `topic` (a word of the reason).
#[track_caller]
fn assert_rejection_logged(server: &Server, ns: &str, topic: &str) {
    let quoted = serde_json::to_string(ns).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let output = server.output();
        let found = output.lines().any(|l| {
            let lower = l.to_lowercase();
            l.contains(&quoted) && lower.contains("reject") && lower.contains(&topic.to_lowercase())
        });
        if found {
            return;
        }
        if Instant::now() > deadline {
            panic!("no rejection of {ns} mentioning {topic:?} logged:\n{output}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Files that cannot be a policy: boot refused
// ---------------------------------------------------------------------------------------------

#[test]
fn boot_is_refused_when_auth_json_is_not_an_object() {
    // (case, file text, a word the message must contain to say why)
    let cases = [
        ("array", "[]", "object"),
        ("array of entries", r#"[{"@rack": []}]"#, "object"),
        ("string", r#""@rack""#, "object"),
        ("null", "null", "object"),
        ("number", "42", "object"),
        ("boolean", "true", "object"),
        ("invalid JSON", "{", "json"),
        ("trailing garbage", r#"{"@rack": []} x"#, "json"),
        ("empty file", "", "json"),
        ("whitespace only", "  \n", "json"),
    ];
    let mut failures = Vec::new();
    for (what, text, why) in cases {
        let world = world_with(text, &[]);
        let started = Instant::now();
        match Server::try_start(world.path(), &world.env()) {
            Ok(server) => failures.push(format!("{what}: server started on {}", server.base)),
            Err(f) => {
                if !matches!(f.code, Some(c) if c != 0) {
                    failures.push(format!("{what}: exit code {:?}", f.code));
                }
                if started.elapsed() > Duration::from_secs(5) {
                    failures.push(format!("{what}: took {:?} to refuse", started.elapsed()));
                }
                let lower = f.output.to_lowercase();
                if !lower.contains(why) {
                    failures.push(format!("{what}: message does not say why ({why}):\n{}", f.output));
                }
                if !lower.contains("auth") {
                    failures.push(format!(
                        "{what}: message does not mention the auth config:\n{}",
                        f.output
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Missing file
// ---------------------------------------------------------------------------------------------

fn stored_namespaces(world: &World) -> Vec<String> {
    fn is_namespace(s: &str) -> bool {
        let Some(rest) = s.strip_prefix('@') else {
            return false;
        };
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        let (Some(first), Some(last)) = (rest.chars().next(), rest.chars().last()) else {
            return false;
        };
        ok(first) && ok(last) && rest.chars().all(|c| ok(c) || c == '_' || c == '-')
    }
    let mut names: Vec<String> = std::fs::read_dir(world.storage())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_namespace(n))
        .collect();
    names.sort();
    names
}

#[test]
fn missing_auth_json_makes_every_namespace_undeclared() {
    let world = World::new();
    std::fs::remove_file(world.auth_path()).unwrap();
    let server = Server::world(&world);

    for ns in ["@rack", "@company", "@anon", "@secret"] {
        let r = get_with(&server, &format!("/namespaces/{ns}/registries"), &[]);
        assert_error(&r, 403, "FORBIDDEN_NAMESPACE", ns);
    }
    assert_forbidden(&server, "@rack", &["company-read-token"]);
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let r = get_with(
        &server,
        "/registries/@company/ui/button",
        &[("Authorization", &admin)],
    );
    assert_error(&r, 403, "FORBIDDEN_NAMESPACE", "@company with the admin token");
    let r = get_with(
        &server,
        "/registries/@rack/build/rollup/1.0.0",
        &[("X-Registry-Token", ADMIN_TOKEN)],
    );
    assert_error(
        &r,
        403,
        "FORBIDDEN_NAMESPACE",
        "@rack version with the admin token",
    );

    assert_eq!(listed(&server, None), Vec::<String>::new());
    assert_eq!(listed(&server, Some("company-read-token")), Vec::<String>::new());
    let expected = stored_namespaces(&world);
    assert!(expected.contains(&"@rack".to_owned()), "{expected:?}");
    assert!(expected.contains(&"@secret".to_owned()), "{expected:?}");
    assert_eq!(listed(&server, Some(ADMIN_TOKEN)), expected);

    // Presets, schemas and health do not depend on the policy.
    let r = get_with(&server, "/health", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get_with(&server, "/schemas/rack.json", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
}

// ---------------------------------------------------------------------------------------------
// Per-namespace rejections: siblings keep working
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_namespace_keys_are_ignored_and_siblings_work() {
    let auth = r#"{
        "rack": [],
        "@Rack": [],
        "@rack-": [],
        "@rack": [],
        "@rack.io": [],
        "@": []
    }"#;
    let world = world_with(auth, &[]);
    let server = Server::world(&world);
    assert_ok(&read(&server, "@rack", None), "@rack beside bad keys");
    // An anonymous namespace ignores any token, even an unknown one.
    assert_ok(
        &read(&server, "@rack", Some("unknown-token")),
        "@rack with a token",
    );
    assert_ok(
        &read(&server, "@rack", Some(ADMIN_TOKEN)),
        "@rack with the admin token",
    );
    assert_eq!(listed(&server, None), ["@rack"]);
    for key in ["rack", "@Rack", "@rack-", "@rack.io", "@"] {
        assert_rejection_logged(&server, key, "");
    }
}

#[test]
fn a_value_that_is_not_an_array_rejects_only_that_namespace() {
    let auth = r#"{
        "@rack": [],
        "@obj": {"token": "obj-token"},
        "@str": "str-token",
        "@nul": null,
        "@num": 5,
        "@bool": true,
        "@good": [{"token": "good-token"}]
    }"#;
    let bad = ["@obj", "@str", "@nul", "@num", "@bool"];
    let world = world_with(auth, &[&bad[..], &["@good"]].concat());
    let server = Server::world(&world);

    assert_ok(&read(&server, "@rack", None), "@rack");
    assert_ok(&read(&server, "@good", Some("good-token")), "@good");
    for ns in bad {
        assert_forbidden(&server, ns, &["obj-token", "str-token", "good-token"]);
        assert_rejection_logged(&server, ns, "array");
    }
    assert_eq!(listed(&server, None), ["@rack"]);
    assert_eq!(listed(&server, Some("good-token")), ["@good", "@rack"]);
}

#[test]
fn an_array_of_only_junk_entries_rejects_the_namespace() {
    let auth = r#"{
        "@rack": [],
        "@junk": [1, "junk-token", {"token": ""}, {"token": "   "}, {"token": 5}, {}, null, true,
                  [{"token": "nested-token"}], {"token": ["junk-token"]}, {"mark": "no token"}]
    }"#;
    let world = world_with(auth, &["@junk"]);
    let server = Server::world(&world);
    assert_ok(&read(&server, "@rack", None), "@rack");
    assert_forbidden(&server, "@junk", &["junk-token", "nested-token", "5", "1"]);
    assert_rejection_logged(&server, "@junk", "");
    assert_eq!(listed(&server, None), ["@rack"]);
    assert_eq!(listed(&server, Some("junk-token")), ["@rack"]);
}

#[test]
fn junk_entries_beside_a_valid_one_are_skipped() {
    let auth = r#"{
        "@rack": [],
        "@mixed": [1, "junk-token", {"token": ""}, {"token": 5}, {}, null,
                   {"token": "valid-token", "mark": "the one that counts"}, {"token": "   "}]
    }"#;
    let world = world_with(auth, &["@mixed"]);
    let server = Server::world(&world);
    assert_ok(
        &read(&server, "@mixed", Some("valid-token")),
        "@mixed with the valid token",
    );
    assert_ok(
        &read(&server, "@mixed", Some(ADMIN_TOKEN)),
        "@mixed with the admin token",
    );
    assert_error(
        &read(&server, "@mixed", None),
        401,
        "UNAUTHORIZED",
        "@mixed anonymous",
    );
    for junk in ["junk-token", "5", "1", "null"] {
        assert_error(
            &read(&server, "@mixed", Some(junk)),
            401,
            "INVALID_TOKEN",
            &format!("@mixed with {junk}"),
        );
    }
    assert_eq!(listed(&server, None), ["@rack"]);
    assert_eq!(listed(&server, Some("valid-token")), ["@mixed", "@rack"]);
    let r = get_with(
        &server,
        "/namespaces/@mixed/registries",
        &[("X-Registry-Token", "valid-token")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"namespace": "@mixed", "registries": ["build/rollup"]})
    );
}

#[test]
fn a_bad_expires_at_rejects_the_whole_namespace() {
    let auth = r#"{
        "@rack": [],
        "@exp-word": [{"token": "word-ok"}, {"token": "word-bad", "expiresAt": "soon"}],
        "@exp-number": [{"token": "number-ok"}, {"token": "number-bad", "expiresAt": 12345}],
        "@exp-bool": [{"token": "bool-ok"}, {"token": "bool-bad", "expiresAt": true}],
        "@exp-date": [{"token": "date-ok"}, {"token": "date-bad", "expiresAt": "2027-13-45"}],
        "@exp-object": [{"token": "object-ok"}, {"token": "object-bad", "expiresAt": {}}],
        "@exp-first": [{"token": "first-bad", "expiresAt": "tomorrow"}, {"token": "first-ok"}],
        "@exp-fine": [{"token": "fine-ok", "expiresAt": "2999-01-01T00:00:00Z"}]
    }"#;
    let cases = [
        ("@exp-word", "word"),
        ("@exp-number", "number"),
        ("@exp-bool", "bool"),
        ("@exp-date", "date"),
        ("@exp-object", "object"),
        ("@exp-first", "first"),
    ];
    let mut all: Vec<&str> = cases.iter().map(|(ns, _)| *ns).collect();
    all.push("@exp-fine");
    let world = world_with(auth, &all);
    let server = Server::world(&world);

    assert_ok(&read(&server, "@rack", None), "@rack");
    assert_ok(&read(&server, "@exp-fine", Some("fine-ok")), "@exp-fine");
    for (ns, prefix) in cases {
        let ok = format!("{prefix}-ok");
        let bad = format!("{prefix}-bad");
        assert_forbidden(&server, ns, &[&ok, &bad]);
        assert_rejection_logged(&server, ns, "expiresAt");
    }
    assert_eq!(listed(&server, None), ["@rack"]);
    assert_eq!(listed(&server, Some("word-ok")), ["@rack"]);
}

// ---------------------------------------------------------------------------------------------
// Expiry
// ---------------------------------------------------------------------------------------------

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

#[test]
fn expires_at_absent_null_or_blank_never_expires() {
    let auth = r#"{
        "@never": [
            {"token": "absent-token"},
            {"token": "null-token", "expiresAt": null},
            {"token": "blank-token", "expiresAt": ""}
        ]
    }"#;
    let world = world_with(auth, &["@never"]);
    let server = Server::world(&world);
    for t in ["absent-token", "null-token", "blank-token"] {
        assert_ok(&read(&server, "@never", Some(t)), t);
    }
    assert_eq!(listed(&server, Some("null-token")), ["@never"]);
}

#[test]
fn past_timestamps_give_token_expired_and_offsets_are_honoured() {
    use time::{OffsetDateTime, UtcOffset};
    let now = OffsetDateTime::now_utc();
    let plus5 = UtcOffset::from_hms(5, 0, 0).unwrap();
    let minus5 = UtcOffset::from_hms(-5, 0, 0).unwrap();
    // An hour ago written in +05:00 reads as a future wall-clock time if the offset is ignored;
    // an hour ahead written in -05:00 reads as a past one.
    let past_in_plus5 = rfc3339((now - time::Duration::hours(1)).to_offset(plus5));
    let future_in_minus5 = rfc3339((now + time::Duration::hours(1)).to_offset(minus5));
    let auth = json!({
        "@rack": [],
        "@exp": [
            {"token": "past-date", "expiresAt": "2020-01-01"},
            {"token": "past-z", "expiresAt": "2020-01-01T00:00:00Z"},
            {"token": "past-offset", "expiresAt": "2020-01-01T00:00:00+02:00"},
            {"token": "past-fraction", "expiresAt": "2020-06-30T12:34:56.789Z"},
            {"token": "past-shifted", "expiresAt": past_in_plus5},
            {"token": "future-date", "expiresAt": "2999-01-01"},
            {"token": "future-z", "expiresAt": "2999-01-01T00:00:00Z"},
            {"token": "future-offset", "expiresAt": "2999-06-30T12:00:00+02:00"},
            {"token": "future-shifted", "expiresAt": future_in_minus5}
        ]
    });
    let world = world_with(&serde_json::to_string_pretty(&auth).unwrap(), &["@exp"]);
    let server = Server::world(&world);
    for t in [
        "past-date",
        "past-z",
        "past-offset",
        "past-fraction",
        "past-shifted",
    ] {
        let r = read(&server, "@exp", Some(t));
        assert_error(&r, 401, "TOKEN_EXPIRED", t);
        assert_eq!(
            r.json(),
            json!({"code": "TOKEN_EXPIRED", "message": "Authentication token has expired"})
        );
    }
    for t in ["future-date", "future-z", "future-offset", "future-shifted"] {
        assert_ok(&read(&server, "@exp", Some(t)), t);
    }
    // An expired token also hides the namespace from the listing.
    assert_eq!(listed(&server, Some("past-date")), ["@rack"]);
    assert_eq!(listed(&server, Some("future-date")), ["@exp", "@rack"]);
}

// ---------------------------------------------------------------------------------------------
// Publish flag and trimming
// ---------------------------------------------------------------------------------------------

#[test]
fn publish_values_other_than_true_still_read() {
    let auth = r#"{
        "@pub": [
            {"token": "pub-string", "publish": "true"},
            {"token": "pub-one", "publish": 1},
            {"token": "pub-yes", "publish": "yes"},
            {"token": "pub-null", "publish": null},
            {"token": "pub-false", "publish": false},
            {"token": "pub-object", "publish": {}},
            {"token": "pub-true", "publish": true}
        ]
    }"#;
    let world = world_with(auth, &["@pub"]);
    let server = Server::world(&world);
    for t in [
        "pub-string",
        "pub-one",
        "pub-yes",
        "pub-null",
        "pub-false",
        "pub-object",
        "pub-true",
    ] {
        assert_ok(&read(&server, "@pub", Some(t)), t);
    }
    assert!(
        !server
            .output()
            .lines()
            .any(|l| l.contains("\"WARN\"") && l.to_lowercase().contains("\"@pub\"")),
        "@pub was rejected:\n{}",
        server.output()
    );
}

#[test]
fn tokens_are_trimmed_in_auth_json_and_in_headers() {
    let auth = r#"{
        "@trim": [
            {"token": "  t  "},
            {"token": "\t padded-token \n"}
        ],
        "@other": [{"token": "other-token"}]
    }"#;
    let world = world_with(auth, &["@trim"]);
    let server = Server::world(&world);
    let path = format!("/registries/@trim/{REGISTRY}");
    let ok_headers: &[(&str, &str)] = &[
        ("Authorization", "Bearer t"),
        ("Authorization", "Bearer   t  "),
        ("Authorization", "bearer t"),
        ("Authorization", "BEARER \t t"),
        ("Authorization", "Bearer padded-token"),
        ("X-Registry-Token", "t"),
        ("X-Registry-Token", "   t   "),
        ("X-Registry-Token", " \tpadded-token\t "),
    ];
    for (name, value) in ok_headers {
        let r = get_with(&server, &path, &[(name, value)]);
        assert_ok(&r, &format!("{name}: {value:?}"));
    }
    let bad_headers: &[(&str, &str)] = &[
        ("Authorization", "Bearer   t  x"),
        ("X-Registry-Token", "padded"),
        ("X-Registry-Token", "other-token"),
    ];
    for (name, value) in bad_headers {
        let r = get_with(&server, &path, &[(name, value)]);
        assert_error(&r, 401, "INVALID_TOKEN", &format!("{name}: {value:?}"));
    }
    // Bearer wins over X-Registry-Token; a non-Bearer Authorization is ignored.
    let r = get_with(
        &server,
        &path,
        &[("Authorization", "Bearer t"), ("X-Registry-Token", "other-token")],
    );
    assert_ok(&r, "Bearer wins");
    let r = get_with(
        &server,
        &path,
        &[("Authorization", "Bearer other-token"), ("X-Registry-Token", "t")],
    );
    assert_error(&r, 401, "INVALID_TOKEN", "Bearer wins (wrong bearer)");
    let r = get_with(
        &server,
        &path,
        &[("Authorization", "Basic dDp0"), ("X-Registry-Token", "t")],
    );
    assert_ok(&r, "Basic is ignored, X-Registry-Token used");
    let r = get_with(&server, &path, &[("X-Registry-Token", "   ")]);
    assert_error(&r, 401, "UNAUTHORIZED", "blank token counts as absent");
    assert_eq!(listed(&server, Some("t")), ["@trim"]);
}

#[test]
fn a_date_only_expiry_means_midnight_utc() {
    let today = time::OffsetDateTime::now_utc().date();
    let tomorrow = today.next_day().unwrap();
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let auth = json!({
        "@day": [
            {"token": "today-token", "expiresAt": today.format(&fmt).unwrap()},
            {"token": "tomorrow-token", "expiresAt": tomorrow.format(&fmt).unwrap()}
        ]
    });
    let world = world_with(&auth.to_string(), &["@day"]);
    let server = Server::world(&world);
    assert_error(
        &read(&server, "@day", Some("today-token")),
        401,
        "TOKEN_EXPIRED",
        "a date-only expiry of today (midnight UTC has passed)",
    );
    assert_ok(&read(&server, "@day", Some("tomorrow-token")), "tomorrow");
}

#[test]
fn token_sha256_entries_are_compared_by_hash() {
    use sha2::Digest;
    let hashed = hex::encode(sha2::Sha256::digest(b"hashed-secret"));
    let auth = json!({
        "@rack": [],
        "@hashed": [
            {"tokenSha256": hashed, "mark": "committed without the secret"},
            {"tokenSha256": hashed.to_uppercase(), "mark": "upper case hex"}
        ],
        "@badhash": [
            {"tokenSha256": "abc"},
            {"tokenSha256": 5},
            {"tokenSha256": format!("{hashed}00")}
        ]
    });
    let world = world_with(&auth.to_string(), &["@hashed", "@badhash"]);
    let server = Server::world(&world);
    assert_ok(
        &read(&server, "@hashed", Some("hashed-secret")),
        "@hashed with the secret",
    );
    assert_error(
        &read(&server, "@hashed", Some(&hashed)),
        401,
        "INVALID_TOKEN",
        "the digest itself is not a token",
    );
    assert_forbidden(&server, "@badhash", &["abc", "hashed-secret"]);
    assert_rejection_logged(&server, "@badhash", "");
    assert!(!server.output().contains("hashed-secret"), "{}", server.output());
}
