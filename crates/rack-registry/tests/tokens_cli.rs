//! `rack-registry token` and `rack-registry auth check` (SPEC §6 BEYOND, §13), run as real
//! processes; the tokens they make are then used against a real server over HTTP.

mod common;
#[path = "common/pkg.rs"]
mod pkg;

use common::{client, copy_tree, run_cli, Server, World, ADMIN_TOKEN};
use pkg::Upload;
use serde_json::{json, Value};

use common::{auth_json_tokens, sha256_hex};

/// Run a subcommand in a scratch directory with an empty environment.
fn cli(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    run_cli(dir.path(), &[], args)
}

/// `token --json ...`: the token and its entry.
fn token_json(extra: &[&str]) -> (String, Value) {
    let mut args = vec!["token", "--json"];
    args.extend_from_slice(extra);
    let (code, out) = cli(&args);
    assert_eq!(code, Some(0), "{out}");
    let v: Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not one JSON object ({e}): {out}"));
    let token = v["token"].as_str().expect("token").to_owned();
    (token, v["entry"].clone())
}

/// The trailing run of hex digits of a token (after any recognizable prefix).
fn hex_tail(token: &str) -> &str {
    let start = token
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_hexdigit())
        .last()
        .map(|(i, _)| i)
        .unwrap_or(token.len());
    &token[start..]
}

/// The token looks like >= 256 bits of randomness: >= 64 hex digits after a short prefix, not
/// a repeated pattern.
#[track_caller]
fn assert_random_looking(token: &str) {
    let tail = hex_tail(token);
    assert!(tail.len() >= 64, "{token:?} has {} hex digits", tail.len());
    assert!(token.len() - tail.len() <= 16, "prefix too long: {token:?}");
    let distinct: std::collections::BTreeSet<char> = tail.chars().collect();
    assert!(distinct.len() >= 10, "{token:?} does not look random");
    assert_eq!(token.trim(), token);
}

/// Every literal token of this file (each test also passes the ones it made).
const TOKENS: &[&str] = &[
    "check-secret-good",
    "check-secret-hashed",
    "check-secret-soon",
    "check-secret-old",
    "check-secret-later",
    "check-secret-badexp",
    "check-secret-badkey",
    "check-secret-notarray",
    "check-secret-junk-sibling",
    "check-secret-typed-expiry",
    "clean-secret-ci",
    "clean-secret-soon",
    "broken-secret-json",
    "broken-secret-array",
    "broken-secret-string",
];

/// `text` contains none of `secrets`, none of this file's tokens, none of the conformance
/// world's tokens, not the admin token; nor their SHA-256 (either case), nor the hex run of a
/// prefixed token on its own.
#[track_caller]
fn assert_no_secrets(text: &str, secrets: &[&str]) {
    let world = auth_json_tokens(&std::fs::read_to_string(common::world_dir().join("auth.json")).unwrap());
    let all = secrets
        .iter()
        .copied()
        .chain(TOKENS.iter().copied())
        .chain(world.iter().map(String::as_str))
        .chain([ADMIN_TOKEN]);
    for s in all {
        for needle in [
            s.to_owned(),
            hex_tail(s).to_owned(),
            sha256_hex(s),
            sha256_hex(s).to_uppercase(),
        ] {
            if needle.len() >= 8 {
                assert!(!text.contains(&needle), "output contains {needle:?}:\n{text}");
            }
        }
    }
}

/// Write `auth` into a file of its own and run `auth check` on it.
fn auth_check(auth: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.json");
    std::fs::write(&file, auth).unwrap();
    run_cli(dir.path(), &[], &["auth", "check", file.to_str().unwrap()])
}

/// The line of `report` that mentions `ns` and (case-insensitively) every one of `words`.
fn line_with<'a>(report: &'a str, ns: &str, words: &[&str]) -> Option<&'a str> {
    report.lines().find(|l| {
        let lower = l.to_lowercase();
        l.contains(ns) && words.iter().all(|w| lower.contains(&w.to_lowercase()))
    })
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

