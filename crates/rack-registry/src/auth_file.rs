//! Loading `auth.json` from disk. The parsing rules themselves are in `rack_core::auth`.

use std::path::Path;

use rack_core::auth::Policy;

/// Load the policy: a missing file declares nothing (every namespace is 403); a file that is
/// not a JSON object is an error. Each rejected namespace is logged with its reason.
pub fn load(path: &Path) -> Result<Policy, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), "auth config not found: every namespace is undeclared (403)");
            return Ok(Policy::empty());
        }
        Err(e) => return Err(format!("cannot read auth config {}: {e}", path.display())),
    };
    let policy = Policy::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for r in policy.rejected() {
        tracing::warn!(namespace = %r.namespace, reason = %r.reason, "auth config: namespace rejected (treated as undeclared)");
    }
    Ok(policy)
}
