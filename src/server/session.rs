//! A browser's sign-in (the admin UI): the credential it signed in with,
//! held in an HttpOnly, SameSite=Strict cookie, and the CSRF token that
//! every write made with that cookie must carry.
//!
//! The cookie holds the very token or JWT the API accepts as a bearer
//! credential, and `auth` checks it exactly as it checks the
//! `Authorization` header: a browser is one more client of the same
//! handlers. What a cookie adds is ambient authority (the browser attaches
//! it by itself), so a request authenticated by the cookie that could
//! change something (any method but GET and HEAD) must also
//!
//! - carry `X-CSRF-Token`, an HMAC of the credential under a key this
//!   process drew at start (the UI's script learns it from `GET
//!   /ui/session`, which another site cannot read), and
//! - come from this origin, as far as the browser says: `Sec-Fetch-Site`,
//!   when sent, is `same-origin`, and `Origin`, when sent, names the host
//!   the request was sent to.

use super::errors::ApiError;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};

/// The cookie's name.
pub(crate) const COOKIE: &str = "switchboard_session";
/// The header a cookie-authenticated write carries its CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// The key CSRF tokens are derived under: random per process, so a
/// restart invalidates every token (the UI asks for a new one).
#[derive(Clone)]
pub(crate) struct CsrfKey([u8; 32]);

impl CsrfKey {
    /// A fresh key from the system's randomness.
    pub(crate) fn generate() -> Self {
        let mut key = [0u8; 32];
        // Without system randomness no token can be issued either; a key of
        // zeros would still bind tokens to credentials, but say so.
        if let Err(e) = getrandom::fill(&mut key) {
            tracing::error!(error = %e, "no system randomness for the CSRF key");
        }
        CsrfKey(key)
    }

    /// The CSRF token of `credential`: HMAC-SHA256 (RFC 2104), hex.
    pub(crate) fn token(&self, credential: &str) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let mac = ring::hmac::sign(&key, credential.as_bytes());
        mac.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The credential in the request's session cookie, if it has one.
pub(crate) fn credential(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

/// `Set-Cookie` for a sign-in with `credential`: HttpOnly (no script reads
/// it), SameSite=Strict (no other site's page sends it), the whole server
/// (`Path=/`: the UI calls the API), Secure when served over HTTPS, and no
/// expiry (it ends with the browser session; a JWT's own expiry still applies).
pub(crate) fn set_cookie(credential: &str, https: bool) -> Result<HeaderValue, ApiError> {
    // A bearer credential is a token68 or a JWT: cookie-safe characters only.
    let cookie_safe = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    if !credential.chars().all(cookie_safe) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "this credential has characters a cookie cannot hold; an API token or a JWT has none",
        ));
    }
    let secure = if https { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={credential}; HttpOnly; SameSite=Strict; Path=/{secure}"
    ))
    .map_err(|e| ApiError::internal(e.to_string()))
}

/// `Set-Cookie` that removes the session cookie.
pub(crate) fn clear_cookie(https: bool) -> HeaderValue {
    let secure = if https { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}"
    ))
    .expect("a fixed cookie is a valid header")
}

/// Whether `method` cannot change anything, so needs no CSRF token.
fn is_safe(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Refuses (403 `csrf_refused`) a cookie-authenticated write that does not
/// carry `credential`'s CSRF token or comes from another site.
pub(crate) fn check_write(
    key: &CsrfKey,
    method: &Method,
    headers: &HeaderMap,
    credential: &str,
) -> Result<(), ApiError> {
    if is_safe(method) {
        return Ok(());
    }
    same_origin(headers)?;
    let presented = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let expected = key.token(credential);
    if !crate::identity::constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        return Err(csrf_refused(
            "a write signed in by the session cookie needs the X-CSRF-Token header that \
             GET /ui/session gives (the server may have restarted: sign in again), or use \
             `Authorization: Bearer` instead of the cookie",
        ));
    }
    Ok(())
}

/// Refuses a request the browser says comes from another site: `Sec-Fetch-Site`
/// other than `same-origin`, or an `Origin` whose host is not the `Host`.
pub(crate) fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(site) = headers.get("sec-fetch-site") {
        if site.as_bytes() != b"same-origin" {
            return Err(csrf_refused(&format!(
                "the browser says this request comes from another site (Sec-Fetch-Site: {}); \
                 the session cookie works only from the UI's own pages",
                String::from_utf8_lossy(site.as_bytes())
            )));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, host)| host);
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if origin_host.is_none() || origin_host != host {
            return Err(csrf_refused(&format!(
                "Origin {} is not this server ({}); the session cookie works only from the \
                 UI's own pages",
                String::from_utf8_lossy(origin.as_bytes()),
                host.unwrap_or("no Host header")
            )));
        }
    }
    Ok(())
}

fn csrf_refused(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "csrf_refused", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_bound_to_the_credential_and_the_key() {
        let key = CsrfKey([7; 32]);
        assert_eq!(key.token("a"), key.token("a"));
        assert_ne!(key.token("a"), key.token("b"));
        assert_ne!(key.token("a"), CsrfKey([8; 32]).token("a"));
        assert_eq!(key.token("a").len(), 64);
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // Test case 2 of RFC 4231, with its 4-byte key zero-padded to the
        // 32 bytes this key holds (HMAC pads short keys with zeros anyway).
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            CsrfKey(key).token("what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; switchboard_session=sbt_x_y; b=2"),
        );
        assert_eq!(credential(&headers), Some("sbt_x_y"));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("switchboard_session="),
        );
        assert_eq!(credential(&headers), None);
    }

    #[test]
    fn writes_from_another_site_are_refused() {
        let key = CsrfKey([1; 32]);
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7700"));
        headers.insert(CSRF_HEADER, HeaderValue::from_str(&key.token("c")).unwrap());
        assert!(check_write(&key, &Method::POST, &headers, "c").is_ok());
        assert!(check_write(&key, &Method::POST, &headers, "other").is_err());
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(check_write(&key, &Method::POST, &headers, "c").is_err());
        assert!(check_write(&key, &Method::GET, &headers, "c").is_ok());
        headers.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(check_write(&key, &Method::DELETE, &headers, "c").is_err());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7700"),
        );
        assert!(check_write(&key, &Method::DELETE, &headers, "c").is_ok());
    }
}
