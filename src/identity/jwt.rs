//! JWT verification: the keys a deployment trusts (an HS256 secret, RS256 /
//! ES256 public keys in PEM files, a JWKS file, or the JWKS an authorization
//! server publishes at a URL), the issuer and audience it expects, and how a
//! verified token's claims become a [`Principal`]. Keys from a URL are held
//! here as [`RemoteKeys`]; fetching them is the server's job (it owns the
//! HTTPS client and the node's CA trust).

use crate::error::{Error, Result};
use crate::namespace::Scope;
use crate::policy::Principal;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// The most clock skew tolerated on `exp` and `nbf`.
pub const MAX_LEEWAY_SECS: u64 = 300;

/// How JWTs are verified (`[auth.jwt]` in the server's configuration).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// An `aud` every token must carry.
    pub audience: String,
    /// Name of an environment variable holding an HS256 shared secret.
    pub hs256_secret_env: Option<String>,
    /// PEM files of RS256 or ES256 (P-256) public keys.
    #[serde(default)]
    pub public_key_files: Vec<PathBuf>,
    /// A JWKS file (`{"keys": [...]}`) of RSA and P-256 public keys.
    pub jwks_file: Option<PathBuf>,
    /// The URL of the authorization server's JWKS (its `jwks_uri`):
    /// `https://`, or `http://` to a loopback address. Fetched at start,
    /// again every few minutes, and when a token names a key id none of the
    /// keys has (a rotation), never while a request waits.
    pub jwks_url: Option<String>,
    /// Find the JWKS URL in the issuer's published metadata instead of
    /// `jwks_url`: its `jwks_uri` at `/.well-known/oauth-authorization-server`
    /// (RFC 8414), else at `/.well-known/openid-configuration`, read again
    /// at each fetch. The issuer must then be `https://` (or `http://` to a
    /// loopback address), and the metadata must name it as its `issuer`.
    #[serde(default)]
    pub discover_jwks: bool,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds (default 30, at most 300).
    pub leeway_secs: Option<u64>,
    /// The claim holding the caller's roles: a list or a space/comma-separated
    /// string (default `roles`).
    pub roles_claim: Option<String>,
    /// The claim holding its scopes, OAuth style (default `scope`); names
    /// other than admin, invoke and audit are ignored.
    pub scopes_claim: Option<String>,
    /// Scopes of a token without a scopes claim (default `["invoke"]`).
    pub default_scopes: Option<Vec<Scope>>,
    /// Further claims handed to policies as `claim.NAME` (e.g. `email`, `team`).
    #[serde(default)]
    pub claims: Vec<String>,
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies JWTs against configured keys.
pub struct JwtVerifier {
    settings: JwtSettings,
    keys: Vec<Key>,
    remote: Option<RemoteKeys>,
    leeway: u64,
}

/// The keys a [`JwtVerifier`] takes from `jwks_url`, shared with whatever
/// fetches them. Cheap to clone.
#[derive(Clone)]
pub struct RemoteKeys {
    inner: Arc<RemoteInner>,
}

struct RemoteInner {
    /// The JWKS URL, or with `discovered` the issuer whose metadata names it.
    url: String,
    discovered: bool,
    keys: RwLock<Arc<Vec<Key>>>,
    /// Signalled when a token names a key id no key has.
    wanted: tokio::sync::Notify,
}

impl RemoteKeys {
    /// Where the keys are published: the JWKS URL, or the issuer whose
    /// metadata names it (see [`discovered`](Self::discovered)).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Whether [`url`](Self::url) is the issuer, whose metadata names the
    /// JWKS URL (`discover_jwks`).
    pub fn discovered(&self) -> bool {
        self.inner.discovered
    }

    /// Replaces the keys with those of `jwks` (the JSON document at
    /// [`url`](Self::url)); returns how many there are now. A document
    /// that is not a JWKS of RSA and P-256 keys leaves the keys as they were.
    pub fn replace(&self, jwks: &[u8]) -> Result<usize> {
        let set: JwkSet = serde_json::from_slice(jwks)
            .map_err(|e| Error::invalid(format!("jwks_url {}: not a JWKS ({e})", self.url())))?;
        let keys = jwk_keys(&set, &format!("jwks_url {}", self.url()))?;
        let count = keys.len();
        *self.inner.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(count)
    }

    /// Resolves when a token named a key id that none of the keys has:
    /// time to fetch the set again.
    pub async fn wanted(&self) {
        self.inner.wanted.notified().await
    }

