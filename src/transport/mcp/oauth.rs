//! OAuth 2.0 client credentials (RFC 6749 §4.4) toward one MCP agent: where
//! its token endpoint is (given, or discovered through the MCP server's
//! Protected Resource Metadata, RFC 9728, and its authorization server's
//! metadata, RFC 8414 or OpenID Connect discovery), the token requests
//! (the client authenticated by a secret, or by a JWT it signs with its
//! private key, `private_key_jwt`, RFC 7523 §2.2), and
//! the one token a registration holds ([`Tokens`]: shared by its calls,
//! fetched once when several wait for it, refreshed shortly before it
//! expires, forgotten when the upstream answers 401); and [`OAuthHttp`],
//! the streamable-HTTP client that asks for the current token at each
//! request, so a refreshed token serves an open session.

use crate::namespace::{
    is_scope_token, EnvValue, IdentityProvider, UpstreamOAuth, MAX_OAUTH_SCOPES,
};
use crate::policy::CallerCredential;
use crate::policy::NetworkPolicy;
use crate::transport::{error_chain, read_bounded, BodyError};
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use reqwest::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::common::client_side_sse::BoxedSseResponse;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
    StreamableHttpResponseLimits,
};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long one metadata or token request may take, its body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest metadata document or token response read: real ones are a
/// few kilobytes, and a server must not make Switchboard buffer more.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// A token is replaced once less than this (or half its lifetime, if that
/// is shorter) remains, so a request never leaves with one about to expire.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);
/// The longest `expires_in` believed, so an absurd one cannot keep a
/// revoked token in use (or overflow an instant).
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long a client assertion is valid: it is made for one token request.
const ASSERTION_LIFETIME_SECS: u64 = 60;
/// RFC 8693 §2.1: the grant that exchanges one token for another.
const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 §3: what is asked for, and the prefix of what is given.
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const TOKEN_TYPE_PREFIX: &str = "urn:ietf:params:oauth:token-type:";
/// The identity assertion grant's token (MCP's enterprise-managed
/// authorization), and the grant that presents it (RFC 7523 §2.1).
const ID_JAG_TYPE: &str = "urn:ietf:params:oauth:token-type:id-jag";
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// RFC 7523 §2.2: the `client_assertion_type` of a JWT client assertion.
const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The DER object identifiers of the NIST curves in a PKCS#8 EC key, which
/// say the ECDSA algorithm it signs with.
const P256_OID: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
const P384_OID: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];

/// How the client authenticates to the token endpoint (RFC 6749 §2.3.1,
/// RFC 7523 §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientAuth {
    /// `client_id` and `client_secret` in the form.
    Post,
    /// HTTP Basic, for a server whose metadata offers only that.
    Basic,
    /// A JWT signed with the client's private key (`private_key_jwt`).
    PrivateKeyJwt,
}

/// A token endpoint and how to authenticate to it.
struct TokenEndpoint {
    url: reqwest::Url,
    auth: ClientAuth,
    /// The authorization server's issuer, when discovered: the audience of
    /// a client assertion.
    issuer: Option<String>,
    /// The algorithms it takes client assertions in, when its metadata says.
    signing_algorithms: Option<Vec<String>>,
    /// The MCP server's `scopes_supported` (RFC 9728), when discovered:
    /// what is asked for when neither `scopes` nor a challenge names any.
    scopes_supported: Vec<String>,
}

struct Token {
    value: String,
    /// When to fetch a new one; `None`: the server gave no lifetime, so it
    /// is used until the upstream rejects it.
    refresh_at: Option<Instant>,
}

/// Discovered once per registration (or given), for its callers too.
type EndpointCell = Arc<std::sync::OnceLock<Arc<TokenEndpoint>>>;

#[derive(Default)]
struct Held {
    token: Option<Token>,
    /// Scopes the upstream's challenges named (the `scope` of a 401's, or
    /// of a 403 `insufficient_scope`'s, `WWW-Authenticate`), asked for from
    /// then on besides `scopes`.
    challenged: Vec<String>,
}

/// How the upstream refused a token.
pub(crate) enum Refusal {
    /// 401: not (or no longer) a valid token.
    Unauthorized,
    /// 403 `insufficient_scope`: valid, but without the scope it needs.
    InsufficientScope,
}

/// The OAuth token of one MCP agent registration, or of one caller of it.
pub(crate) struct Tokens {
    agent_id: String,
    mcp_url: String,
    oauth: UpstreamOAuth,
    http: reqwest::Client,
    /// The caller's JWT that each token is exchanged for (RFC 8693), for
    /// the tokens of one caller; `None`: the client's own
    /// (`client_credentials`).
    subject: Option<CallerCredential>,
    endpoint: EndpointCell,
    /// Held across a fetch: requests that need a token meanwhile wait for
    /// that one instead of each asking the authorization server.
    held: tokio::sync::Mutex<Held>,
}

