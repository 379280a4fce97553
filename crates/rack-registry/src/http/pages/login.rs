//! `/ui/login` (a form, then its POST) and `/ui/logout` (a POST carrying the session's CSRF
//! field; a GET only shows the button, so a cross-site link cannot sign anyone out). A token is
//! accepted when the current policy lets it read at least one declared namespace, or it is the
//! admin token ([`rack_core::auth::Ctx::opens_any`]); the browser then holds a signed session
//! (see [`super::session`]), never the token.

use axum::body::Body;
use http::{HeaderMap, StatusCode};
use maud::html;
use rack_core::auth::{digest, Credential, Ctx};
use rack_core::ApiError;
use serde_json::json;

use super::layout::{error_page, page as shell_page, sign_out_form};
use super::session::{self, CSRF_COOKIE, SESSION_COOKIE, SESSION_SECS};
use super::{append_cookie, redirect, Out, PageResult, Req};

/// A login form body is a token and a CSRF field: anything longer is refused.
const MAX_FORM_BYTES: usize = 8 * 1024;

/// The form, with a CSRF field bound to the nonce cookie (kept if the browser has one, so two
/// open tabs both work). `error`: why the last attempt failed (the page is then a 401).
pub async fn form(req: &Req<'_>, headers: &HeaderMap, secure: bool, error: Option<ApiError>) -> PageResult {
    let nonce = session::cookie(headers, CSRF_COOKIE)
        .filter(|n| n.len() == 32 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .unwrap_or_else(session::nonce);
    let csrf = req.ui.keys().await.csrf_token(&nonce);
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let markup = shell_page(
        req.shell,
        "Sign in",
        "",
        html! {
            h1 { "Sign in" }
            @if let Some(e) = &error {
                div.error { p { code { (e.code()) } } p { (e.message) } }
            }
            p { "Paste a registry token. The browser keeps a signed session for 12 hours, not the token." }
            form method="post" action="/ui/login" {
                input type="hidden" name="csrf" value=(csrf);
                p {
                    label for="token" { "Token" } " "
                    input #token type="password" name="token" autocomplete="off" required;
                }
                p { button type="submit" { "Sign in" } }
            }
        },
    );
    let mut res = super::html(status, markup);
    append_cookie(&mut res, &session::set_cookie(CSRF_COOKIE, &nonce, 3600, secure));
    Ok(Out::Raw(res))
}

/// A form body: at most [`MAX_FORM_BYTES`] (else 413), within its deadline (else 408; see
/// `http::body`).
async fn read_form(body: Body) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|e| match crate::timed_body::timeout_of(&e) {
            Some(t) => ApiError::body_timeout(t.after.as_secs()),
            None => ApiError::payload_too_large(MAX_FORM_BYTES as u64),
        })
}

/// A client over its failed sign-ins: 429 with `Retry-After` and a page saying when to retry.
fn throttled(req: &Req<'_>, retry_after: u64) -> PageResult {
    let e = ApiError::rate_limited(retry_after);
    let page = error_page(
        req.shell,
        429,
        e.code(),
        &format!("Too many failed sign-ins from your address; try again in {retry_after} s"),
    );
    let mut res = super::html(StatusCode::TOO_MANY_REQUESTS, page);
    res.headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from(retry_after));
    Ok(Out::Raw(res))
}

/// Audit lines about failed sign-ins per minute, all clients together: a flood from many
/// addresses (or forged `X-Forwarded-For` under `TRUST_PROXY=true`) cannot write without bound.
pub const AUDIT_LINES_PER_MINUTE: u64 = 100;

/// The global budget of [`AUDIT_LINES_PER_MINUTE`]: `(minute, lines written, lines left out)`.
#[derive(Default)]
pub struct LoginAudit {
    window: std::sync::Mutex<(i64, u64, u64)>,
}

impl LoginAudit {
    /// Whether a line may be written in `minute`, and the lines left out of the minute this
    /// call ends (when some were).
    fn admit(&self, minute: i64) -> (bool, Option<u64>) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let mut ended = None;
        if w.0 != minute {
            ended = (w.2 > 0).then_some(w.2);
            *w = (minute, 0, 0);
        }
        if w.1 < AUDIT_LINES_PER_MINUTE {
            w.1 += 1;
            (true, ended)
        } else {
            w.2 += 1;
            (false, ended)
        }
    }
}

fn audit(req: &Req<'_>, event: &str, fields: &[(&str, serde_json::Value)]) {
    let (write, left_out) = req.ui.login_audit.admit(req.ctx.now_ms.div_euclid(60_000));
    if let Some(n) = left_out {
        req.state
            .audit
            .record("ui_login_audit_suppressed", &[("lines", json!(n))]);
    }
    if write {
        req.state.audit.record(event, fields);
    }
}

/// Count a failed sign-in from the client. The audit trail gets the client's first failure of
/// each minute and the moment it is throttled: at most two lines per client and minute,
/// whatever the number of attempts, at most [`AUDIT_LINES_PER_MINUTE`] in all (then one line
/// saying how many were left out), and never the token (see docs/security.md).
fn failed(req: &Req<'_>) {
    let limiter = &req.ui.login_failures;
    let client = json!(req.client.to_string());
    let d = limiter.check(req.client, std::time::Instant::now());
    let failures = d.limit - d.remaining;
    if failures == 1 {
        audit(
            req,
            "ui_login_failure",
            &[("client", client.clone()), ("failures", json!(1))],
        );
    }
    // `allowed` with none left: this failure reached the limit (concurrent ones past it, which
    // `exhausted` did not stop in time, write nothing).
    if d.remaining == 0 && d.allowed {
        audit(
            req,
            "ui_login_throttled",
            &[
                ("client", client),
                ("failures", json!(failures)),
                ("retry_after", json!(d.reset_secs)),
            ],
        );
    }
}