    fn snapshot(&self) -> Arc<Vec<Key>> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The keys of a JWKS: RSA (RS256) and P-256 (ES256) only.
fn jwk_keys(set: &JwkSet, source: &str) -> Result<Vec<Key>> {
    set.keys
        .iter()
        .map(|jwk| {
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                _ => {
                    return Err(load_error(format!(
                        "{source}: only RSA and P-256 keys are accepted"
                    )))
                }
            };
            let key =
                DecodingKey::from_jwk(jwk).map_err(|e| load_error(format!("{source}: {e}")))?;
            Ok(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            })
        })
        .collect()
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.settings.issuer)
            .field("audience", &self.settings.audience)
            .field("keys", &self.keys.len())
            .finish()
    }
}

fn load_error(what: impl std::fmt::Display) -> Error {
    Error::invalid(format!("[auth.jwt]: {what}"))
}

/// The algorithm a PEM public key verifies: RS256 for RSA, ES256 for P-256.
fn pem_key(pem: &[u8], path: &std::path::Path) -> Result<(Algorithm, DecodingKey)> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((Algorithm::RS256, key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok((Algorithm::ES256, key));
    }
    Err(load_error(format!(
        "public_key_files: {} is not an RSA or P-256 public key in PEM",
        path.display()
    )))
}

/// `url` if a JWKS may be fetched from it: `https://`, or `http://` to a
/// loopback address (an authorization server on this machine).
fn checked_jwks_url(url: &str) -> Result<String> {
    checked_key_url("jwks_url", url)
}

/// `url` (named `what` in errors) if keys, or metadata naming them, may be
/// fetched from it: `https://`, or `http://` to a loopback address.
pub(crate) fn checked_key_url(what: &str, url: &str) -> Result<String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| load_error(format!("{what} {url:?} is not a URL ({e})")))?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(url.to_string()),
        "http" if loopback => Ok(url.to_string()),
        _ => Err(load_error(format!(
            "{what} {url:?}: give an https:// URL (http:// only to a loopback address): \
             the keys decide who may call"
        ))),
    }
}