impl Tokens {
    pub(crate) fn new(
        agent_id: String,
        mcp_url: String,
        oauth: UpstreamOAuth,
        http: reqwest::Client,
    ) -> Self {
        Tokens {
            agent_id,
            mcp_url,
            oauth,
            http,
            subject: None,
            endpoint: EndpointCell::default(),
            held: tokio::sync::Mutex::default(),
        }
    }

    /// Whether calls exchange their caller's token (`oauth.token_exchange`).
    pub(crate) fn exchanges(&self) -> bool {
        self.oauth.token_exchange.is_some()
    }

    /// The tokens of the caller who presented `subject`: exchanged for it,
    /// at the token endpoint these found (or will find).
    pub(crate) fn for_caller(&self, subject: CallerCredential) -> Tokens {
        Tokens {
            agent_id: self.agent_id.clone(),
            mcp_url: self.mcp_url.clone(),
            oauth: self.oauth.clone(),
            http: self.http.clone(),
            subject: Some(subject),
            endpoint: self.endpoint.clone(),
            held: tokio::sync::Mutex::default(),
        }
    }

    /// The token to send now: the held one while it is fresh, else a new
    /// one. The error names the agent and the endpoint, never the secret.
    pub(crate) async fn token(&self) -> Result<String, String> {
        let mut held = self.held.lock().await;
        if let Some(token) = &held.token {
            if token.refresh_at.is_none_or(|at| Instant::now() < at) {
                return Ok(token.value.clone());
            }
        }
        let endpoint = match self.endpoint.get() {
            Some(endpoint) => endpoint.clone(),
            None => {
                let endpoint = Arc::new(self.endpoint().await.map_err(|e| {
                    format!(
                        "cannot find the OAuth token endpoint of MCP agent {}: {e}; give \
                         oauth.token_url to skip discovery",
                        self.agent_id
                    )
                })?);
                // Another holder of the cell may have set it meanwhile: the same.
                let _ = self.endpoint.set(endpoint.clone());
                endpoint
            }
        };
        let scopes = self.scopes_to_ask(&held.challenged, &endpoint);
        let token = self.request(&endpoint, &scopes).await.map_err(|e| {
            let what = match self.subject {
                Some(_) => "exchange the caller's token for",
                None => "obtain",
            };
            format!(
                "cannot {what} an OAuth token for MCP agent {} from {}: {e}",
                self.agent_id, endpoint.url
            )
        })?;
        tracing::debug!(agent_id = %self.agent_id, token_url = %endpoint.url, "obtained an OAuth token for an MCP agent");
        let value = token.value.clone();
        held.token = Some(token);
        Ok(value)
    }

    /// The scopes a token request asks for, as MCP's scope selection
    /// strategy orders them: `scopes` (with what challenges named since),
    /// else what a challenge named, else the MCP server's
    /// `scopes_supported`, else none (the server's default).
    fn scopes_to_ask(&self, challenged: &[String], endpoint: &TokenEndpoint) -> Vec<String> {
        let mut scopes = if self.oauth.scopes.is_empty() && challenged.is_empty() {
            endpoint.scopes_supported.clone()
        } else {
            self.oauth.scopes.clone()
        };
        for scope in challenged {
            if !scopes.contains(scope) {
                scopes.push(scope.clone());
            }
        }
        scopes
    }

    /// Takes in that the upstream refused `rejected` (`challenge`: its
    /// `WWW-Authenticate`), and says whether one retry with a new token may
    /// succeed. A 401 drops the token (revoked, or expired early): yes. A
    /// 403 `insufficient_scope` naming scopes not asked for yet drops it
    /// and asks for those too from now on (step-up): yes; naming none new,
    /// a new token would be the same: no, which bounds the retries. A
    /// newer token fetched meanwhile is kept.
    pub(crate) async fn refused(
        &self,
        rejected: &str,
        refusal: Refusal,
        challenge: Option<&str>,
    ) -> bool {
        let mut held = self.held.lock().await;
        let named = challenge.and_then(challenge_scope).unwrap_or_default();
        let mut added = 0;
        for scope in named.split(' ').filter(|s| is_scope_token(s)) {
            let known = self.oauth.scopes.iter().any(|s| s == scope)
                || held.challenged.iter().any(|s| s == scope);
            // A server cannot make the request grow without bound.
            if !known && self.oauth.scopes.len() + held.challenged.len() < MAX_OAUTH_SCOPES {
                held.challenged.push(scope.to_string());
                added += 1;
            }
        }
        let current = held.token.as_ref().is_some_and(|t| t.value == rejected);
        if matches!(refusal, Refusal::InsufficientScope) && added == 0 && current {
            return false;
        }
        if current {
            held.token = None;
        }
        if added > 0 {
            tracing::info!(agent_id = %self.agent_id, scopes = %held.challenged.join(" "), "an MCP agent asked for more OAuth scopes; asking for them from now on");
        }
        true
    }

