//! `rack-registry healthcheck [URL]`: one `GET` of the server's `/health`, exit status 0 when
//! it answers 200 within the timeout, 1 otherwise (refused, timed out, any other status).
//!
//! The container image is `FROM scratch` (no shell, no curl), so its `HEALTHCHECK`, a
//! Kubernetes `exec` probe or a script runs the binary itself. Without a URL it asks the server
//! this environment would start: `PORT` and `HOST` (a wildcard `HOST` asks the loopback
//! address), the same variables and `.env` the server reads. Redirects are not followed: a
//! server that answers `/health` with anything but 200 is not healthy.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// URL to ask [default: http://<HOST>:<PORT>/health, a wildcard HOST as the loopback
    /// address]
    pub url: Option<String>,
    /// Seconds to wait for the answer, connecting included
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
    /// The server's port, for the default URL [default: 8080]
    #[arg(long, env = "PORT")]
    pub port: Option<String>,
    /// The server's address, for the default URL [default: 0.0.0.0]
    #[arg(long, env = "HOST")]
    pub host: Option<String>,
}

/// The URL asked when none is given: the address the server binds, seen from this machine.
pub fn default_url(host: Option<&str>, port: Option<&str>) -> String {
    let port = port.map(str::trim).filter(|p| !p.is_empty()).unwrap_or("8080");
    let host = match host.map(str::trim).filter(|h| !h.is_empty()) {
        None | Some("0.0.0.0") => "127.0.0.1".to_owned(),
        Some("::" | "[::]") => "[::1]".to_owned(),
        Some(h) if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        Some(h) => h.to_owned(),
    };
    format!("http://{host}:{port}/health")
}

/// `Ok(status line)` when `url` answered 200, else why not.
async fn probe(url: &str, timeout: Duration) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let reply = client
        .get(url)
        .send()
        .await
        .map_err(|e| super::client::chain(&e))?;
    let status = reply.status();
    if status == reqwest::StatusCode::OK {
        Ok(format!("{url}: {status}"))
    } else {
        Err(format!("answered {status}"))
    }
}

pub fn run(args: HealthcheckArgs) -> ExitCode {
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| default_url(args.host.as_deref(), args.port.as_deref()));
    let timeout = Duration::from_secs(args.timeout.max(1));
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
        .and_then(|rt| rt.block_on(probe(&url, timeout)));
    match result {
        Ok(line) => {
            println!("healthy: {line}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("unhealthy: {url}: {why}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::default_url;

    #[test]
    fn the_default_url_is_the_bound_address_seen_from_this_machine() {
        assert_eq!(default_url(None, None), "http://127.0.0.1:8080/health");
        assert_eq!(default_url(Some(""), Some(" ")), "http://127.0.0.1:8080/health");
        assert_eq!(
            default_url(Some("0.0.0.0"), Some("9000")),
            "http://127.0.0.1:9000/health"
        );
        assert_eq!(default_url(Some("::"), None), "http://[::1]:8080/health");
        assert_eq!(default_url(Some("::1"), None), "http://[::1]:8080/health");
        assert_eq!(
            default_url(Some("10.0.0.5"), Some("80")),
            "http://10.0.0.5:80/health"
        );
        assert_eq!(
            default_url(Some("[fd00::1]"), None),
            "http://[fd00::1]:8080/health"
        );
    }
}
