//! What the commands that call a running server share (`publish`, and `yank`, `deprecate`,
//! `delete-version` of [`super::manage`]): the server's URL and the token with the same flags
//! and environment variables ([`ServerArgs`]), one HTTP exchange ([`send`]), the retry of "not
//! now" answers ([`with_retries`]: 503 and 429, after their `Retry-After`), and the failures
//! with their exit status ([`Failure`]).
//!
//! Exit status, the same for every such command: 0 success, 1 refused (locally by the server's
//! own rules, or by the server: its `code` and `message` are printed), 2 usage error (no token,
//! a malformed URL or argument), 3 the request could not be completed (network error, timeout,
//! an answer that is not the registry's JSON, such as a proxy's 502, or still 503 or 429 after
//! the last retry): retrying later may help.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use clap::Args;
use rack_core::ApiError;

/// Where the server is and who is asking (`publish` and the lifecycle commands alike).
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Registry server URL
    #[arg(long, env = "RACK_REGISTRY_URL", default_value = "http://localhost:8080")]
    pub url: String,
    /// Token with publish rights (or the admin token)
    #[arg(long, env = "RACK_REGISTRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Times to send the request again after a 503 or 429 answer (each after the answer's
    /// Retry-After, at most 60 s)
    #[arg(long, env = "RACK_REGISTRY_RETRIES", default_value_t = 5)]
    pub retries: u32,
}

impl ServerArgs {
    /// The token to send: `--token` or `RACK_REGISTRY_TOKEN`, trimmed; blank counts as absent.
    pub fn token(&self) -> Option<String> {
        self.token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
    }

    /// The token, or the usage error that says how to give one (`who` names the tokens that
    /// may do it).
    pub fn require_token(&self, who: &str) -> Result<String, Failure> {
        self.token().ok_or_else(|| {
            Failure::Usage(format!(
                "no token: pass --token or set RACK_REGISTRY_TOKEN ({who})"
            ))
        })
    }

    /// `<url><path>`, tolerating a trailing `/` on the base URL (`path` starts with `/`).
    pub fn endpoint(&self, path: &str) -> String {
        endpoint(&self.url, path)
    }
}

/// `<url><path>`, tolerating a trailing `/` on the base URL (`path` starts with `/`).
pub fn endpoint(url: &str, path: &str) -> String {
    format!("{}{path}", url.trim_end_matches('/'))
}

/// The base URL must be an absolute `http://` or `https://` URL.
pub fn check_url(url: &str) -> Result<(), Failure> {
    match reqwest::Url::parse(&endpoint(url, "/")) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(()),
        Ok(_) => Err(Failure::Usage(format!(
            "invalid --url {url:?}: expected http://host[:port] or https://host[:port]"
        ))),
        Err(e) => Err(Failure::Usage(format!("invalid --url {url:?}: {e}"))),
    }
}

/// Why a command failed, and so the exit status.
#[derive(Debug)]
pub enum Failure {
    /// The server's rules refused the request, locally or on the server.
    Rejected(Rejection),
    /// A local file could not be read (permissions, I/O error...).
    Local(String),
    /// No token, a malformed URL or argument.
    Usage(String),
    /// The request could not be completed, or the answer was not the registry's.
    Transport(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Rejected(_) | Failure::Local(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Transport(_) => 3,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Rejected(r) => r.fmt(f),
            Failure::Local(m) | Failure::Usage(m) | Failure::Transport(m) => f.write_str(m),
        }
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure::Rejected(Rejection {
            status: e.status(),
            code: e.code().to_owned(),
            message: e.message,
        })
    }
}

/// An error answer: status, `code` and `message` (SPEC §12). Kept as strings so that a code
/// this client does not know is still shown verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

/// The longest wait before a retry, whatever `Retry-After` says.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// Whether an answer means "not now, try again" (503: the upload queue is full or storage is
/// briefly unavailable; 429: the rate limit).
pub fn retryable(status: u16) -> bool {
    matches!(status, 429 | 503)
}

/// How long to wait before retry number `retry` (1-based): the answer's `Retry-After` in
/// seconds (an HTTP date is not used), else 1, 2, 4... seconds; at least 1 s, at most
/// [`MAX_RETRY_WAIT`].
pub fn retry_wait(retry_after: Option<&str>, retry: u32) -> Duration {
    let secs = retry_after
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| 1u64 << retry.saturating_sub(1).min(6));
    Duration::from_secs(secs).clamp(Duration::from_secs(1), MAX_RETRY_WAIT)
}

/// One answer of the server.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Its `Retry-After`, if any.
    pub retry_after: Option<String>,
    pub body: bytes::Bytes,
}

/// The HTTP client of a command (`what` goes into the `User-Agent`: `rack-registry-<what>/<v>`).
pub fn http_client(what: &str) -> Result<reqwest::Client, Failure> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .user_agent(format!("rack-registry-{what}/{}", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Failure::Transport(format!("cannot create the HTTP client: {e}")))
}