    /// The token endpoint: `token_url`, or discovered from the MCP url.
    async fn endpoint(&self) -> Result<TokenEndpoint, String> {
        if let Some(url) = &self.oauth.token_url {
            let url = reqwest::Url::parse(url).map_err(|e| format!("{url:?}: {e}"))?;
            let auth = if self.oauth.private_key.is_some() {
                ClientAuth::PrivateKeyJwt
            } else {
                ClientAuth::Post
            };
            return Ok(TokenEndpoint {
                url,
                auth,
                issuer: None,
                signing_algorithms: None,
                scopes_supported: Vec::new(),
            });
        }
        let mcp = reqwest::Url::parse(&self.mcp_url).map_err(|e| e.to_string())?;
        let (at, resource) = self
            .document(&well_known(&mcp, &["oauth-protected-resource"], false))
            .await?;
        // RFC 9728 §3.3: metadata naming another resource must not be used
        // (it would let one server send Switchboard's credentials to
        // another's authorization server).
        if let Some(named) = resource.get("resource").and_then(Value::as_str) {
            if !same_uri(named, mcp.as_str()) {
                return Err(format!("{at} describes resource {named:?}, not {mcp}"));
            }
        }
        let Some(issuer) = resource
            .get("authorization_servers")
            .and_then(|servers| servers.get(0))
            .and_then(Value::as_str)
        else {
            return Err(format!("{at} lists no authorization_servers"));
        };
        let issuer_url = http_url(issuer).map_err(|e| format!("{at}: authorization server {e}"))?;
        let (at, metadata) = self
            .document(&well_known(
                &issuer_url,
                &["oauth-authorization-server", "openid-configuration"],
                true,
            ))
            .await?;
        // RFC 8414 §3.3: the metadata must be the issuer's own.
        if metadata
            .get("issuer")
            .and_then(Value::as_str)
            .map(|i| same_uri(i, issuer))
            != Some(true)
        {
            return Err(format!("{at} is not the metadata of issuer {issuer:?}"));
        }
        let Some(token_endpoint) = metadata.get("token_endpoint").and_then(Value::as_str) else {
            return Err(format!("{at} has no token_endpoint"));
        };
        let url = http_url(token_endpoint).map_err(|e| format!("{at}: token_endpoint {e}"))?;
        let methods = metadata
            .get("token_endpoint_auth_methods_supported")
            .and_then(Value::as_array)
            .map(|methods| methods.iter().filter_map(Value::as_str).collect::<Vec<_>>());
        let auth = match methods {
            _ if self.oauth.private_key.is_some() => match methods {
                Some(methods) if !methods.contains(&"private_key_jwt") => {
                    return Err(format!(
                        "{at}: the token endpoint does not take private_key_jwt (it offers \
                         {methods:?}); give oauth.client_secret instead of oauth.private_key"
                    ))
                }
                _ => ClientAuth::PrivateKeyJwt,
            },
            None => ClientAuth::Post,
            Some(methods) if methods.contains(&"client_secret_post") => ClientAuth::Post,
            Some(methods) if methods.contains(&"client_secret_basic") => ClientAuth::Basic,
            Some(methods) => {
                return Err(format!(
                    "{at}: the token endpoint takes neither client_secret_post nor \
                     client_secret_basic (it offers {methods:?})"
                ))
            }
        };
        let signing_algorithms = metadata
            .get("token_endpoint_auth_signing_alg_values_supported")
            .and_then(Value::as_array)
            .map(|algorithms| {
                algorithms
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            });
        let scopes_supported = resource
            .get("scopes_supported")
            .and_then(Value::as_array)
            .map(|scopes| {
                scopes
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|scope| is_scope_token(scope))
                    .take(MAX_OAUTH_SCOPES)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(TokenEndpoint {
            url,
            auth,
            issuer: Some(issuer.to_string()),
            signing_algorithms,
            scopes_supported,
        })
    }

    /// The first of `urls` that answers a JSON object, and where it is.
    /// Other answers move on to the next; a network failure ends the search
    /// (the others are on the same host).
    async fn document(&self, urls: &[reqwest::Url]) -> Result<(reqwest::Url, Value), String> {
        let mut answers = Vec::new();
        for url in urls {
            let request = self
                .http
                .get(url.clone())
                .header(ACCEPT, "application/json");
            let (status, body) = send(request, url).await?;
            match serde_json::from_slice::<Value>(&body) {
                Ok(document @ Value::Object(_)) if (200..300).contains(&status) => {
                    return Ok((url.clone(), document))
                }
                _ => answers.push(format!(
                    "{url} answered HTTP {status} without JSON metadata"
                )),
            }
        }
        Err(answers.join("; "))
    }

    /// One token request: `grant_type=client_credentials`, or for a
    /// caller the token exchange of the caller's JWT (RFC 8693 §2.1), the
    /// client authenticating the same way.
    async fn request(&self, endpoint: &TokenEndpoint, scopes: &[String]) -> Result<Token, String> {
        let scope = scopes.join(" ");
        let resource = self.oauth.resource.as_deref().unwrap_or(&self.mcp_url);
        let exchange = self.oauth.token_exchange.clone().unwrap_or_default();
        let subject_type = format!(
            "{TOKEN_TYPE_PREFIX}{}",
            exchange
                .subject_token_type
                .as_deref()
                .unwrap_or("access_token")
        );
        // With an identity provider, the caller's token is first exchanged
        // there for an identity assertion, which this request presents.
        let identity_assertion = match (&self.subject, &exchange.identity_provider) {
            (Some(subject), Some(provider)) => Some(
                self.identity_assertion(endpoint, subject, provider, &subject_type, &scope)
                    .await?,
            ),
            _ => None,
        };
        let mut form = match (&self.subject, &identity_assertion) {
            (None, _) => vec![("grant_type", "client_credentials")],
            (Some(_), Some(assertion)) => vec![
                ("grant_type", JWT_BEARER_GRANT),
                ("assertion", assertion.as_str()),
            ],
            (Some(subject), None) => vec![
                ("grant_type", TOKEN_EXCHANGE_GRANT),
                ("subject_token", subject.expose()),
                ("subject_token_type", &subject_type),
                ("requested_token_type", ACCESS_TOKEN_TYPE),
            ],
        };
        form.push(("resource", resource));
        if let (Some(_), None, Some(audience)) =
            (&self.subject, &identity_assertion, &exchange.audience)
        {
            form.push(("audience", audience));
        }
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        let mut request = self
            .http
            .post(endpoint.url.clone())
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        // What authenticates the client: kept out of error texts.
        let credential = match endpoint.auth {
            ClientAuth::PrivateKeyJwt => self.assertion(endpoint)?,
            ClientAuth::Post | ClientAuth::Basic => self.secret()?,
        };
        match endpoint.auth {
            ClientAuth::Post => {
                form.push(("client_id", &self.oauth.client_id));
                form.push(("client_secret", &credential));
            }
            // RFC 6749 §2.3.1: both are form-encoded before Basic encoding.
            ClientAuth::Basic => {
                request = request.basic_auth(
                    form_encode(&self.oauth.client_id),
                    Some(form_encode(&credential)),
                );
            }
            ClientAuth::PrivateKeyJwt => {
                form.push(("client_id", &self.oauth.client_id));
                form.push(("client_assertion_type", JWT_BEARER_ASSERTION));
                form.push(("client_assertion", &credential));
            }
        }
        let body: Vec<String> = form
            .iter()
            .map(|(name, value)| format!("{}={}", form_encode(name), form_encode(value)))
            .collect();
        let asked = Instant::now();
        let (status, body) = send(request.body(body.join("&")), &endpoint.url).await?;
        let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            // RFC 6749 §5.2: `error`, and maybe `error_description`.
            let said = ["error", "error_description"]
                .iter()
                .filter_map(|field| answer.get(field).and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(": ");
            let said = if said.is_empty() {
                String::new()
            } else {
                format!(" ({said})")
            };
            // A server could echo what it was sent; the credentials stay out.
            let mut said = said.replace(&credential, "<credential>");
            if let Some(subject) = &self.subject {
                said = said.replace(subject.expose(), "<caller's token>");
            }
            if let Some(assertion) = &identity_assertion {
                said = said.replace(assertion, "<identity assertion>");
            }
            let check = match (&self.oauth.client_secret, &self.oauth.private_key) {
                (Some(secret), _) => format!("the secret {secret} points to"),
                (None, Some(key)) => format!(
                    "that the authorization server holds the public key of the private key {key} \
                     points to"
                ),
                (None, None) => "the client's credential".to_string(),
            };
            let what = if self.subject.is_some() {
                "; the caller's token may also be one the authorization server does not \
                 exchange (expired, another issuer, or oauth.token_exchange.subject_token_type \
                 not what it is)"
            } else {
                ""
            };
            return Err(format!(
                "HTTP {status}{said}; check oauth.client_id, {check}, and oauth.scopes{what}"
            ));
        }
        let Some(value) = answer.get("access_token").and_then(Value::as_str) else {
            return Err(format!("HTTP {status} without an access_token"));
        };
        let token_type = answer.get("token_type").and_then(Value::as_str);
        if !token_type.is_some_and(|t| t.eq_ignore_ascii_case("bearer")) {
            return Err(format!(
                "the token's type is {token_type:?}, not Bearer (the only kind sent upstream)"
            ));
        }
        if value.is_empty() || HeaderValue::from_str(&format!("Bearer {value}")).is_err() {
            return Err("the access_token is not a valid header value".into());
        }
        // Some servers send the number as a string.
        let expires_in = match answer.get("expires_in") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        let refresh_at = expires_in.map(|seconds| {
            let lifetime = Duration::from_secs(seconds).min(MAX_LIFETIME);
            asked + lifetime - REFRESH_MARGIN.min(lifetime / 2)
        });
        Ok(Token {
            value: value.to_string(),
            refresh_at,
        })
    }

    /// The identity assertion (ID-JAG) the identity provider issues for
    /// the caller who presented `subject` (RFC 8693 §2.1 with
    /// `requested_token_type` id-jag), for the authorization server of
    /// `endpoint` and this MCP server.
    async fn identity_assertion(
        &self,
        endpoint: &TokenEndpoint,
        subject: &CallerCredential,
        provider: &IdentityProvider,
        subject_type: &str,
        scope: &str,
    ) -> Result<String, String> {
        let url = http_url(&provider.token_url)
            .map_err(|e| format!("oauth.token_exchange.identity_provider.token_url {e}"))?;
        let exchange = self.oauth.token_exchange.as_ref();
        let audience = exchange
            .and_then(|e| e.audience.clone())
            .or_else(|| endpoint.issuer.clone())
            .unwrap_or_else(|| endpoint.url.to_string());
        let resource = self.oauth.resource.as_deref().unwrap_or(&self.mcp_url);
        let secret = match &provider.client_secret {
            Some(reference) => Some(read_credential(
                "token_exchange.identity_provider.client_secret",
                Some(reference),
            )?),
            None => None,
        };
        let mut form = vec![
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("requested_token_type", ID_JAG_TYPE),
            ("subject_token", subject.expose()),
            ("subject_token_type", subject_type),
            ("audience", &audience),
            ("resource", resource),
            ("client_id", &provider.client_id),
        ];
        if !scope.is_empty() {
            form.push(("scope", scope));
        }
        if let Some(secret) = &secret {
            form.push(("client_secret", secret));
        }
        let body: Vec<String> = form
            .iter()
            .map(|(name, value)| format!("{}={}", form_encode(name), form_encode(value)))
            .collect();
        let request = self
            .http
            .post(url.clone())
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body.join("&"));
        let failed = |why: String| {
            let mut why = why.replace(subject.expose(), "<caller's token>");
            if let Some(secret) = &secret {
                why = why.replace(secret, "<secret>");
            }
            format!("the identity provider {url} gave no identity assertion for the caller: {why}")
        };
        let (status, body) = send(request, &url).await.map_err(failed)?;
        let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let said = ["error", "error_description"]
                .iter()
                .filter_map(|field| answer.get(field).and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(": ");
            return Err(failed(format!(
                "HTTP {status} ({said}); check oauth.token_exchange.identity_provider and that \
                 the caller's token is one it exchanges"
            )));
        }
        let issued = answer.get("issued_token_type").and_then(Value::as_str);
        match answer.get("access_token").and_then(Value::as_str) {
            Some(assertion) if issued == Some(ID_JAG_TYPE) && !assertion.is_empty() => {
                Ok(assertion.to_string())
            }
            _ => Err(failed(format!(
                "HTTP {status} without an access_token of issued_token_type {ID_JAG_TYPE} \
                 (issued_token_type {issued:?})"
            ))),
        }
    }

