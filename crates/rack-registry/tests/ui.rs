//! The web pages under `/ui` (SPEC §15), over HTTP against the real server process: each page's
//! status and content, error pages with the API's codes, pagination, search, sign-in and
//! sessions, the security headers on every page, escaping of hostile stored content, `UI=false`
//! and the browser redirect of `/`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{client, sha256_hex, start, start_with, Server, World, ADMIN_TOKEN};
use serde_json::{json, Value};

const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'";

struct Page {
    status: u16,
    body: String,
    set_cookies: Vec<String>,
    location: Option<String>,
}

/// Every `/ui` answer carries SPEC §15's headers; pages are HTML and never stored.
fn check_headers(path: &str, res: &reqwest::blocking::Response) {
    let h = res.headers();
    let get = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(get("content-security-policy").as_deref(), Some(CSP), "{path}");
    assert_eq!(
        get("x-content-type-options").as_deref(),
        Some("nosniff"),
        "{path}"
    );
    assert_eq!(get("referrer-policy").as_deref(), Some("same-origin"), "{path}");
    if !path.starts_with("/ui/assets/") {
        assert_eq!(get("cache-control").as_deref(), Some("no-store"), "{path}");
        if res.status().as_u16() != 303 {
            assert_eq!(
                get("content-type").as_deref(),
                Some("text/html; charset=utf-8"),
                "{path}"
            );
        }
    }
}

fn finish(path: &str, res: reqwest::blocking::Response) -> Page {
    check_headers(path, &res);
    let set_cookies = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let location = res
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned());
    Page {
        status: res.status().as_u16(),
        set_cookies,
        location,
        body: res.text().unwrap(),
    }
}

fn get(server: &Server, path: &str, cookie: Option<&str>) -> Page {
    let mut req = client().get(server.url(path));
    if let Some(c) = cookie {
        req = req.header("Cookie", c);
    }
    finish(path, req.send().unwrap())
}

/// `name=value` of the `Set-Cookie` for `name`, and the whole header.
fn cookie_of<'a>(page: &'a Page, name: &str) -> Option<(String, &'a str)> {
    page.set_cookies.iter().find_map(|c| {
        let pair = c.split(';').next()?;
        pair.starts_with(&format!("{name}="))
            .then(|| (pair.to_owned(), c.as_str()))
    })
}

/// The login form: its CSRF cookie and field.
fn login_form(server: &Server) -> (String, String) {
    let page = get(server, "/ui/login", None);
    assert_eq!(page.status, 200);
    let (cookie, _) = cookie_of(&page, "rack_csrf").expect("CSRF cookie");
    let marker = "name=\"csrf\" value=\"";
    let i = page.body.find(marker).expect("CSRF field") + marker.len();
    let field = page.body[i..].split('"').next().unwrap().to_owned();
    (cookie, field)
}

fn post_login(server: &Server, cookie: &str, csrf: &str, token: &str, headers: &[(&str, &str)]) -> Page {
    let mut req = client()
        .post(server.url("/ui/login"))
        .header("Cookie", cookie)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!(
            "csrf={}&token={}",
            csrf,
            token.replace('%', "%25").replace('&', "%26").replace(' ', "+")
        ));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    finish("/ui/login", req.send().unwrap())
}

/// Sign in with `token`: the `rack_ui=<value>` pair to send back.
fn sign_in(server: &Server, token: &str) -> String {
    let (cookie, csrf) = login_form(server);
    let page = post_login(server, &cookie, &csrf, token, &[]);
    assert_eq!(page.status, 303, "{}", page.body);
    cookie_of(&page, "rack_ui").expect("session cookie").0
}