/// Send `request` once, with `token` as a bearer token; `doing` names it in a transport error
/// ("upload to <url>").
pub async fn send(request: reqwest::RequestBuilder, token: &str, doing: &str) -> Result<Answer, Failure> {
    let transport = |e: reqwest::Error| Failure::Transport(format!("{doing} failed: {}", chain(&e)));
    let res = request.bearer_auth(token).send().await.map_err(transport)?;
    let status = res.status().as_u16();
    let retry_after = res
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = res.bytes().await.map_err(transport)?;
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// `attempt` (one request, through [`send`]), made again after a retryable answer
/// ([`retryable`]) at most `retries` times, waiting [`retry_wait`] before each; `interpret`
/// turns each answer into the result or the server's refusal. `on_retry` hears about each wait.
/// Still refused after the last: [`Failure::Transport`] (exit 3: later may work).
pub async fn with_retries<T, Fut>(
    retries: u32,
    mut attempt: impl FnMut() -> Fut,
    interpret: impl Fn(u16, &[u8]) -> Result<T, Failure>,
    mut on_retry: impl FnMut(&Rejection, Duration, u32),
) -> Result<T, Failure>
where
    Fut: Future<Output = Result<Answer, Failure>>,
{
    let mut retry = 0;
    loop {
        let Answer {
            status,
            retry_after,
            body,
        } = attempt().await?;
        let answer = interpret(status, &body);
        if !retryable(status) {
            return answer;
        }
        let rejection = match answer {
            Err(Failure::Rejected(r)) => r,
            // Not the registry's JSON (a proxy's 503 page): shown as such.
            Err(other) => Rejection {
                status,
                code: "SERVICE_UNAVAILABLE".into(),
                message: other.to_string(),
            },
            Ok(v) => return Ok(v),
        };
        if retry == retries {
            return Err(Failure::Transport(format!(
                "gave up after {} attempts: {rejection}",
                retries + 1
            )));
        }
        retry += 1;
        let wait = retry_wait(retry_after.as_deref(), retry);
        on_retry(&rejection, wait, retry);
        tokio::time::sleep(wait).await;
    }
}

/// The server's refusal in an answer that is not a success: its `code` and `message`
/// ([`Failure::Rejected`]), or, when the body is not the registry's JSON,
/// [`Failure::Transport`] with an excerpt of it.
pub fn refusal(status: u16, body: &[u8]) -> Failure {
    let doc: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        doc.as_ref()
            .and_then(|d| d.get(k))
            .and_then(serde_json::Value::as_str)
    };
    if !(200..300).contains(&status) {
        if let (Some(code), Some(message)) = (field("code"), field("message")) {
            return Failure::Rejected(Rejection {
                status,
                code: code.to_owned(),
                message: message.to_owned(),
            });
        }
    }
    unexpected(status, body)
}

/// An answer that is not the registry's: exit 3, with the start of the body.
pub fn unexpected(status: u16, body: &[u8]) -> Failure {
    let text = String::from_utf8_lossy(body);
    let excerpt: String = text.chars().take(200).collect();
    Failure::Transport(format!(
        "unexpected answer from the server (HTTP {status}): {excerpt}"
    ))
}

/// A current-thread runtime for one command.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Local(format!("cannot start the runtime: {e}")))
}

/// An error and its sources, `: `-separated (reqwest's own message alone says too little).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_waits_follow_retry_after_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(retry_wait(Some("5"), 1), s(5));
        assert_eq!(retry_wait(Some(" 7 "), 3), s(7));
        assert_eq!(retry_wait(Some("0"), 1), s(1), "at least a second");
        assert_eq!(retry_wait(Some("86400"), 1), MAX_RETRY_WAIT, "at most a minute");
        // No usable Retry-After (absent, an HTTP date): 1, 2, 4... s, capped.
        assert_eq!(retry_wait(None, 1), s(1));
        assert_eq!(retry_wait(None, 3), s(4));
        assert_eq!(retry_wait(Some("Wed, 21 Oct 2015 07:28:00 GMT"), 2), s(2));
        assert_eq!(retry_wait(None, 30), MAX_RETRY_WAIT);
    }

    #[test]
    fn urls_and_refusals() {
        assert!(retryable(503) && retryable(429));
        assert!(!retryable(500) && !retryable(502) && !retryable(409) && !retryable(408));
        assert_eq!(endpoint("http://h:1/", "/registries"), "http://h:1/registries");
        assert_eq!(
            endpoint("http://h:1/base", "/-/yank/@a/b/1.0.0"),
            "http://h:1/base/-/yank/@a/b/1.0.0"
        );
        assert!(check_url("https://registry.example.com").is_ok());
        for bad in ["localhost:8080", "registry.example.com", "ftp://h", "/x"] {
            assert_eq!(check_url(bad).unwrap_err().exit_code(), 2, "{bad}");
        }
        let f = refusal(403, br#"{"code":"INSUFFICIENT_PERMISSIONS","message":"no"}"#);
        assert_eq!(
            (f.exit_code(), f.to_string()),
            (1, "403 INSUFFICIENT_PERMISSIONS: no".into())
        );
        assert_eq!(refusal(502, b"<html>").exit_code(), 3);
    }
}