    /// The client secret, read where `client_secret` says, at each token
    /// request (a rotated secret is picked up by the next one).
    fn secret(&self) -> Result<String, String> {
        read_credential("client_secret", self.oauth.client_secret.as_deref())
    }

    /// A client assertion (RFC 7523 §3) for one request to `endpoint`,
    /// signed with the key `private_key` points to, read at each token
    /// request like a secret.
    fn assertion(&self, endpoint: &TokenEndpoint) -> Result<String, String> {
        let reference = self.oauth.private_key.as_deref().unwrap_or_default();
        let pem = read_credential("private_key", self.oauth.private_key.as_deref())?;
        let (key, algorithm) = signing_key(&pem, self.oauth.signing_algorithm.as_deref())
            .map_err(|e| format!("oauth.private_key: the key {reference} points to {e}"))?;
        if let Some(supported) = &endpoint.signing_algorithms {
            let name = format!("{algorithm:?}");
            if !supported.contains(&name) {
                return Err(format!(
                    "the authorization server takes client assertions signed with {supported:?}, \
                     not {name}; set oauth.signing_algorithm, or give a key of one of those kinds"
                ));
            }
        }
        // RFC 7523 §3: the audience identifies the authorization server; the
        // issuer when known (as MCP's client credentials extension asks),
        // else the token endpoint, which the RFC allows.
        let audience = self
            .oauth
            .assertion_audience
            .clone()
            .or_else(|| endpoint.issuer.clone())
            .unwrap_or_else(|| endpoint.url.to_string());
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti)
            .map_err(|e| format!("no randomness for the assertion's jti: {e}"))?;
        let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({
            "iss": self.oauth.client_id,
            "sub": self.oauth.client_id,
            "aud": audience,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
            "jti": jti,
        });
        jsonwebtoken::encode(&Header::new(algorithm), &claims, &key).map_err(|e| {
            format!(
                "oauth.private_key: the key {reference} points to cannot sign {algorithm:?}: {e}"
            )
        })
    }
}

