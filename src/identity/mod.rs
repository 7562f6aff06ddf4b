//! Caller identity: who a request comes from. An [`Authenticator`] turns the
//! bearer credential of a request into a [`Principal`]: the server's single
//! static token (an administrator), an API token issued by the
//! [`TokenStore`] (`tokens`), or a JWT checked by a [`JwtVerifier`] (`jwt`).
//! Policies then judge the principal through the policy context.

mod jwt;
mod tokens;

pub use jwt::{JwtSettings, JwtVerifier, MAX_LEEWAY_SECS};
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
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
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

    /// The principal of a presented bearer credential, or why it is refused.
    pub fn authenticate(&self, presented: &str) -> Result<std::result::Result<Principal, Refused>> {
        if let Some(token) = &self.static_token {
            if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
                return Ok(Ok(Principal::static_admin()));
            }
        }
        if presented.starts_with(TOKEN_PREFIX) {
            return Ok(self
                .tokens
                .authenticate(presented)?
                .ok_or_else(|| Refused("the API token is unknown, revoked or expired".into())));
        }
        if let Some(jwt) = &self.jwt {
            if JwtVerifier::looks_like_jwt(presented) {
                return Ok(jwt.verify(presented).map_err(|e| {
                    Refused(
                        e.to_string()
                            .trim_start_matches("invalid input: ")
                            .to_string(),
                    )
                }));
            }
        }
        Ok(Err(Refused("the bearer token is wrong".into())))
    }
}
