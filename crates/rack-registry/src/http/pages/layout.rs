//! The shell every page shares (header, sign-in link, footer), the error page, and the one
//! stylesheet, served by the binary at a content-hashed URL so it can be cached forever.
//! No inline style or script anywhere: the Content-Security-Policy allows neither.

use std::sync::OnceLock;

use maud::{html, Markup, DOCTYPE};
use sha2::{Digest, Sha256};

/// The hand-written stylesheet (light and dark through `prefers-color-scheme`; one column
/// below 600 px, so a 360 px phone needs no horizontal scrolling).
pub const STYLE: &str = r#":root{--bg:#fff;--fg:#1b1f24;--muted:#59636e;--line:#d1d9e0;--accent:#0b5cad;--code:#f3f5f7}
@media (prefers-color-scheme:dark){:root{--bg:#0f1216;--fg:#e6e9ed;--muted:#9aa4af;--line:#2e363f;--accent:#6cb0ff;--code:#1a1f26}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif}
a{color:var(--accent)}
header,main,footer{max-width:960px;margin:0 auto;padding:.75rem 1rem}
header{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:center;border-bottom:1px solid var(--line)}
header .brand{font-weight:700;text-decoration:none;color:var(--fg)}
header form{flex:1 1 12rem;display:flex;gap:.25rem}
header form.signout{flex:0 0 auto}
header input[type=search]{flex:1;min-width:0}
input,button{font:inherit;padding:.3rem .5rem;border:1px solid var(--line);border-radius:4px;background:var(--bg);color:var(--fg)}
footer{color:var(--muted);font-size:.85rem;border-top:1px solid var(--line)}
h1{font-size:1.5rem;word-break:break-word}
.muted{color:var(--muted)}
.tag{display:inline-block;border:1px solid var(--line);border-radius:999px;padding:0 .5rem;margin:0 .25rem .25rem 0;font-size:.85rem}
table{border-collapse:collapse;width:100%}
td,th{text-align:left;vertical-align:top;padding:.35rem .5rem;border-bottom:1px solid var(--line)}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:var(--code);border-radius:4px}
code{padding:0 .25rem;word-break:break-all}
pre{padding:.5rem;overflow-x:auto}
.lines{border-collapse:collapse;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem;background:var(--code)}
.lines td{border:0;padding:0 .5rem;white-space:pre}
.lines td.n{color:var(--muted);text-align:right;user-select:none}
.error{border-left:4px solid #c62828;padding-left:1rem}
.notice{border-left:4px solid #b26a00;padding-left:1rem}
.pager{display:flex;gap:1rem}
@media (max-width:600px){table.list thead{display:none}table.list td{display:block;border:0;padding:.1rem 0}table.list tr{display:block;border-bottom:1px solid var(--line);padding:.4rem 0}}
"#;

/// `/ui/assets/style.<hash>.css`: the hash is of the stylesheet itself, so a new build gets a
/// new URL and the old one may be cached as immutable.
pub fn style_path() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let hash = hex::encode(&Sha256::digest(STYLE.as_bytes())[..6]);
        format!("/ui/assets/style.{hash}.css")
    })
}

/// What the shell needs to know about the viewer.
#[derive(Clone, Copy, Default)]
pub struct Shell {
    /// Signed in with a session: the sign-out form's CSRF field
    /// ([`super::session::Keys::logout_token`]).
    pub logout_csrf: Option<[u8; 32]>,
}

impl Shell {
    pub fn signed_in(&self) -> bool {
        self.logout_csrf.is_some()
    }
}

/// The sign-out button: a POST with the CSRF field, never a link (a cross-site GET must not
/// sign anyone out).
pub fn sign_out_form(csrf: &[u8; 32]) -> Markup {
    html! {
        form.signout method="post" action="/ui/logout" {
            input type="hidden" name="csrf" value=(hex::encode(csrf));
            button type="submit" { "Sign out" }
        }
    }
}

/// A whole page: `title` goes into `<title>` and `body` into `<main>`.
pub fn page(shell: Shell, title: &str, query: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Rack registry" }
                link rel="stylesheet" href=(style_path());
            }
            body {
                header {
                    a.brand href="/ui" { "Rack registry" }
                    form action="/ui/search" method="get" role="search" {
                        input type="search" name="q" value=(query) placeholder="Search registries" aria-label="Search registries";
                        button type="submit" { "Search" }
                    }
                    @if let Some(csrf) = &shell.logout_csrf {
                        (sign_out_form(csrf))
                    } @else {
                        a href="/ui/login" { "Sign in" }
                    }
                }
                main { (body) }
                footer { "Served by rack-registry · " a href="/namespaces" { "JSON API" } }
            }
        }
    }
}

/// The page of an error: the API's status, code and message.
pub fn error_page(shell: Shell, status: u16, code: &str, message: &str) -> Markup {
    page(
        shell,
        &format!("{status} {code}"),
        "",
        html! {
            div.error {
                h1 { "Error " (status) }
                p { code { (code) } }
                p { (message) }
            }
            @if matches!(status, 401 | 403) && !shell.signed_in() {
                p { a href="/ui/login" { "Sign in with a token" } " to see gated namespaces." }
            }
            p { a href="/ui" { "Back to the catalogue" } }
        },
    )
}