pub async fn submit(req: &Req<'_>, headers: &HeaderMap, body: Body, secure: bool) -> PageResult {
    if let Some(retry_after) = req
        .ui
        .login_failures
        .exhausted(req.client, std::time::Instant::now())
    {
        crate::upload::receive::drain(body);
        return throttled(req, retry_after);
    }
    let bytes = read_form(body).await?;
    let mut token = None;
    let mut csrf = None;
    for (k, v) in form_urlencoded::parse(&bytes) {
        match &*k {
            "token" => token = Some(v.into_owned()),
            "csrf" => csrf = Some(v.into_owned()),
            _ => {}
        }
    }
    let nonce = session::cookie(headers, CSRF_COOKIE).unwrap_or("");
    if !req.ui.keys().await.csrf_ok(nonce, csrf.as_deref().unwrap_or("")) {
        // Not an API error: only the web form has this check.
        let page = error_page(
            req.shell,
            403,
            "CSRF_MISMATCH",
            "The sign-in form expired or came from another site; reload it and try again",
        );
        return Ok(Out::Page(StatusCode::FORBIDDEN, page));
    }
    let token = token.as_deref().map(str::trim).unwrap_or("");
    if token.is_empty() {
        return form(req, headers, secure, Some(ApiError::unauthorized_read())).await;
    }
    let cred = Credential::new(token);
    let ctx = Ctx {
        credential: Some(&cred),
        ..req.ctx
    };
    if !ctx.opens_any() {
        failed(req);
        return form(req, headers, secure, Some(ApiError::invalid_token())).await;
    }
    let now_s = req.ctx.now_ms / 1000;
    let value = req
        .ui
        .keys()
        .await
        .session_value(&digest(token), now_s, now_s + SESSION_SECS);
    let mut res = redirect("/ui");
    append_cookie(
        &mut res,
        &session::set_cookie(SESSION_COOKIE, &value, SESSION_SECS, secure),
    );
    append_cookie(&mut res, &session::set_cookie(CSRF_COOKIE, "", 0, secure));
    Ok(Out::Raw(res))
}

/// `GET /ui/logout`: the sign-out button on its own page (signing out takes a POST); a viewer
/// without a session goes back to the catalogue.
pub fn logout_form(req: &Req<'_>) -> PageResult {
    let Some(csrf) = &req.shell.logout_csrf else {
        return Ok(Out::Raw(redirect("/ui")));
    };
    super::ok(shell_page(
        req.shell,
        "Sign out",
        "",
        html! {
            h1 { "Sign out" }
            p { "End this browser's session? The token itself stays valid." }
            (sign_out_form(csrf))
        },
    ))
}

/// `POST /ui/logout`: clears the session cookie when the form's CSRF field matches it, then
/// returns to the catalogue. Without a session cookie there is nothing to clear (and clearing
/// would let a cross-site POST, which carries no `SameSite=Strict` cookie, sign a viewer out).
pub async fn logout(req: &Req<'_>, headers: &HeaderMap, body: Body, secure: bool) -> PageResult {
    let bytes = read_form(body).await?;
    let Some(session) = session::cookie(headers, SESSION_COOKIE) else {
        return Ok(Out::Raw(redirect("/ui")));
    };
    let csrf = form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if !req.ui.keys().await.logout_ok(session, &csrf) {
        let page = error_page(
            req.shell,
            403,
            "CSRF_MISMATCH",
            "The sign-out form expired or came from another site; reload the page and try again",
        );
        return Ok(Out::Page(StatusCode::FORBIDDEN, page));
    }
    // Ended everywhere: this replica forgets the session now, the others within
    // `UI_SESSION_REVALIDATE_SECONDS` ([`super::revoke`]).
    if let Some(s) = req.ui.keys().await.open_session(session, req.ctx.now_ms) {
        let now_s = req.ctx.now_ms / 1000;
        if let Err(e) = req.ui.revocations.revoke(&s.id, s.expires_s, now_s).await {
            tracing::error!(error = %e, "cannot record a sign-out in the storage: other replicas still honour the session");
        }
    }
    let mut res = redirect("/ui");
    append_cookie(&mut res, &session::set_cookie(SESSION_COOKIE, "", 0, secure));
    Ok(Out::Raw(res))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_lines_are_bounded_per_minute_across_clients() {
        let a = LoginAudit::default();
        let written = (0..1000).filter(|_| a.admit(7).0).count() as u64;
        assert_eq!(written, AUDIT_LINES_PER_MINUTE);
        // The next minute starts afresh and reports what was left out.
        assert_eq!(a.admit(8), (true, Some(1000 - AUDIT_LINES_PER_MINUTE)));
        assert_eq!(a.admit(8), (true, None));
        assert_eq!(a.admit(9), (true, None), "nothing left out of minute 8");
    }
}