/// The credential `field` of `oauth` (`client_secret` or `private_key`),
/// read where its reference says.
fn read_credential(field: &str, reference: Option<&str>) -> Result<String, String> {
    let Some(reference) = reference else {
        return Err(format!("oauth.{field} is not given"));
    };
    let value = match EnvValue::of(reference) {
        EnvValue::Variable(var) => std::env::var(var).map_err(|_| {
            format!(
                "oauth.{field} is {reference}, but {var} is not set (or not UTF-8) in this \
                 node's environment; set it where Switchboard starts"
            )
        }),
        EnvValue::File(path) => super::read_secret_file(path)
            .map_err(|e| format!("oauth.{field}: cannot read {reference:?}: {e}")),
        // Registration refuses these; a record from elsewhere is not trusted.
        EnvValue::Literal(_) => Err(format!(
            "oauth.{field} is not a reference (\"${{VAR}}\" or \"file:PATH\")"
        )),
    }?;
    // An empty credential is a missing one (and would garble the scrubbing
    // of error texts).
    if value.is_empty() {
        return Err(format!("oauth.{field}: {reference} is empty on this node"));
    }
    Ok(value)
}

/// The signing key in `pem` and the algorithm it signs with: `configured`,
/// if it suits the key, else the key's own (ES256 or ES384 by the curve of
/// an EC key, RS256 for RSA, EdDSA for Ed25519). The error completes "the
/// key … points to".
fn signing_key(pem: &str, configured: Option<&str>) -> Result<(EncodingKey, Algorithm), String> {
    let pem = pem.as_bytes();
    let (key, own) = if let Ok(key) = EncodingKey::from_ec_pem(pem) {
        let der = key.as_bytes();
        let curve = if memchr::memmem::find(der, P256_OID).is_some() {
            Algorithm::ES256
        } else if memchr::memmem::find(der, P384_OID).is_some() {
            Algorithm::ES384
        } else {
            return Err("is an EC key on a curve other than P-256 and P-384".into());
        };
        (key, curve)
    } else if let Ok(key) = EncodingKey::from_rsa_pem(pem) {
        (key, Algorithm::RS256)
    } else if let Ok(key) = EncodingKey::from_ed_pem(pem) {
        (key, Algorithm::EdDSA)
    } else {
        return Err(
            "is not a PEM private key (PKCS#8 \"BEGIN PRIVATE KEY\", or PKCS#1 \"BEGIN RSA \
             PRIVATE KEY\"); convert a SEC1 \"BEGIN EC PRIVATE KEY\" with `openssl pkcs8 -topk8 \
             -nocrypt`"
                .into(),
        );
    };
    let Some(name) = configured else {
        return Ok((key, own));
    };
    let algorithm: Algorithm = name
        .parse()
        .map_err(|_| format!("cannot sign oauth.signing_algorithm {name:?}"))?;
    // An EC key signs with its curve's algorithm only.
    let fits = match key.family() {
        AlgorithmFamily::Ec => algorithm == own,
        family => algorithm.family() == family,
    };
    if !fits {
        return Err(format!(
            "is a {:?} key, which signs {own:?}, not oauth.signing_algorithm {name}",
            key.family()
        ));
    }
    Ok((key, algorithm))
}

