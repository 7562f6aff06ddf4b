//! The API tokens Switchboard issues, as stored under `tokens/{token_id}`:
//! a name, scopes, roles, an expiry and a revocation time, and the SHA-256
//! of the secret (never the secret itself).

use serde::{Deserialize, Serialize};

/// What a principal may do at all, before any policy is asked: the coarse
/// permission each HTTP route requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Manage agents, policies and tokens (implies the other scopes).
    Admin,
    /// Call tools (`/v1/invoke`, MCP `tools/call`) and list what may be called.
    Invoke,
    /// Read the audit trail and metrics (`/v1/scan`, `/v1/metrics`).
    Audit,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 3] = [Scope::Admin, Scope::Invoke, Scope::Audit];

    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Invoke => "invoke",
            Scope::Audit => "audit",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                crate::Error::invalid(format!("unknown scope {s:?}; use admin, invoke or audit"))
            })
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The prefix of issued tokens; written only by the token store.
pub(crate) const TOKENS: &str = "tokens/";

/// `tokens/{token_id}`
pub fn token_key(token_id: &str) -> String {
    format!("{TOKENS}{token_id}")
}

/// The value under `tokens/{token_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// The token's id (also the key's last segment); its caller id is `token:{id}`.
    pub token_id: String,
    /// A name for people (`ci-deployer`).
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// The roles policies see.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Lowercase hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// When it was issued (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When it stops working, if ever (ms since the Unix epoch).
    pub expires_at_ms: Option<u64>,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<u64>,
    /// The caller that issued it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

impl TokenRecord {
    /// The caller id records keep for this token.
    pub fn caller_id(&self) -> String {
        format!("token:{}", self.token_id)
    }

    /// Whether it is usable at `now_ms`: not revoked, not expired.
    pub fn is_active(&self, now_ms: u64) -> bool {
        self.revoked_at_ms.is_none() && self.expires_at_ms.is_none_or(|at| now_ms < at)
    }
}