impl JwtVerifier {
    /// Loads the keys `settings` name; fails, saying which setting to fix,
    /// if none is usable.
    pub fn new(settings: JwtSettings) -> Result<Self> {
        if settings.issuer.is_empty() || settings.audience.is_empty() {
            return Err(load_error("set both issuer and audience"));
        }
        let leeway = settings.leeway_secs.unwrap_or(30);
        if leeway > MAX_LEEWAY_SECS {
            return Err(load_error(format!(
                "leeway_secs is at most {MAX_LEEWAY_SECS}"
            )));
        }
        let mut keys = Vec::new();
        if let Some(var) = &settings.hs256_secret_env {
            let secret = std::env::var(var).map_err(|_| {
                load_error(format!("hs256_secret_env names {var}, which is not set"))
            })?;
            if secret.len() < 32 {
                return Err(load_error(format!(
                    "the HS256 secret in {var} is shorter than 32 bytes"
                )));
            }
            keys.push(Key {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        for path in &settings.public_key_files {
            let pem = std::fs::read(path)
                .map_err(|e| load_error(format!("public_key_files: {}: {e}", path.display())))?;
            let (alg, key) = pem_key(&pem, path)?;
            keys.push(Key {
                kid: None,
                alg,
                key,
            });
        }
        if let Some(path) = &settings.jwks_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| load_error(format!("jwks_file: {}: {e}", path.display())))?;
            let set: JwkSet = serde_json::from_str(&text)
                .map_err(|e| load_error(format!("jwks_file: {}: {e}", path.display())))?;
            keys.extend(jwk_keys(&set, &format!("jwks_file: {}", path.display()))?);
        }
        let remote_at = |url: String, discovered: bool| RemoteKeys {
            inner: Arc::new(RemoteInner {
                url,
                discovered,
                keys: RwLock::new(Arc::new(Vec::new())),
                wanted: tokio::sync::Notify::new(),
            }),
        };
        let remote = match (&settings.jwks_url, settings.discover_jwks) {
            (Some(_), true) => {
                return Err(load_error(
                    "set jwks_url or discover_jwks, not both: discover_jwks finds the URL in \
                     the issuer's metadata",
                ))
            }
            (Some(url), false) => Some(remote_at(checked_jwks_url(url)?, false)),
            (None, true) => Some(remote_at(
                checked_key_url("issuer (discover_jwks)", &settings.issuer)?,
                true,
            )),
            (None, false) => None,
        };
        if keys.is_empty() && remote.is_none() {
            return Err(load_error(
                "no key to verify with: set hs256_secret_env, public_key_files, jwks_file, jwks_url \
                 or discover_jwks",
            ));
        }
        Ok(JwtVerifier {
            settings,
            keys,
            remote,
            leeway,
        })
    }

    /// The keys it takes from `jwks_url`, for the fetcher; `None` without one.
    pub fn remote_keys(&self) -> Option<RemoteKeys> {
        self.remote.clone()
    }

    /// Whether `presented` looks like a JWT at all (three dot-separated parts).
    pub fn looks_like_jwt(presented: &str) -> bool {
        presented.split('.').count() == 3
    }

    /// The principal of a valid token: signed by a configured key with that
    /// key's algorithm, from the issuer, for the audience, within `nbf` and
    /// `exp` (± the leeway), with a `sub`. The error says what was wrong.
    pub fn verify(&self, token: &str) -> Result<Principal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Error::invalid(format!("not a valid JWT: {e}")))?;
        let remote = self.remote.as_ref().map(RemoteKeys::snapshot);
        let all = self.keys.iter().chain(remote.iter().flat_map(|r| r.iter()));
        if let (Some(kid), Some(source)) = (&header.kid, &self.remote) {
            if !all.clone().any(|k| k.kid.as_ref() == Some(kid)) {
                source.inner.wanted.notify_one();
                return Err(Error::invalid(format!(
                    "no key has the JWT's key id {kid:?}; fetching {} again (a key rotation \
                     is picked up within seconds)",
                    source.url()
                )));
            }
        }
        let mut last = None;
        for key in all.filter(|k| {
            k.alg == header.alg
                && match (&k.kid, &header.kid) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                }
        }) {
            let mut validation = Validation::new(key.alg);
            validation.set_issuer(&[&self.settings.issuer]);
            validation.set_audience(&[&self.settings.audience]);
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            validation.validate_nbf = true;
            validation.leeway = self.leeway;
            match jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation) {
                Ok(data) => return Ok(self.principal(&data.claims).with_credential(token)),
                Err(e) => last = Some(e),
            }
        }
        Err(Error::invalid(match last {
            Some(e) => format!("the JWT was refused: {e}"),
            None => format!("no configured key verifies {:?} JWTs", header.alg),
        }))
    }

    fn principal(&self, claims: &serde_json::Value) -> Principal {
        let sub = claims.get("sub").and_then(|v| v.as_str()).unwrap_or("");
        let words = |name: &str| -> Option<Vec<String>> {
            match claims.get(name)? {
                serde_json::Value::Array(items) => Some(
                    items
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect(),
                ),
                serde_json::Value::String(s) => Some(
                    s.split([' ', ','])
                        .filter(|w| !w.is_empty())
                        .map(str::to_string)
                        .collect(),
                ),
                _ => None,
            }
        };
        let roles = words(self.settings.roles_claim.as_deref().unwrap_or("roles"))
            .unwrap_or_default()
            .into_iter()
            .filter(|r| !r.contains(',') && !r.is_empty())
            .collect();
        let scopes = match words(self.settings.scopes_claim.as_deref().unwrap_or("scope")) {
            Some(words) => words.iter().filter_map(|w| w.parse().ok()).collect(),
            None => self
                .settings
                .default_scopes
                .clone()
                .unwrap_or_else(|| vec![Scope::Invoke]),
        };
        let mut principal = Principal::new(format!("jwt:{sub}"), scopes)
            .with_roles(roles)
            .with_claim("iss", self.settings.issuer.as_str())
            .with_claim("sub", sub);
        for name in &self.settings.claims {
            let value = match claims.get(name) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Null) | None => continue,
                Some(other) => other.to_string(),
            };
            principal = principal.with_claim(name.as_str(), value);
        }
        principal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    use serde_json::json;

    fn b64url(bytes: &[u8]) -> String {
        const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |acc, b| acc << 8 | *b as u32) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    fn settings() -> JwtSettings {
        JwtSettings {
            issuer: "https://idp".into(),
            audience: "sb".into(),
            claims: vec!["team".into()],
            ..JwtSettings::default()
        }
    }

    fn claims(exp_offset: i64) -> serde_json::Value {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        json!({"iss": "https://idp", "aud": "sb", "sub": "carol", "exp": now + exp_offset,
               "roles": "payments ops", "team": "billing"})
    }

    #[test]
    fn an_hs256_secret_verifies_and_a_wrong_secret_or_an_expiry_does_not() {
        let secret = "0123456789abcdef0123456789abcdef-test";
        std::env::set_var("SB_TEST_JWT_SECRET_A", secret);
        let verifier = JwtVerifier::new(JwtSettings {
            hs256_secret_env: Some("SB_TEST_JWT_SECRET_A".into()),
            ..settings()
        })
        .unwrap();
        let key = EncodingKey::from_secret(secret.as_bytes());
        let token = encode(&Header::default(), &claims(600), &key).unwrap();
        let p = verifier.verify(&token).unwrap();
        assert_eq!(p.id, "jwt:carol");
        assert_eq!(p.roles, ["payments", "ops"]);
        assert_eq!(p.scopes, [Scope::Invoke], "no scope claim: the default");
        assert_eq!(p.claims["team"], "billing");
        let expired = encode(&Header::default(), &claims(-3600), &key).unwrap();
        assert!(verifier.verify(&expired).is_err());
        let other = EncodingKey::from_secret(b"another-secret-another-secret-xx");
        assert!(verifier
            .verify(&encode(&Header::default(), &claims(600), &other).unwrap())
            .is_err());
        // A short secret, or no key at all, is refused at load.
        std::env::set_var("SB_TEST_JWT_SECRET_B", "short");
        assert!(JwtVerifier::new(JwtSettings {
            hs256_secret_env: Some("SB_TEST_JWT_SECRET_B".into()),
            ..settings()
        })
        .is_err());
        assert!(JwtVerifier::new(settings()).is_err());
    }

    #[test]
    fn a_jwks_file_verifies_by_kid() {
        let mut bytes = [0u8; 32];
        let secret = loop {
            getrandom::fill(&mut bytes).unwrap();
            if let Ok(k) = p256::SecretKey::from_slice(&bytes) {
                break k;
            }
        };
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let point = secret.public_key().to_encoded_point(false);
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig",
            "x": b64url(point.x().unwrap()), "y": b64url(point.y().unwrap())}]});
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks.to_string()).unwrap();
        let verifier = JwtVerifier::new(JwtSettings {
            jwks_file: Some(path),
            ..settings()
        })
        .unwrap();
        let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        let token = encode(&header, &claims(600), &key).unwrap();
        assert_eq!(verifier.verify(&token).unwrap().id, "jwt:carol");
        header.kid = Some("k2".into());
        let unknown_kid = encode(&header, &claims(600), &key).unwrap();
        assert!(verifier.verify(&unknown_kid).is_err());
    }

    #[test]
    fn a_jwks_url_is_https_or_loopback_http() {
        for ok in [
            "https://idp.example.com/jwks",
            "http://127.0.0.1:8080/jwks",
            "http://localhost/jwks",
            "http://[::1]:9/jwks",
        ] {
            let verifier = JwtVerifier::new(JwtSettings {
                jwks_url: Some(ok.into()),
                ..settings()
            })
            .unwrap();
            assert_eq!(verifier.remote_keys().unwrap().url(), ok);
        }
        for bad in [
            "http://idp.example.com/jwks",
            "ftp://127.0.0.1/jwks",
            "jwks",
        ] {
            let err = JwtVerifier::new(JwtSettings {
                jwks_url: Some(bad.into()),
                ..settings()
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains("jwks_url"), "{bad}: {err}");
        }
        let keys = JwtVerifier::new(JwtSettings {
            jwks_url: Some("https://idp.example.com/jwks".into()),
            ..settings()
        })
        .unwrap()
        .remote_keys()
        .unwrap();
        assert!(keys.replace(b"{\"keys\": 3}").is_err());
        assert_eq!(keys.replace(b"{\"keys\": []}").unwrap(), 0);
    }

    #[test]
    fn discovery_takes_the_issuer_and_excludes_jwks_url() {
        let keys = JwtVerifier::new(JwtSettings {
            discover_jwks: true,
            ..settings()
        })
        .unwrap()
        .remote_keys()
        .unwrap();
        assert!(keys.discovered());
        assert_eq!(keys.url(), "https://idp");
        let both = JwtVerifier::new(JwtSettings {
            discover_jwks: true,
            jwks_url: Some("https://idp/jwks".into()),
            ..settings()
        })
        .unwrap_err()
        .to_string();
        assert!(both.contains("not both"), "{both}");
        let plain = JwtVerifier::new(JwtSettings {
            issuer: "http://idp.example.com".into(),
            discover_jwks: true,
            ..settings()
        })
        .unwrap_err()
        .to_string();
        assert!(plain.contains("issuer (discover_jwks)"), "{plain}");
    }
}