// ---------------------------------------------------------------------------------------------
// token
// ---------------------------------------------------------------------------------------------

#[test]
fn a_json_token_round_trips_through_auth_check_and_the_server() {
    let before = time::OffsetDateTime::now_utc();
    let (token, entry) = token_json(&["--publish", "--mark", "CI", "--expires", "30d"]);
    let after = time::OffsetDateTime::now_utc();
    assert_random_looking(&token);

    // The entry holds only the hash, the mark, the right and the expiry: no plaintext anywhere.
    let obj = entry.as_object().expect("entry is an object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["expiresAt", "mark", "publish", "tokenSha256"], "{entry}");
    assert_eq!(entry["tokenSha256"], sha256_hex(&token), "{entry}");
    assert_eq!(entry["mark"], "CI");
    assert_eq!(entry["publish"], true);
    let text = entry.to_string();
    assert!(
        !text.contains(&token) && !text.contains(hex_tail(&token)),
        "{text}"
    );
    let expires = time::OffsetDateTime::parse(
        entry["expiresAt"].as_str().expect("expiresAt string"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("expiresAt is RFC 3339");
    let month = time::Duration::days(30);
    let slack = time::Duration::seconds(2);
    assert!(
        expires >= before + month - slack && expires <= after + month + slack,
        "expiresAt {expires} is not 30 days from now"
    );

    // auth check accepts it and lists the namespace and the mark, never the token or its hash.
    let world = World::new();
    copy_tree(
        &world.storage().join("@rack/build/rollup"),
        &world.storage().join("@ci/build/rollup"),
    );
    let auth = json!({"@rack": [], "@ci": [entry]});
    std::fs::write(world.auth_path(), serde_json::to_string_pretty(&auth).unwrap()).unwrap();
    let (code, report) = run_cli(
        world.path(),
        &[],
        &["auth", "check", world.auth_path().to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("@ci"), "{report}");
    assert!(report.contains("CI"), "{report}");
    assert_no_secrets(&report, &[&token]);

    // A server on that file: the token reads and publishes; its hash does neither.
    let server = Server::world(&world);
    let read = |t: Option<&str>| {
        let mut req = client().get(server.url("/registries/@ci/build/rollup"));
        if let Some(t) = t {
            req = req.bearer_auth(t);
        }
        req.send().unwrap().status().as_u16()
    };
    assert_eq!(read(Some(&token)), 200);
    assert_eq!(read(None), 401);
    assert_eq!(read(Some(&sha256_hex(&token))), 401);
    let r = Upload::new(pkg::simple("@ci", "from-token", "1.0.0"))
        .bearer(&token)
        .send(&server.base);
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["path"], "@ci/build/from-token/1.0.0");
    let r = Upload::new(pkg::simple("@ci", "from-token", "1.0.1"))
        .x_token(&token)
        .send(&server.base);
    assert_eq!(r.status, 201, "{}", r.text);
    assert_no_secrets(&server.output(), &[&token]);
}

#[test]
fn two_runs_give_different_tokens() {
    let (a, ea) = token_json(&[]);
    let (b, eb) = token_json(&[]);
    assert_random_looking(&a);
    assert_random_looking(&b);
    assert_ne!(a, b);
    assert_ne!(ea["tokenSha256"], eb["tokenSha256"]);
    // Without options the entry is read-only and never expires.
    assert_eq!(ea, json!({"tokenSha256": sha256_hex(&a)}));
}

/// Every maximal run of `[A-Za-z0-9_]` of at least 64 characters in `text`.
fn long_words(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.len() >= 64)
        .collect()
}

#[test]
fn human_output_shows_the_token_once_and_its_entry() {
    let (code, out) = cli(&[
        "token",
        "--namespace",
        "@team",
        "--mark",
        "deploy",
        "--expires",
        "2w",
    ]);
    assert_eq!(code, Some(0), "{out}");
    // Exactly one token and one hash: the hash is the SHA-256 of the token.
    let words = long_words(&out);
    let token = words
        .iter()
        .find(|w| words.contains(&sha256_hex(w).as_str()))
        .unwrap_or_else(|| panic!("no token whose hash is also printed:\n{out}"));
    assert_random_looking(token);
    assert_eq!(out.matches(token).count(), 1, "the token is printed once:\n{out}");
    let hash = sha256_hex(token);
    assert_eq!(out.matches(&hash).count(), 1, "{out}");
    assert_eq!(words.len(), 2, "{out}");

    // The entry is there, ready to paste under the namespace.
    assert!(out.contains("\"@team\""), "{out}");
    let start = out.find('{').expect("an entry object");
    let end = start + out[start..].find('}').expect("end of the entry") + 1;
    let entry: Value = serde_json::from_str(&out[start..end]).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(entry["tokenSha256"], hash);
    assert_eq!(entry["mark"], "deploy");
    assert!(entry.get("publish").is_none_or(|p| p != true), "{entry}");
    assert!(entry["expiresAt"].is_string(), "{entry}");
    assert!(entry.get("token").is_none(), "{entry}");
}

#[test]
fn bad_token_arguments_exit_non_zero_without_a_token() {
    for args in [
        &["token", "--namespace", "BAD"][..],
        &["token", "--namespace", "@bad-"],
        &["token", "--json", "--namespace", "company"],
        &["token", "--expires", "someday"],
        &["token", "--expires", "0d"],
    ] {
        let (code, out) = cli(args);
        assert!(code.is_some_and(|c| c != 0), "{args:?} exited {code:?}: {out}");
        assert!(long_words(&out).is_empty(), "{args:?} printed a token: {out}");
        if args[1] == "--namespace" || args[2] == "--namespace" {
            assert!(
                out.contains(args.last().unwrap()),
                "{args:?} names the value: {out}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// auth check
// ---------------------------------------------------------------------------------------------

#[test]
fn auth_check_lists_rejections_and_expiries_without_printing_secrets() {
    let now = time::OffsetDateTime::now_utc();
    let secrets = [
        "check-secret-good",
        "check-secret-hashed",
        "check-secret-soon",
        "check-secret-old",
        "check-secret-later",
        "check-secret-badexp",
        "check-secret-badkey",
        "check-secret-notarray",
        "check-secret-junk-sibling",
        "check-secret-typed-expiry",
    ];
    let auth = json!({
        "@anon": [],
        "@good": [
            {"token": "  check-secret-good  ", "mark": "good-mark", "publish": true},
            {"tokenSha256": sha256_hex("check-secret-hashed"), "mark": "hashed-mark"}
        ],
        "@soon": [{"token": "check-secret-soon", "mark": "soon-mark", "expiresAt": rfc3339(now + time::Duration::days(5))}],
        "@old": [{"token": "check-secret-old", "mark": "old-mark", "expiresAt": "2020-01-01"}],
        "@later": [{"token": "check-secret-later", "mark": "later-mark", "expiresAt": rfc3339(now + time::Duration::days(60))}],
        "@badexp": [{"token": "check-secret-badexp", "expiresAt": "next tuesday"}],
        "@typedexp": [{"token": "check-secret-typed-expiry", "expiresAt": 1767225600}],
        "BadKey": [{"token": "check-secret-badkey"}],
        "@notarray": {"token": "check-secret-notarray"},
        "@junk": [{"token": "   "}, 7, {"mark": "no token"}],
        "@mixed": [{"token": "check-secret-junk-sibling"}, "not-an-entry"]
    });
    let (code, report) = auth_check(&serde_json::to_string_pretty(&auth).unwrap());
    assert!(
        code.is_some_and(|c| c != 0),
        "rejections fail the check ({code:?}):\n{report}"
    );

    // Every rejected namespace is named with its reason.
    for (ns, reason) in [
        ("@badexp", "expiresAt"),
        ("@typedexp", "expiresAt"),
        ("BadKey", "match"),
        ("@notarray", "array"),
        ("@junk", "valid"),
    ] {
        assert!(
            line_with(&report, ns, &["reject", reason]).is_some(),
            "{ns} rejected because of {reason}:\n{report}"
        );
    }
    // Accepted namespaces are listed, never as rejected.
    for ns in ["@anon", "@good", "@soon", "@old", "@later", "@mixed"] {
        assert!(report.contains(ns), "{ns} listed:\n{report}");
        assert!(line_with(&report, ns, &["reject"]).is_none(), "{ns}:\n{report}");
    }
    assert!(
        report.contains("good-mark") && report.contains("hashed-mark"),
        "{report}"
    );
    // Expiring within 14 days and expired tokens are flagged; a later one is not.
    assert!(
        line_with(&report, "@soon", &["warn", "expires"]).is_some(),
        "{report}"
    );
    assert!(
        line_with(&report, "@old", &["warn", "expired"]).is_some(),
        "{report}"
    );
    assert!(line_with(&report, "@later", &["warn"]).is_none(), "{report}");
    // The skipped entry beside a valid one is mentioned.
    assert!(line_with(&report, "@mixed", &["skipped"]).is_some(), "{report}");
    assert_no_secrets(&report, &secrets);
}

#[test]
fn auth_check_passes_a_clean_file_and_flags_expiry_even_then() {
    let now = time::OffsetDateTime::now_utc();
    let (code, report) = auth_check(
        &json!({
            "@rack": [],
            "@ci": [{"token": "clean-secret-ci", "mark": "ci", "publish": true}],
            "@soon": [{"token": "clean-secret-soon", "mark": "rotating", "expiresAt": rfc3339(now + time::Duration::days(13))}]
        })
        .to_string(),
    );
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("@rack") && report.contains("@ci"), "{report}");
    assert!(line_with(&report, "@soon", &["warn"]).is_some(), "{report}");
    assert_no_secrets(&report, &["clean-secret-ci", "clean-secret-soon"]);
}

#[test]
fn auth_check_refuses_files_that_are_not_a_policy() {
    for (text, word) in [
        (r#"{"@ci": [{"token": "broken-secret-json"}"#, "json"),
        (r#"[{"@ci": [{"token": "broken-secret-array"}]}]"#, "array"),
        ("\"broken-secret-string\"", "string"),
        ("null", "null"),
        ("", "json"),
    ] {
        let (code, report) = auth_check(text);
        assert!(
            code.is_some_and(|c| c != 0),
            "{text:?} exited {code:?}:\n{report}"
        );
        assert!(
            report.to_lowercase().contains(word),
            "{text:?}: names the problem:\n{report}"
        );
        assert_no_secrets(
            &report,
            &[
                "broken-secret-json",
                "broken-secret-array",
                "broken-secret-string",
            ],
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let (code, report) = run_cli(dir.path(), &[], &["auth", "check", missing.to_str().unwrap()]);
    assert!(code.is_some_and(|c| c != 0), "missing file: {report}");
    assert!(report.contains("nope.json"), "{report}");
}

#[test]
fn auth_check_of_the_conformance_world_names_every_rejection() {
    let world = World::new();
    let (code, report) = run_cli(
        world.path(),
        &[],
        &["auth", "check", world.auth_path().to_str().unwrap()],
    );
    assert!(code.is_some_and(|c| c != 0), "{report}");
    for ns in [
        "@badexpiry",
        "@badexpirytype",
        "@allinvalid",
        "@notarray",
        "@BadKey",
        "not-a-namespace",
    ] {
        assert!(line_with(&report, ns, &["reject"]).is_some(), "{ns}:\n{report}");
    }
    let text = std::fs::read_to_string(world.auth_path()).unwrap();
    let secrets = auth_json_tokens(&text);
    assert!(secrets.len() > 10);
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    assert_no_secrets(&report, &refs);
}
