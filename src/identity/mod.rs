//! Caller identity: who a request comes from. An [`Authenticator`] turns the
//! bearer credential of a request into a [`Principal`]: the server's single
//! static token (an administrator), an API token issued by the
//! [`TokenStore`] (`tokens`), or a JWT checked by a [`JwtVerifier`] (`jwt`).
//! Policies then judge the principal through the policy context.

mod jwt;
mod tokens;

pub(crate) use jwt::checked_key_url;
pub use jwt::{JwtSettings, JwtVerifier, RemoteKeys, MAX_LEEWAY_SECS};
pub use tokens::{principal_of, IssuedToken, NewToken, TokenStore, TOKEN_PREFIX};

use crate::error::Result;
use crate::policy::Principal;
use crate::storage::Database;
use std::sync::Arc;

/// Why a credential was refused; the message is safe to show the caller
/// (it never repeats the credential).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused(pub String);

/// Turns bearer credentials into principals. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    static_token: Option<Arc<str>>,
    tokens: TokenStore,
    jwt: Option<Arc<JwtVerifier>>,
}

/// Compares without an early exit, so timing does not reveal a partial match.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticator {
    /// Accepts `static_token` (as [`Principal::static_admin`]), the tokens
    /// issued in `db`, and JWTs if `jwt` is given.
    pub fn new(db: &Database, static_token: Option<String>, jwt: Option<JwtVerifier>) -> Self {
        Authenticator {
            static_token: static_token.map(Arc::from),
            tokens: TokenStore::new(db),
            jwt: jwt.map(Arc::new),
        }
    }

    /// The token store it checks issued tokens against.
    pub fn tokens(&self) -> &TokenStore {
        &self.tokens
    }

    /// Whether JWTs are accepted.
    pub fn accepts_jwt(&self) -> bool {
        self.jwt.is_some()
    }

    /// Whether any credential is required at all: false only with no static
    /// token and no JWT keys (then issued tokens are still recognised, and a
    /// request without one acts as the local administrator).
    pub fn is_required(&self) -> bool {
        self.static_token.is_some() || self.jwt.is_some()
    }

    /// The principal of a presented bearer credential, or why it is
    /// refused. `Ok(None)`: the local operator (only where no credential is
    /// required, for a credential that is neither an issued token nor a JWT).
    pub fn authenticate(
        &self,
        presented: &str,
    ) -> Result<std::result::Result<Option<Principal>, Refused>> {
        if let Some(token) = &self.static_token {
            if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
                return Ok(Ok(Some(Principal::static_admin())));
            }
        }
        if presented.starts_with(TOKEN_PREFIX) {
            return Ok(match self.tokens.authenticate(presented)? {
                Some(p) => Ok(Some(p)),
                None => Err(Refused(
                    "the API token is unknown, revoked or expired".into(),
                )),
            });
        }
        if let Some(jwt) = &self.jwt {
            if JwtVerifier::looks_like_jwt(presented) {
                return Ok(match jwt.verify(presented) {
                    Ok(p) => Ok(Some(p)),
                    Err(e) => Err(Refused(
                        e.to_string()
                            .trim_start_matches("invalid input: ")
                            .to_string(),
                    )),
                });
            }
        }
        if !self.is_required() {
            // Nothing is required here: an unrecognised credential is the
            // local operator, as a request without one (clients that always
            // send SWITCHBOARD_TOKEN keep working). Issued tokens and JWTs
            // are still checked above.
            return Ok(Ok(None));
        }
        Ok(Err(Refused("the bearer token is wrong".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::Scope;

    #[test]
    fn what_each_credential_authenticates_as() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path()).unwrap();
        let open = Authenticator::new(&db, None, None);
        let issued = open
            .tokens()
            .create(
                NewToken {
                    name: "t".into(),
                    scopes: vec![Scope::Audit],
                    ..NewToken::default()
                },
                None,
            )
            .unwrap();
        // Nothing required: an unknown string is the local operator, but an
        // issued token is still itself, and a bad one is refused.
        assert_eq!(open.authenticate("anything").unwrap(), Ok(None));
        let p = open.authenticate(&issued.secret).unwrap().unwrap().unwrap();
        assert!(p.has_scope(Scope::Audit) && !p.has_scope(Scope::Invoke));
        assert!(open.authenticate("sbt_x_y").unwrap().is_err());
        let guarded = Authenticator::new(&db, Some("admin-secret".into()), None);
        assert_eq!(
            guarded.authenticate("admin-secret").unwrap(),
            Ok(Some(Principal::static_admin()))
        );
        assert!(guarded.authenticate("admin-secreT").unwrap().is_err());
        assert!(guarded.authenticate(&issued.secret).unwrap().is_ok());
    }
}