/// Sends `request` to `url` under the node's address policy, with a time
/// bound, and reads at most [`MAX_BODY_BYTES`] of the answer.
async fn send(
    request: reqwest::RequestBuilder,
    url: &reqwest::Url,
) -> Result<(u16, Vec<u8>), String> {
    NetworkPolicy::current()
        .check_url(url)
        .map_err(|e| format!("{url}: {e}"))?;
    let response = request
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
    let status = response.status().as_u16();
    let body = read_bounded(response, MAX_BODY_BYTES)
        .await
        .map_err(|e| match e {
            BodyError::TooLong(_) => format!("{url} answered more than {MAX_BODY_BYTES} bytes"),
            BodyError::Broken(chain) => format!("{url}: {chain}"),
        })?;
    Ok((status, body))
}

/// The `scope` parameter of a Bearer challenge (RFC 6750 §3), quoted or
/// not; only a parameter named exactly `scope`.
fn challenge_scope(challenge: &str) -> Option<String> {
    let mut rest = challenge.trim_start();
    // The scheme, then `name=value` pairs separated by commas.
    rest = rest
        .strip_prefix("Bearer")
        .or_else(|| rest.strip_prefix("bearer"))?;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        let (name, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, remainder) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => {
                let end = after.find([',', ' ']).unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        if name.trim().eq_ignore_ascii_case("scope") {
            return Some(value.to_string());
        }
        rest = remainder;
    }
}