/// The sign-out form's CSRF field on a page of a signed-in viewer.
fn logout_field(body: &str) -> String {
    let form = body.find(r#"action="/ui/logout""#).expect("sign-out form");
    let marker = "name=\"csrf\" value=\"";
    let i = form + body[form..].find(marker).expect("CSRF field") + marker.len();
    body[i..].split('"').next().unwrap().to_owned()
}

fn post_logout(server: &Server, cookie: Option<&str>, csrf: &str) -> Page {
    let mut req = client()
        .post(server.url("/ui/logout"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"));
    if let Some(c) = cookie {
        req = req.header("Cookie", c);
    }
    finish("/ui/logout", req.send().unwrap())
}

fn write_registry(
    storage: &Path,
    ns: &str,
    name: &str,
    version: &str,
    manifest: &Value,
    files: &[(&str, &str)],
) {
    let dir = storage.join(ns).join(name);
    std::fs::create_dir_all(dir.join(version)).unwrap();
    std::fs::write(
        dir.join("versions.json"),
        json!({ "versions": [version] }).to_string(),
    )
    .unwrap();
    std::fs::write(dir.join(version).join("registry.json"), manifest.to_string()).unwrap();
    for (path, content) in files {
        let p = dir.join(version).join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}

fn set_auth(world: &World, f: impl FnOnce(&mut Value)) {
    let mut auth: Value = serde_json::from_str(&std::fs::read_to_string(world.auth_path()).unwrap()).unwrap();
    f(&mut auth);
    std::fs::write(world.auth_path(), serde_json::to_string_pretty(&auth).unwrap()).unwrap();
}

#[test]
fn pages_show_the_catalogue() {
    let (_world, server) = common::start();
    let home = get(&server, "/ui", None);
    assert_eq!(home.status, 200);
    assert!(
        home.body
            .contains(r#"<a href="/ui/@rack">@rack</a></td><td>10</td>"#),
        "{}",
        home.body
    );
    assert!(!home.body.contains("@company"), "gated namespace hidden");
    assert!(home.body.contains(r#"href="/ui/presets/node-library""#));
    assert!(home.body.contains(r#"href="/schemas/registry-item.json""#));
    // The stylesheet, at its hashed URL, cached forever.
    let i = home.body.find("/ui/assets/style.").unwrap();
    let css_path = home.body[i..].split('"').next().unwrap().to_owned();
    let css = client().get(server.url(&css_path)).send().unwrap();
    check_headers(&css_path, &css);
    assert_eq!(css.status(), 200);
    assert_eq!(
        css.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert!(css.text().unwrap().contains("prefers-color-scheme:dark"));
    assert_eq!(get(&server, "/ui/assets/style.0000.css", None).status, 404);

    let ns = get(&server, "/ui/@rack", None);
    assert_eq!(ns.status, 200);
    assert!(ns.body.contains(r#"href="/ui/@rack/quality/lint-staged""#));
    assert!(ns
        .body
        .contains("Lint-staged integration for Git pre-commit hooks"));
    assert!(ns.body.contains(r#"<span class="tag">git-hooks</span>"#));

    let reg = get(&server, "/ui/@rack/quality/lint-staged", None);
    assert_eq!(reg.status, 200);
    let b = &reg.body;
    assert!(b.contains("rk add @rack/quality/lint-staged</code>"), "{b}");
    assert!(b.contains("rk add @rack/quality/lint-staged@1.0.0</code>"));
    assert!(b.contains("registry:quality"));
    assert!(b.contains(r#"<a href="/ui/@rack/quality/husky">@rack/quality/husky</a>"#));
    assert!(b.contains("<code>lint-staged</code></td><td><code>^17.0.2</code>"));
    assert!(b.contains("<code>.husky/pre-commit</code>"));
    assert!(b.contains(r#"href="/ui/@rack/quality/lint-staged/1.0.0/files/templates/.husky/pre-commit""#));
    assert!(b.contains(r#"href="/ui/@rack/quality/lint-staged/1.0.0">1.0.0</a>"#));
    assert_eq!(
        get(&server, "/ui/@rack/quality/lint-staged/1.0.0", None).status,
        200
    );

    let file = get(
        &server,
        "/ui/@rack/quality/lint-staged/1.0.0/files/templates/.husky/pre-commit",
        None,
    );
    assert_eq!(file.status, 200);
    assert!(file.body.contains(r#"<td class="n">1</td>"#));
    assert!(file
        .body
        .contains(r#"href="/registries/@rack/quality/lint-staged/1.0.0/files/templates/.husky/pre-commit""#));

    let preset = get(&server, "/ui/presets/node-library", None);
    assert_eq!(preset.status, 200);
    assert!(
        preset
            .body
            .contains(r#"<a href="/ui/@rack/runtimes/node">runtimes/node</a>"#),
        "{}",
        preset.body
    );

    // Versions newest first, each linked (the API's order from versions.json).
    let auth = client()
        .get(server.url("/registries/@company/ui/button/versions"))
        .bearer_auth("company-read-token")
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap();
    let cookie = sign_in(&server, "company-read-token");
    let button = get(&server, "/ui/@company/ui/button", Some(&cookie));
    assert_eq!(button.status, 200);
    let positions: Vec<usize> = auth["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let link = format!(r#"href="/ui/@company/ui/button/{}""#, v.as_str().unwrap());
            button.body.find(&link).unwrap_or_else(|| panic!("{link}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");

    // Every page is one bounded metrics label, never its raw path.
    let metrics = client()
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains(r#"route="/ui/*""#), "{metrics}");
    assert!(!metrics.contains("lint-staged"), "raw paths leak into labels");
}

#[test]
fn error_pages_carry_the_api_codes() {
    let (_world, server) = common::start();
    for (path, status, code) in [
        ("/ui/@company", 401, "UNAUTHORIZED"),
        ("/ui/@company/core", 401, "UNAUTHORIZED"),
        ("/ui/@secret", 403, "FORBIDDEN_NAMESPACE"),
        ("/ui/@secret/tool", 403, "FORBIDDEN_NAMESPACE"),
        ("/ui/@rack/nope", 404, "NOT_FOUND"),
        ("/ui/@rack/quality/husky/9.9.9", 404, "NOT_FOUND"),
        ("/ui/@rack/quality/husky/1.0.0/files/nope.txt", 404, "NOT_FOUND"),
        ("/ui/presets/nope", 404, "NOT_FOUND"),
        ("/ui/presets/Bad_Name", 400, "INVALID_PRESET"),
        ("/ui/nope", 404, "NOT_FOUND"),
        ("/ui/@BAD", 400, "INVALID_NAMESPACE"),
        ("/ui/@rack/Bad", 400, "INVALID_PATH"),
        ("/ui/@anon/corrupt", 500, "INTERNAL_SERVER_ERROR"),
    ] {
        let page = get(&server, path, None);
        assert_eq!(page.status, status, "{path}: {}", page.body);
        assert!(
            page.body.contains(&format!("<code>{code}</code>")),
            "{path}: {}",
            page.body
        );
        assert!(page.body.starts_with("<!DOCTYPE html>"), "{path}");
    }
    // A wrong token in the API's header is judged as the API judges it.
    let res = client()
        .get(server.url("/ui/@company"))
        .bearer_auth("wrong")
        .send()
        .unwrap();
    let page = finish("/ui/@company", res);
    assert_eq!(page.status, 401);
    assert!(page.body.contains("<code>INVALID_TOKEN</code>"));
    // A method the pages do not take.
    let res = client().delete(server.url("/ui")).send().unwrap();
    assert_eq!(res.headers()["allow"], "GET, HEAD");
    assert_eq!(finish("/ui", res).status, 405);
}

#[test]
fn namespace_pages_paginate() {
    let world = World::new();
    set_auth(&world, |a| a["@many"] = json!([]));
    for i in 0..120 {
        let name = format!("r{i:03}");
        let m = json!({"name": name, "namespace": "@many", "version": "1.0.0", "type": "registry:lib", "priority": 0, "description": format!("number {i}")});
        write_registry(&world.storage(), "@many", &name, "1.0.0", &m, &[]);
    }
    let server = Server::world(&world);
    let rows = |b: &str| b.matches(r#"<a href="/ui/@many/r"#).count();
    let p1 = get(&server, "/ui/@many", None);
    assert_eq!(p1.status, 200);
    assert_eq!(rows(&p1.body), 50);
    assert!(p1.body.contains("r000") && p1.body.contains("r049") && !p1.body.contains("r050"));
    assert!(p1.body.contains("Page 1 of 3"));
    assert!(p1.body.contains(r#"href="/ui/@many?page=2""#));
    let p3 = get(&server, "/ui/@many?page=3", None);
    assert_eq!(rows(&p3.body), 20);
    assert!(p3.body.contains("r119") && !p3.body.contains("r099"));
    assert!(p3.body.contains(r#"href="/ui/@many?page=2""#) && !p3.body.contains("page=4"));
    // Past the end: an empty page, not an error.
    assert_eq!(rows(&get(&server, "/ui/@many?page=9", None).body), 0);
    let home = get(&server, "/ui", None);
    assert!(home
        .body
        .contains(r#"<a href="/ui/@many">@many</a></td><td>120</td>"#));
    assert!(!home.body.contains("Page 1 of"), "few namespaces: one page");
}

#[test]
fn home_paginates_namespaces() {
    let world = World::new();
    set_auth(&world, |a| {
        for i in 0..60 {
            a[format!("@ns{i:02}")] = json!([]);
        }
    });
    let m =
        json!({"name": "x", "namespace": "@ns00", "version": "1.0.0", "type": "registry:lib", "priority": 0});
    for i in 0..60 {
        write_registry(&world.storage(), &format!("@ns{i:02}"), "x", "1.0.0", &m, &[]);
    }
    let server = Server::world(&world);
    let rows = |b: &str| b.matches(r#"<a href="/ui/@ns"#).count();
    let p1 = get(&server, "/ui", None);
    // @anon and @noreg sort before @ns00 (and @rack after @ns59): 48 of the 50 rows.
    assert_eq!(rows(&p1.body), 48, "{}", p1.body);
    assert!(p1.body.contains("Page 1 of 2"));
    let p2 = get(&server, "/ui?page=2", None);
    assert_eq!(rows(&p2.body), 12);
    assert!(p2.body.contains(r#"href="/ui/@rack""#));
    assert!(p2
        .body
        .contains(r#"<a href="/ui/@ns59">@ns59</a></td><td>1</td>"#));
}

#[test]
fn search_matches_names_descriptions_and_tags_the_viewer_may_see() {
    let (_world, server) = common::start();
    let search = |q: &str, cookie: Option<&str>| get(&server, &format!("/ui/search?q={q}"), cookie);
    let by_name = search("husky", None);
    assert_eq!(by_name.status, 200);
    assert!(by_name.body.contains(r#"href="/ui/@rack/quality/husky""#));
    let by_tag = search("GIT-HOOKS", None);
    assert!(
        by_tag.body.contains(r#"href="/ui/@rack/quality/lint-staged""#),
        "{}",
        by_tag.body
    );
    let by_description = search("pre-commit+hooks", None);
    assert!(by_description
        .body
        .contains(r#"href="/ui/@rack/quality/lint-staged""#));
    assert!(search("zzz-nothing", None).body.contains("0 result(s)"));
    // A gated registry is found only by a viewer who may read it.
    assert!(search("company+core", None).body.contains("0 result(s)"));
    let cookie = sign_in(&server, "company-read-token");
    let found = search("company+core", Some(&cookie));
    assert!(
        found.body.contains(r#"href="/ui/@company/core""#),
        "{}",
        found.body
    );
}

#[test]
fn signing_in_shows_gated_namespaces_under_ui_only() {
    let world = World::new();
    let server = Server::start(world.path(), &world.env_with(&[("TRUST_PROXY", "true")]));
    let (csrf_cookie, csrf) = login_form(&server);
    // No or a wrong CSRF field: refused before the token is looked at.
    let page = post_login(&server, "", &csrf, "company-read-token", &[]);
    assert_eq!(page.status, 403);
    assert!(page.body.contains("CSRF_MISMATCH"));
    let page = post_login(&server, &csrf_cookie, "00", "company-read-token", &[]);
    assert_eq!(page.status, 403);
    // Wrong, expired and blank tokens: the form again, with the API's code.
    for (token, code) in [
        ("wrong", "INVALID_TOKEN"),
        ("company-expired-token", "INVALID_TOKEN"),
        ("", "UNAUTHORIZED"),
    ] {
        let page = post_login(&server, &csrf_cookie, &csrf, token, &[]);
        assert_eq!(page.status, 401, "{token}");
        assert!(page.body.contains(&format!("<code>{code}</code>")), "{token}");
        assert!(cookie_of(&page, "rack_ui").is_none());
    }
    let page = post_login(&server, &csrf_cookie, &csrf, "company-read-token", &[]);
    assert_eq!(page.status, 303);
    assert_eq!(page.location.as_deref(), Some("/ui"));
    let (cookie, header) = cookie_of(&page, "rack_ui").unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(header.contains(attr), "{header}");
    }
    assert!(!header.contains("Secure"), "plain HTTP: {header}");
    assert!(
        !cookie.contains("company-read-token"),
        "the cookie is not the token"
    );

    let home = get(&server, "/ui", Some(&cookie));
    assert!(home.body.contains(r#"href="/ui/@company""#), "{}", home.body);
    assert!(home.body.contains("Sign out"));
    assert_eq!(get(&server, "/ui/@company/core", Some(&cookie)).status, 200);
    // The API never honours the cookie.
    let api = client()
        .get(server.url("/registries/@company/core"))
        .header("Cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(api.status(), 401);
    let listed: Value = client()
        .get(server.url("/namespaces"))
        .header("Cookie", &cookie)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(!listed["namespaces"]
        .as_array()
        .unwrap()
        .contains(&json!("@company")));
    // A tampered cookie is no session (and is cleared).
    let forged = get(&server, "/ui/@company", Some(&format!("{cookie}0")));
    assert_eq!(forged.status, 401);
    assert!(cookie_of(&forged, "rack_ui").unwrap().1.contains("Max-Age=0"));

    let out = post_logout(&server, Some(&cookie), &logout_field(&home.body));
    assert_eq!(out.status, 303);
    assert!(cookie_of(&out, "rack_ui").unwrap().1.contains("Max-Age=0"));

    // Behind a trusted proxy that saw HTTPS, the cookie is Secure; the admin token signs in.
    let (csrf_cookie, csrf) = login_form(&server);
    let page = post_login(
        &server,
        &csrf_cookie,
        &csrf,
        ADMIN_TOKEN,
        &[("X-Forwarded-Proto", "https")],
    );
    assert_eq!(page.status, 303);
    let (admin, header) = cookie_of(&page, "rack_ui").unwrap();
    assert!(header.contains("; Secure"), "{header}");
    assert!(get(&server, "/ui", Some(&admin))
        .body
        .contains(r#"href="/ui/@company""#));
}

#[test]
fn a_session_dies_when_its_token_leaves_auth_json() {
    let world = World::new();
    set_auth(&world, |a| {
        a["@company"] = json!([{"token": "short-lived"}, {"token": "stays"}])
    });
    let server = Server::world(&world);
    let cookie = sign_in(&server, "short-lived");
    assert_eq!(get(&server, "/ui/@company", Some(&cookie)).status, 200);
    set_auth(&world, |a| a["@company"] = json!([{"token": "stays"}]));
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        let page = get(&server, "/ui/@company", Some(&cookie));
        if page.status != 200 || Instant::now() > deadline {
            break page;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(page.status, 401, "the session outlived its token");
    assert!(page.body.contains("<code>UNAUTHORIZED</code>"));
    assert!(cookie_of(&page, "rack_ui").unwrap().1.contains("Max-Age=0"));
    assert!(!get(&server, "/ui", Some(&cookie)).body.contains("@company"));
}

#[test]
fn stored_content_is_shown_inertly() {
    let world = World::new();
    let manifest = json!({
        "name": "evil", "namespace": "@anon", "version": "1.0.0", "type": "registry:lib", "priority": 0,
        "description": "<script>alert('description')</script>",
        "tags": ["\"><img src=x onerror=alert(1)>", "<script>tag</script>"],
        "author": "<b>bold</b>",
        "homepage": "javascript:alert(1)",
        "files": [
            {"target": "\"><img src=x onerror=alert(2)>.js", "type": "registry:lib", "path": "page.html"},
            {"target": "logo.svg", "type": "registry:asset", "path": "logo.svg"}
        ]
    });
    let svg = r#"<svg xmlns="http://www.w3.org/2000/svg" onload="alert(3)"><script>alert(4)</script></svg>"#;
    let html = "<html><script>alert(5)</script><img src=x onerror=alert(6)></html>";
    write_registry(
        &world.storage(),
        "@anon",
        "evil",
        "1.0.0",
        &manifest,
        &[("page.html", html), ("logo.svg", svg)],
    );
    let server = Server::world(&world);
    let inert = |page: &Page, path: &str| {
        assert_eq!(page.status, 200, "{path}");
        let b = &page.body;
        assert!(!b.contains("<script"), "{path}: raw script: {b}");
        assert!(!b.contains("<img"), "{path}: raw img: {b}");
        assert!(!b.contains("<svg"), "{path}: raw svg: {b}");
        assert!(!b.contains("<b>"), "{path}");
        assert!(!b.contains("href=\"javascript:"), "{path}");
    };
    let reg = get(&server, "/ui/@anon/evil", None);
    inert(&reg, "registry");
    assert!(
        reg.body
            .contains("&lt;script&gt;alert('description')&lt;/script&gt;"),
        "{}",
        reg.body
    );
    assert!(reg.body.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"));
    assert!(reg
        .body
        .contains("&quot;&gt;&lt;img src=x onerror=alert(2)&gt;.js"));
    assert!(reg.body.contains("javascript:alert(1)"), "shown as text");
    let ns = get(&server, "/ui/@anon", None);
    inert(&ns, "namespace");
    assert!(ns.body.contains("&lt;script&gt;tag&lt;/script&gt;"));
    inert(&get(&server, "/ui/search?q=alert", None), "search");
    let search = get(&server, "/ui/search?q=%3Cscript%3E", None);
    inert(&search, "search query");
    assert!(search.body.contains("value=\"&lt;script&gt;\""));
    let page_html = get(&server, "/ui/@anon/evil/1.0.0/files/page.html", None);
    inert(&page_html, "html file");
    assert!(page_html
        .body
        .contains("&lt;html&gt;&lt;script&gt;alert(5)&lt;/script&gt;"));
    let page_svg = get(&server, "/ui/@anon/evil/1.0.0/files/logo.svg", None);
    inert(&page_svg, "svg file");
    assert!(page_svg
        .body
        .contains("&lt;svg xmlns=&quot;http://www.w3.org/2000/svg&quot; onload=&quot;alert(3)&quot;&gt;"));
}

#[test]
fn root_redirects_browsers_and_ui_false_turns_pages_off() {
    let (world, server) = common::start();
    let res = client()
        .get(server.url("/"))
        .header("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/ui");
    for accept in [None, Some("application/json"), Some("*/*")] {
        let mut req = client().get(server.url("/"));
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        let res = req.send().unwrap();
        assert_eq!(res.status(), 404, "{accept:?}");
        let body: Value = res.json().unwrap();
        assert_eq!(body["code"], "NOT_FOUND");
    }
    drop(server);

    let off = Server::start(world.path(), &world.env_with(&[("UI", "false")]));
    for path in ["/ui", "/ui/@rack", "/ui/login", "/"] {
        let res = client()
            .get(off.url(path))
            .header("Accept", "text/html")
            .send()
            .unwrap();
        assert_eq!(res.status(), 404, "{path}");
        assert_eq!(res.headers()["content-type"], "application/json");
        let body: Value = res.json().unwrap();
        assert_eq!(body["code"], "NOT_FOUND", "{path}");
        assert_eq!(body["message"], "Route not found");
    }
}

/// Regression: `GET /ui/logout` signed the viewer out, so any site could do it with a link or an
/// `<img>`. Now a GET only shows the button, and the POST needs the session's CSRF field.
#[test]
fn signing_out_takes_a_post_with_the_session_csrf_field() {
    let world = World::new();
    let server = Server::world(&world);
    let cookie = sign_in(&server, "company-read-token");
    let home = get(&server, "/ui", Some(&cookie));
    assert!(!home.body.contains(r#"href="/ui/logout""#), "no sign-out link");
    let field = logout_field(&home.body);

    // A cross-site GET (a link, an image): no cookie is cleared, the page offers the button.
    let page = get(&server, "/ui/logout", Some(&cookie));
    assert_eq!(page.status, 200);
    assert!(cookie_of(&page, "rack_ui").is_none(), "{:?}", page.set_cookies);
    assert_eq!(logout_field(&page.body), field);
    assert_eq!(
        get(&server, "/ui/@company", Some(&cookie)).status,
        200,
        "still signed in"
    );
    // Without a session, GET goes back to the catalogue.
    let page = get(&server, "/ui/logout", None);
    assert_eq!((page.status, page.location.as_deref()), (303, Some("/ui")));

    // A forged POST: a missing or wrong field is refused; one without the (SameSite=Strict)
    // cookie, as a cross-site POST arrives, clears nothing.
    for csrf in ["", "00", &"0".repeat(64)] {
        let page = post_logout(&server, Some(&cookie), csrf);
        assert_eq!(page.status, 403, "{csrf}");
        assert!(page.body.contains("CSRF_MISMATCH"));
        assert!(cookie_of(&page, "rack_ui").is_none());
    }
    let page = post_logout(&server, None, &field);
    assert_eq!(page.status, 303);
    assert!(cookie_of(&page, "rack_ui").is_none(), "{:?}", page.set_cookies);
    // Another session's field does not fit this one.
    let other = sign_in(&server, ADMIN_TOKEN);
    let other_field = logout_field(&get(&server, "/ui", Some(&other)).body);
    assert_ne!(other_field, field);
    assert_eq!(post_logout(&server, Some(&cookie), &other_field).status, 403);

    let page = post_logout(&server, Some(&cookie), &field);
    assert_eq!((page.status, page.location.as_deref()), (303, Some("/ui")));
    assert!(cookie_of(&page, "rack_ui").unwrap().1.contains("Max-Age=0"));
    // Issue 25: a copy of the cookie kept working for 12 h after sign-out.
    let page = get(&server, "/ui/@company", Some(&cookie));
    assert_eq!(page.status, 401, "the session outlived its sign-out");
    assert_eq!(get(&server, "/ui/@company", Some(&other)).status, 200);
}

/// Issue 25 item 6: signing out ends the session on every replica (two server processes on one
/// storage), and a session signed in on one replica holds on the other. On the old code the
/// cookie kept working after sign-out, and the other replica (its own random key) refused it.
#[test]
fn sessions_hold_across_replicas_and_sign_out_ends_them_everywhere() {
    let world = World::new();
    // Replica B re-checks the storage after 1 s (the default is 10, docs/security.md).
    let a = Server::world(&world);
    let b = Server::start(
        world.path(),
        &world.env_with(&[("UI_SESSION_REVALIDATE_SECONDS", "1")]),
    );
    let cookie = sign_in(&a, "company-read-token");
    for s in [&a, &b] {
        let page = get(s, "/ui/@company", Some(&cookie));
        assert_eq!(page.status, 200, "minted on A, honoured on {}", s.base);
    }
    // A replica that starts later shares the key too.
    let c = Server::world(&world);
    assert_eq!(get(&c, "/ui/@company", Some(&cookie)).status, 200);
    let from_b = sign_in(&b, ADMIN_TOKEN);
    assert_eq!(get(&a, "/ui/@company", Some(&from_b)).status, 200, "minted on B");

    let field = logout_field(&get(&a, "/ui", Some(&cookie)).body);
    let out = post_logout(&a, Some(&cookie), &field);
    assert_eq!(out.status, 303);
    // The replica that signed out refuses the cookie at once, and clears it.
    let page = get(&a, "/ui/@company", Some(&cookie));
    assert_eq!(page.status, 401, "the cookie outlived its sign-out");
    assert!(cookie_of(&page, "rack_ui").unwrap().1.contains("Max-Age=0"));
    // A replica that has not seen the session refuses it at once too.
    let d = Server::world(&world);
    assert_eq!(get(&d, "/ui/@company", Some(&cookie)).status, 401);
    drop(c);
    // One that had just seen it refuses it within its revalidation interval.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = get(&b, "/ui/@company", Some(&cookie)).status;
        if status == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica B still honours a signed-out session"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The other session is untouched; signing in again gives a new, working session.
    assert_eq!(get(&b, "/ui/@company", Some(&from_b)).status, 200);
    let again = sign_in(&a, "company-read-token");
    assert_ne!(again, cookie);
    assert_eq!(get(&b, "/ui/@company", Some(&again)).status, 200);
}

/// With `UI_SESSION_KEY`, replicas share the key through configuration (here with storages of
/// their own); a different key opens nothing.
#[test]
fn ui_session_key_is_shared_through_configuration() {
    let key = "a shared secret of at least thirty-two characters";
    let (_w1, a) = start_with(&[("UI_SESSION_KEY", key)]);
    let (_w2, b) = start_with(&[("UI_SESSION_KEY", key)]);
    let (_w3, other) = start_with(&[("UI_SESSION_KEY", "another secret of at least thirty-two chars")]);
    let cookie = sign_in(&a, "company-read-token");
    assert_eq!(get(&b, "/ui/@company", Some(&cookie)).status, 200);
    assert_eq!(get(&other, "/ui/@company", Some(&cookie)).status, 401);
}

/// The cookie holds nothing computed from the token without the server's key: not its SHA-256
/// (which the old cookie began with, allowing offline guessing of a human-chosen token).
#[test]
fn the_cookie_holds_no_plain_hash_of_the_token() {
    let (_world, server) = start();
    for token in ["company-read-token", ADMIN_TOKEN] {
        let cookie = sign_in(&server, token);
        let lower = cookie.to_ascii_lowercase();
        let hash = sha256_hex(token);
        assert!(!lower.contains(&hash), "{cookie}");
        assert!(!lower.contains(&hash[..16]), "{cookie}");
        assert!(!cookie.contains(token));
    }
}

/// 300 wrong tokens from one client: after `UI_LOGIN_ATTEMPTS` (10) failures a minute the form
/// answers 429 with `Retry-After` and a page saying so; the audit trail gets a bounded number of
/// lines about it, none holding a token. Other clients are not affected. (The old code let all
/// 300 through in 0.09 s and wrote no audit line.)
#[test]
fn wrong_tokens_are_throttled_per_client_and_audited_in_bounded_lines() {
    let world = World::new();
    let audit = world.path().join("audit.log");
    let server = Server::start(
        world.path(),
        &world.env_with(&[
            ("TRUST_PROXY", "true"),
            ("AUDIT_LOG_PATH", audit.to_str().unwrap()),
        ]),
    );
    let (cookie, csrf) = login_form(&server);
    let attacker = [("X-Forwarded-For", "203.0.113.7")];
    let mut statuses = std::collections::BTreeMap::new();
    let mut throttled = None;
    for i in 0..300 {
        let page = post_login(&server, &cookie, &csrf, &format!("guess-{i:04}"), &attacker);
        *statuses.entry(page.status).or_insert(0) += 1;
        if page.status == 429 && throttled.is_none() {
            throttled = Some(page);
        }
    }
    assert_eq!(statuses.get(&401), Some(&10), "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&290), "{statuses:?}");
    let page = throttled.unwrap();
    assert!(page.body.contains("Too many failed sign-ins"), "{}", page.body);
    let retry = client()
        .post(server.url("/ui/login"))
        .header("Cookie", &cookie)
        .header("X-Forwarded-For", "203.0.113.7")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&token=company-read-token"))
        .send()
        .unwrap();
    assert_eq!(retry.status(), 429, "the right token waits too");
    let after: u64 = retry.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&after), "{after}");
    // Another client signs in.
    let page = post_login(
        &server,
        &cookie,
        &csrf,
        "company-read-token",
        &[("X-Forwarded-For", "198.51.100.9")],
    );
    assert_eq!(page.status, 303);

    let text = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &Value| l["event"].as_str().is_some_and(|e| e.starts_with("ui_login")))
        .collect();
    assert!(!lines.is_empty() && lines.len() <= 2, "{text}");
    assert!(lines.iter().all(|l| l["client"] == "203.0.113.7"), "{text}");
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "ui_login_throttled", "{text}");
    assert_eq!(last["failures"], 10);
    assert!(!text.contains("guess-"), "no token in the audit trail");
    assert!(!text.contains("company-read-token"));
}

/// The version lifecycle on the pages (SPEC §15, §18), from `lifecycle.json` and a
/// `versions.json` that lists neither yanked nor deleted versions, written here as the server
/// writes them: yanked versions struck through with their reason, in SemVer order; the
/// deprecation notice linking the successor; a deleted version nowhere (lists, search, its own
/// pages 410); the `rack-registry` commands for a viewer who may publish, and only for them.
#[test]
fn lifecycle_shows_yanked_versions_struck_through_the_deprecation_and_never_a_deleted_one() {
    let world = World::new();
    let dir = world.storage().join("@company/sunset");
    for v in ["2.0.0", "1.5.0", "1.0.0"] {
        let m = json!({
            "name": "sunset", "namespace": "@company", "version": v, "type": "registry:lib",
            "description": "lifecycle page test", "files": [{"path": "./templates/a.txt", "target": "a.txt", "type": "registry:lib"}],
        });
        std::fs::create_dir_all(dir.join(v).join("templates")).unwrap();
        std::fs::write(dir.join(v).join("registry.json"), m.to_string()).unwrap();
        std::fs::write(dir.join(v).join("templates/a.txt"), v).unwrap();
    }
    // 3.0.0 was deleted (its files are gone), 2.0.0 yanked: versions.json lists neither.
    std::fs::write(
        dir.join("versions.json"),
        "{\"versions\": [\"1.5.0\", \"1.0.0\"]}\n",
    )
    .unwrap();
    let lifecycle = json!({
        "yanked": {"2.0.0": {"reason": "broke <b>everything</b>", "at": "2026-12-07T09:00:00Z", "by": "CI publish"}},
        "deprecated": {"message": "Use core instead", "successor": "@company/core", "at": "2026-12-07T10:00:00Z", "by": "admin"},
        "deleted": {"3.0.0": {"at": "2026-12-07T08:00:00Z", "by": "admin"}},
    });
    std::fs::write(dir.join("lifecycle.json"), lifecycle.to_string()).unwrap();
    let server = Server::start(world.path(), &world.env());

    let reader = sign_in(&server, "company-read-token");
    let latest = get(&server, "/ui/@company/sunset", Some(&reader));
    assert_eq!(latest.status, 200, "{}", latest.body);
    let body = &latest.body;
    assert!(
        body.contains("<h1>@company/sunset <code>1.5.0</code></h1>"),
        "{body}"
    );
    assert!(
        body.contains(r#"<del><a href="/ui/@company/sunset/2.0.0">2.0.0</a></del>"#),
        "yanked: struck through\n{body}"
    );
    assert!(
        body.contains("yanked: broke &lt;b&gt;everything&lt;/b&gt;"),
        "reason shown, escaped\n{body}"
    );
    let at = |v: &str| {
        body.find(&format!(r#"href="/ui/@company/sunset/{v}""#))
            .unwrap_or_else(|| panic!("{v} listed\n{body}"))
    };
    assert!(
        at("2.0.0") < at("1.5.0") && at("1.5.0") < at("1.0.0"),
        "SemVer order"
    );
    assert!(
        !body.contains("3.0.0"),
        "a deleted version is never shown\n{body}"
    );
    assert!(body.contains("Deprecated: </strong>Use core instead"), "{body}");
    assert!(
        body.contains(r#"<a href="/ui/@company/core">@company/core</a>"#),
        "successor linked\n{body}"
    );
    assert!(
        !body.contains("Yank or deprecate"),
        "a reader sees no yank command\n{body}"
    );
    assert!(!body.contains("<script"), "no script added\n{body}");

    let yanked = get(&server, "/ui/@company/sunset/2.0.0", Some(&reader));
    assert_eq!(yanked.status, 200, "{}", yanked.body);
    assert!(
        yanked
            .body
            .contains("This version was yanked: </strong>broke &lt;b&gt;everything&lt;/b&gt;"),
        "{}",
        yanked.body
    );
    assert!(!get(&server, "/ui/@company/sunset/1.0.0", Some(&reader))
        .body
        .contains("This version was yanked"));

    for path in [
        "/ui/@company/sunset/3.0.0",
        "/ui/@company/sunset/3.0.0/files/templates/a.txt",
    ] {
        let gone = get(&server, path, Some(&reader));
        assert_eq!(gone.status, 410, "{path}: {}", gone.body);
        assert!(gone.body.contains("VERSION_DELETED"), "{}", gone.body);
    }
    let ns = get(&server, "/ui/@company", Some(&reader));
    assert!(
        ns.body.contains(r#"href="/ui/@company/sunset""#) && !ns.body.contains("3.0.0"),
        "{}",
        ns.body
    );
    let found = get(&server, "/ui/search?q=lifecycle+page", Some(&reader));
    assert!(found.body.contains("<code>1.5.0</code>"), "{}", found.body);
    assert!(
        !found.body.contains("3.0.0") && !found.body.contains("2.0.0"),
        "{}",
        found.body
    );

    // A session whose token may publish in @company sees how to yank and deprecate.
    let publisher = sign_in(&server, "company-publish-token");
    let page = get(&server, "/ui/@company/sunset/1.5.0", Some(&publisher));
    assert!(
        page.body
            .contains("rack-registry yank @company/sunset@1.5.0 --reason &quot;...&quot;"),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains("rack-registry deprecate @company/sunset --undo"),
        "{}",
        page.body
    );
    let page = get(&server, "/ui/@company/sunset/2.0.0", Some(&publisher));
    assert!(
        page.body
            .contains("rack-registry yank @company/sunset@2.0.0 --undo"),
        "{}",
        page.body
    );
    let section = &page.body[page.body.find("<h2>Yank or deprecate</h2>").unwrap()..];
    let section = &section[..section.find("</main>").unwrap()];
    assert!(
        !section.contains("<button") && !section.contains("<form"),
        "a command, not a button\n{section}"
    );
    // Admin may publish everywhere declared; a reader of another namespace's page sees nothing.
    let admin = sign_in(&server, ADMIN_TOKEN);
    let page = get(&server, "/ui/@anon/patched/1.1.0", Some(&admin));
    assert!(
        page.body
            .contains("rack-registry deprecate @anon/patched --message &quot;...&quot;"),
        "{}",
        page.body
    );
    let page = get(&server, "/ui/@anon/patched/1.1.0", Some(&publisher));
    assert!(
        !page.body.contains("Yank or deprecate"),
        "publish token of @company in @anon\n{}",
        page.body
    );
    assert!(
        page.body
            .contains(r#"<del><a href="/ui/@anon/patched/1.0.0">1.0.0</a></del>"#),
        "{}",
        page.body
    );
}
