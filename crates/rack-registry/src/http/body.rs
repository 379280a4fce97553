//! Request bodies: which routes read one ([`ROUTES`]), and the deadline each is read under.
//!
//! A request whose body never arrives must not hold its connection: the connection watchdog
//! (`serve.rs`) leaves a connection with a request in flight alone, so a handler waiting for
//! body bytes would wait forever. Hence one rule, applied at the entry of every request
//! ([`admit`]):
//!
//! - a route listed in [`ROUTES`] gets its body under its kind's [`Deadline`]
//!   ([`crate::timed_body`]: no byte for the stall interval, or not whole by the deadline, and
//!   the read ends with a [`crate::timed_body::BodyTimeout`] error);
//! - any other route gets an empty body: its handler cannot read the request body at all, so a
//!   new route that reads one cannot be added without listing it here, where its deadline is
//!   chosen and where the stalled-body test (`tests/body_deadlines.rs`) finds it.
//!
//! Handlers answer a [`crate::timed_body::BodyTimeout`] with a 408 and close the connection (the
//! rest of the body is never read).

use axum::body::Body;
use http::Method;

use crate::timed_body::{Deadline, Timed};

/// How a route's body is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// An upload: `UPLOAD_STALL_SECONDS` without a byte, `UPLOAD_TIMEOUT_SECONDS` in all.
    Upload,
    /// A small form: the whole body within `HEADER_TIMEOUT_SECONDS` (held to the time a request
    /// head gets: it is a few hundred bytes).
    Form,
}

/// A route whose handler reads the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRoute {
    pub method: &'static str,
    /// The exact request path, or a prefix ending in `/` (the management routes: the rest of
    /// the path names a registry).
    pub path: &'static str,
    pub kind: BodyKind,
    /// Served only with the web pages on (`UI=true`).
    pub ui: bool,
}

/// Every route that reads a request body. The dispatch hands a body to these only ([`admit`]).
pub const ROUTES: &[BodyRoute] = &[
    BodyRoute {
        method: "POST",
        path: "/registries",
        kind: BodyKind::Upload,
        ui: false,
    },
    BodyRoute {
        method: "PUT",
        path: "/-/yank/",
        kind: BodyKind::Form,
        ui: false,
    },
    BodyRoute {
        method: "PUT",
        path: "/-/deprecate/",
        kind: BodyKind::Form,
        ui: false,
    },
    BodyRoute {
        method: "POST",
        path: "/ui/login",
        kind: BodyKind::Form,
        ui: true,
    },
    BodyRoute {
        method: "POST",
        path: "/ui/logout",
        kind: BodyKind::Form,
        ui: true,
    },
];

/// The body route of a request, if it is one (`ui`: the web pages are served).
pub fn route(method: &Method, path: &str, ui: bool) -> Option<&'static BodyRoute> {
    ROUTES.iter().find(|r| {
        let matches = match r.path.strip_suffix('/') {
            Some(_) => path.starts_with(r.path),
            None => r.path == path,
        };
        matches && method.as_str() == r.method && (ui || !r.ui)
    })
}

/// The deadline of each kind of body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub upload: Deadline,
    pub form: Deadline,
}

impl Deadlines {
    pub fn of(&self, kind: BodyKind) -> Deadline {
        match kind {
            BodyKind::Upload => self.upload,
            BodyKind::Form => self.form,
        }
    }
}

/// The body a handler gets: the request's, under its route's deadline, on a body route; an
/// empty one elsewhere.
pub fn admit(
    method: &Method,
    path: &str,
    ui: bool,
    body: hyper::body::Incoming,
    deadlines: &Deadlines,
) -> Body {
    match route(method, path, ui) {
        Some(r) => Body::new(Timed::new(body, deadlines.of(r.kind))),
        None => Body::empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_found_by_method_and_exact_path() {
        assert_eq!(
            route(&Method::POST, "/registries", false).map(|r| r.kind),
            Some(BodyKind::Upload)
        );
        assert_eq!(
            route(&Method::POST, "/ui/login", true).map(|r| r.kind),
            Some(BodyKind::Form)
        );
        assert_eq!(route(&Method::POST, "/ui/login", false), None, "UI=false");
        assert_eq!(route(&Method::GET, "/registries", true), None);
        assert_eq!(route(&Method::POST, "/registries/", true), None);
        assert_eq!(route(&Method::POST, "/ui/search", true), None);
        assert_eq!(
            route(&Method::PUT, "/-/yank/@a/b/1.0.0", false).map(|r| r.kind),
            Some(BodyKind::Form)
        );
        assert_eq!(route(&Method::DELETE, "/-/yank/@a/b/1.0.0", false), None);
        assert_eq!(route(&Method::PUT, "/-/yankx", false), None);
    }
}