/// `text` as an `http://` or `https://` URL.
fn http_url(text: &str) -> Result<reqwest::Url, String> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => Ok(url),
        _ => Err(format!("{text:?} is not an http:// or https:// URL")),
    }
}

/// The well-known URLs of `url` for each of `names`, in the order to try
/// them: the name inserted before the path (RFC 8414 §3.1, RFC 9728 §3.1),
/// then the bare one at the root (for a resource) or appended to the path
/// (OpenID Connect discovery, for an issuer with a path).
fn well_known(url: &reqwest::Url, names: &[&str], issuer: bool) -> Vec<reqwest::Url> {
    let path = url.path().trim_end_matches('/');
    let at = |path: String| {
        let mut url = url.clone();
        url.set_path(&path);
        url.set_query(None);
        url.set_fragment(None);
        url
    };
    let mut urls: Vec<reqwest::Url> = names
        .iter()
        .map(|name| at(format!("/.well-known/{name}{path}")))
        .collect();
    if !path.is_empty() {
        if issuer {
            urls.push(at(format!("{path}/.well-known/openid-configuration")));
        } else {
            urls.extend(names.iter().map(|name| at(format!("/.well-known/{name}"))));
        }
    }
    urls
}

/// Whether two URIs name the same thing, a trailing `/` aside (a URL
/// parser adds one to a bare host).
fn same_uri(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// `application/x-www-form-urlencoded` encoding of one name or value.
fn form_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                encoded.push(byte as char)
            }
            b' ' => encoded.push('+'),
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

/// The streamable-HTTP client of an MCP agent with OAuth: each request
/// carries the current token (the `auth_token` the transport passes is
/// ignored: it has none to give), and a 401 drops that token and retries
/// once with a new one, so a token revoked or expired early costs the
/// caller nothing.
#[derive(Clone)]
pub(crate) struct OAuthHttp {
    pub(crate) http: reqwest::Client,
    pub(crate) tokens: Arc<Tokens>,
}

type HttpError = StreamableHttpError<reqwest::Error>;

impl OAuthHttp {
    async fn authorized<T, F, Fut>(&self, call: F) -> Result<T, HttpError>
    where
        F: Fn(Option<String>) -> Fut,
        Fut: Future<Output = Result<T, HttpError>>,
    {
        let token = self.tokens.token().await.map_err(no_token)?;
        match call(Some(token.clone())).await {
            Err(error) => {
                let Some((refusal, challenge)) = refusal_of(&error) else {
                    return Err(error);
                };
                if !self.tokens.refused(&token, refusal, challenge).await {
                    return Err(error);
                }
                let fresh = self.tokens.token().await.map_err(no_token)?;
                if fresh == token {
                    return Err(error);
                }
                call(Some(fresh)).await
            }
            result => result,
        }
    }
}

/// A token that could not be had, as the transport reports errors.
fn no_token(message: String) -> HttpError {
    StreamableHttpError::Io(std::io::Error::other(message))
}

/// Whether the upstream refused the token, and its challenge if it gave
/// one: a 401, with a challenge or without (the SDK reports a POST's 401
/// without `WWW-Authenticate` only as the text `HTTP 401 Unauthorized: …`,
/// a GET's or DELETE's as reqwest's status error), or a 403 with one (the
/// SDK reads every challenged 403 as `insufficient_scope`).
fn refusal_of(error: &HttpError) -> Option<(Refusal, Option<&str>)> {
    match error {
        StreamableHttpError::AuthRequired(e) => {
            Some((Refusal::Unauthorized, Some(&e.www_authenticate_header)))
        }
        StreamableHttpError::InsufficientScope(e) => {
            Some((Refusal::InsufficientScope, Some(&e.www_authenticate_header)))
        }
        StreamableHttpError::Client(e) if e.status() == Some(reqwest::StatusCode::UNAUTHORIZED) => {
            Some((Refusal::Unauthorized, None))
        }
        StreamableHttpError::UnexpectedServerResponse(text) if text.starts_with("HTTP 401 ") => {
            Some((Refusal::Unauthorized, None))
        }
        _ => None,
    }
}

