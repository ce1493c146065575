//! Who may talk to the server. On loopback (the default) the page is reachable only from
//! this machine, but any web site open in the same browser could still send it requests
//! or, through DNS rebinding, read its answers: so the Host header must name the loopback
//! address the server listens on, and an Origin header, when present, must be that same
//! address. Bound elsewhere (`--host`), every request must also carry the token printed at
//! start: in an `Authorization: Bearer` header, the `ferrotune_token` cookie the page
//! receives when opened with `?token=`, or that query parameter itself.

use std::net::IpAddr;

/// The cookie that carries the token after the page is opened with `?token=...`.
pub const TOKEN_COOKIE: &str = "ferrotune_token";

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 403: the Host or Origin header names another site.
    Forbidden(String),
    /// 401: bound beyond loopback and no valid token.
    Unauthorized,
}

/// What the server accepts, fixed at start.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Host header values accepted (`host:port`, lower case). Empty: any (token mode).
    hosts: Vec<String>,
    /// The token every request must carry; None on loopback.
    token: Option<String>,
}

/// The headers of a request that the guard reads.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestHeaders<'a> {
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub cookie: Option<&'a str>,
    /// The `token` query parameter.
    pub query_token: Option<&'a str>,
}

/// Whether an address given with `--host` is loopback (a name counts only as `localhost`).
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Guard {
    /// A loopback server on `port`: the names this machine's browser may use for it.
    pub fn loopback(port: u16) -> Self {
        let hosts = ["127.0.0.1", "localhost", "[::1]"]
            .iter()
            .map(|h| format!("{h}:{port}"))
            .collect();
        Guard { hosts, token: None }
    }

    /// A server bound beyond loopback: any Host (its public name is not known here), but
    /// the token on every request.
    pub fn with_token(token: String) -> Self {
        Guard {
            hosts: Vec::new(),
            token: Some(token),
        }
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn check(&self, h: &RequestHeaders<'_>) -> Result<(), Refusal> {
        let host = h.host.map(str::to_ascii_lowercase);
        if !self.hosts.is_empty() {
            match &host {
                Some(host) if self.hosts.contains(host) => {}
                Some(host) => {
                    return Err(Refusal::Forbidden(format!(
                        "Host {host:?} is not this server's loopback address ({})",
                        self.hosts.join(", ")
                    )))
                }
                None => return Err(Refusal::Forbidden("no Host header".into())),
            }
        }
        if let Some(origin) = h.origin {
            let origin = origin.to_ascii_lowercase();
            let same_site = match (&host, origin.strip_prefix("http://")) {
                (Some(host), Some(rest)) => rest == host,
                _ => false,
            };
            if !same_site {
                return Err(Refusal::Forbidden(format!(
                    "Origin {origin:?} is not this server"
                )));
            }
        }
        if let Some(token) = &self.token {
            let bearer = h
                .authorization
                .and_then(|a| a.strip_prefix("Bearer "))
                .map(str::trim);
            let cookie = h.cookie.and_then(|c| {
                c.split(';').find_map(|kv| {
                    let (k, v) = kv.trim().split_once('=')?;
                    (k == TOKEN_COOKIE).then_some(v)
                })
            });
            let given = [bearer, cookie, h.query_token];
            if !given.iter().flatten().any(|t| same_secret(t, token)) {
                return Err(Refusal::Unauthorized);
            }
        }
        Ok(())
    }
}

/// Compares without stopping at the first differing byte, so the time taken does not
/// say how much of a guess was right.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A fresh random token (128 bits, hex).
pub fn new_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(host: &'a str, origin: Option<&'a str>) -> RequestHeaders<'a> {
        RequestHeaders {
            host: Some(host),
            origin,
            ..Default::default()
        }
    }

    #[test]
    fn loopback_accepts_its_own_names_only() {
        let g = Guard::loopback(7860);
        assert!(g.check(&headers("127.0.0.1:7860", None)).is_ok());
        assert!(g
            .check(&headers("LOCALHOST:7860", Some("http://localhost:7860")))
            .is_ok());
        assert!(matches!(
            g.check(&headers("evil.example:7860", None)),
            Err(Refusal::Forbidden(_))
        ));
        assert!(matches!(
            g.check(&headers("127.0.0.1:7861", None)),
            Err(Refusal::Forbidden(_))
        ));
        assert!(matches!(
            g.check(&headers("127.0.0.1:7860", Some("http://evil.example"))),
            Err(Refusal::Forbidden(_))
        ));
        assert!(matches!(
            g.check(&RequestHeaders::default()),
            Err(Refusal::Forbidden(_))
        ));
    }

    #[test]
    fn token_mode_wants_the_token_somewhere() {
        let g = Guard::with_token("abc123".into());
        let mut h = headers("192.168.1.5:7860", None);
        assert_eq!(g.check(&h), Err(Refusal::Unauthorized));
        h.query_token = Some("abc12");
        assert_eq!(g.check(&h), Err(Refusal::Unauthorized));
        h.query_token = Some("abc123");
        assert!(g.check(&h).is_ok());
        h.query_token = None;
        h.cookie = Some("x=1; ferrotune_token=abc123");
        assert!(g.check(&h).is_ok());
        h.cookie = None;
        h.authorization = Some("Bearer abc123");
        assert!(g.check(&h).is_ok());
        h.origin = Some("http://elsewhere:7860");
        assert!(matches!(g.check(&h), Err(Refusal::Forbidden(_))));
    }

    #[test]
    fn loopback_addresses() {
        assert!(is_loopback("127.0.0.1") && is_loopback("::1") && is_loopback("localhost"));
        assert!(!is_loopback("0.0.0.0") && !is_loopback("192.168.1.5"));
        assert_eq!(new_token().len(), 32);
    }
}