impl StreamableHttpClient for OAuthHttp {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_token: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, HttpError> {
        self.authorized(|token| {
            self.http.post_message(
                uri.clone(),
                message.clone(),
                session_id.clone(),
                token,
                custom_headers.clone(),
            )
        })
        .await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_token: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, HttpError> {
        self.authorized(|token| {
            self.http.post_message_with_max_sse_event_size(
                uri.clone(),
                message.clone(),
                session_id.clone(),
                token,
                custom_headers.clone(),
                max_sse_event_size,
            )
        })
        .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_token: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, HttpError> {
        self.authorized(|token| {
            self.http.post_message_with_response_limits(
                uri.clone(),
                message.clone(),
                session_id.clone(),
                token,
                custom_headers.clone(),
                limits,
            )
        })
        .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        _auth_token: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), HttpError> {
        self.authorized(|token| {
            self.http.delete_session(
                uri.clone(),
                session_id.clone(),
                token,
                custom_headers.clone(),
            )
        })
        .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_token: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxedSseResponse, HttpError> {
        self.authorized(|token| {
            self.http.get_stream(
                uri.clone(),
                session_id.clone(),
                last_event_id.clone(),
                token,
                custom_headers.clone(),
            )
        })
        .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_token: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxedSseResponse, HttpError> {
        self.authorized(|token| {
            self.http.get_stream_with_max_sse_event_size(
                uri.clone(),
                session_id.clone(),
                last_event_id.clone(),
                token,
                custom_headers.clone(),
                max_sse_event_size,
            )
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_urls_are_tried_in_the_specifications_order() {
        let strings = |urls: Vec<reqwest::Url>| -> Vec<String> {
            urls.into_iter().map(|u| u.to_string()).collect()
        };
        let mcp = reqwest::Url::parse("https://files.example/mcp?x=1").unwrap();
        assert_eq!(
            strings(well_known(&mcp, &["oauth-protected-resource"], false)),
            [
                "https://files.example/.well-known/oauth-protected-resource/mcp",
                "https://files.example/.well-known/oauth-protected-resource",
            ]
        );
        let names = ["oauth-authorization-server", "openid-configuration"];
        let issuer = reqwest::Url::parse("https://auth.example/tenant1").unwrap();
        assert_eq!(
            strings(well_known(&issuer, &names, true)),
            [
                "https://auth.example/.well-known/oauth-authorization-server/tenant1",
                "https://auth.example/.well-known/openid-configuration/tenant1",
                "https://auth.example/tenant1/.well-known/openid-configuration",
            ]
        );
        let root = reqwest::Url::parse("https://auth.example").unwrap();
        assert_eq!(
            strings(well_known(&root, &names, true)),
            [
                "https://auth.example/.well-known/oauth-authorization-server",
                "https://auth.example/.well-known/openid-configuration",
            ]
        );
    }

    #[test]
    fn the_assertion_algorithm_comes_from_the_key_unless_configured() {
        let pem = |algorithm: &'static rcgen::SignatureAlgorithm| {
            rcgen::KeyPair::generate_for(algorithm)
                .unwrap()
                .serialize_pem()
        };
        let p256 = pem(&rcgen::PKCS_ECDSA_P256_SHA256);
        let p384 = pem(&rcgen::PKCS_ECDSA_P384_SHA384);
        let ed25519 = pem(&rcgen::PKCS_ED25519);
        for (key, own) in [
            (&p256, Algorithm::ES256),
            (&p384, Algorithm::ES384),
            (&ed25519, Algorithm::EdDSA),
        ] {
            let (signing, algorithm) = signing_key(key, None).unwrap();
            assert_eq!(algorithm, own);
            let jwt =
                jsonwebtoken::encode(&Header::new(algorithm), &serde_json::json!({}), &signing);
            assert!(jwt.is_ok(), "{own:?}: {jwt:?}");
        }
        assert_eq!(
            signing_key(&p384, Some("ES384")).unwrap().1,
            Algorithm::ES384
        );
        let err = signing_key(&p256, Some("ES384")).err().unwrap();
        assert!(
            err.contains("signs ES256") && err.contains("ES384"),
            "{err}"
        );
        let err = signing_key(&p256, Some("RS256")).err().unwrap();
        assert!(err.contains("Ec key"), "{err}");
        let err = signing_key("not a key", None).err().unwrap();
        assert!(err.contains("BEGIN PRIVATE KEY"), "{err}");
    }

    #[test]
    fn the_scope_of_a_challenge_is_read_by_its_exact_name() {
        let scope = |header: &str| challenge_scope(header);
        assert_eq!(
            scope(
                r#"Bearer error="insufficient_scope", scope="files:read files:write", resource_metadata="https://x/.well-known/oauth-protected-resource""#
            ),
            Some("files:read files:write".into())
        );
        assert_eq!(
            scope("Bearer scope=files:read, error=x"),
            Some("files:read".into())
        );
        assert_eq!(
            scope(r#"Bearer error="insufficient_scope", myscope="admin""#),
            None
        );
        assert_eq!(
            scope(r#"Bearer resource_metadata="https://x/a,scope=admin""#),
            None
        );
        assert_eq!(scope(r#"Basic realm="x", scope="admin""#), None);
        assert_eq!(scope(r#"Bearer scope="unterminated"#), None);
    }

    #[test]
    fn form_values_are_encoded() {
        assert_eq!(form_encode("a b+c/d=é"), "a+b%2Bc%2Fd%3D%C3%A9");
        assert_eq!(form_encode("read:files-1._*"), "read%3Afiles-1._*");
    }
}
