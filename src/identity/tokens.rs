//! The token store: issues API tokens (a random secret shown once, stored as
//! its SHA-256 under `tokens/{id}`), lists and revokes them, and turns a
//! presented secret into the [`Principal`] it stands for. Every check reads
//! the stored record, so a revoked or expired token is refused at once; the
//! store keeps `tokens/` in a write-through memory cache that every commit
//! updates, so a check costs no disk read and can run on the request's own
//! thread.
//!
//! In cluster mode every token (its hash, never the secret) and every
//! revocation is also kept in etcd, and each node applies them here
//! ([`TokenStore::apply_shared`]), so every node accepts and refuses the
//! same tokens.

use crate::error::{Error, Result};
use crate::namespace::{
    new_invocation_id, now_ms, token_key, validate_id, Scope, TokenRecord, TOKENS,
};
use crate::policy::{keys, PolicyContext, Principal};
use crate::storage::Database;
use sha2::{Digest, Sha256};

/// What every issued secret starts with, so it is recognisable (and
/// findable by secret scanners) wherever it leaks.
pub const TOKEN_PREFIX: &str = "sbt_";

/// What to issue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewToken {
    /// A name for people.
    pub name: String,
    /// What it may do (at least one).
    pub scopes: Vec<Scope>,
    /// Roles policies see.
    pub roles: Vec<String>,
    /// When it stops working (ms since the Unix epoch), if ever.
    pub expires_at_ms: Option<u64>,
}

/// A token just issued: its record, and the secret, which is never stored
/// and cannot be shown again.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    /// What is stored.
    pub record: TokenRecord,
    /// `sbt_{id}_{64 hex digits}`: what the caller sends as its bearer token.
    pub secret: String,
}

/// Issued tokens in one database. Cheap to clone.
#[derive(Clone)]
pub struct TokenStore {
    db: Database,
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

fn context(token_id: &str, action: &str, by: Option<&Principal>) -> PolicyContext {
    let mut ctx = PolicyContext::new()
        .with("token_id", token_id)
        .with(keys::ACTION, action);
    if let Some(by) = by {
        by.apply_to(&mut ctx);
    }
    ctx
}

/// Compares without an early exit, so timing does not reveal a partial match.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl TokenStore {
    /// The tokens of `db`.
    pub fn new(db: &Database) -> Self {
        TokenStore { db: db.clone() }
    }

    /// Issues a token; `by` is the caller issuing it (kept as `created_by`).
    pub fn create(&self, new: NewToken, by: Option<&Principal>) -> Result<IssuedToken> {
        if new.name.trim().is_empty() || new.name.chars().count() > 128 {
            return Err(Error::invalid(
                "a token needs a name of 1 to 128 characters (\"name\", --name)",
            ));
        }
        if new.scopes.is_empty() {
            return Err(Error::invalid(
                "a token needs at least one scope: admin, invoke or audit (\"scopes\", --scopes)",
            ));
        }
        for role in &new.roles {
            validate_id("role", role)?;
        }
        let now = now_ms();
        if new.expires_at_ms.is_some_and(|at| at <= now) {
            return Err(Error::invalid(
                "the expiry is in the past; give a positive lifetime (\"expires_in_secs\", --expires-in)",
            ));
        }
        let mut random = [0u8; 32];
        getrandom::fill(&mut random)
            .map_err(|e| Error::internal("no system randomness for a token", e.to_string()))?;
        let secret_part: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let token_id = new_invocation_id();
        let mut scopes = new.scopes;
        scopes.sort();
        scopes.dedup();
        let record = TokenRecord {
            token_id: token_id.clone(),
            name: new.name,
            scopes,
            roles: new.roles,
            secret_sha256: sha256_hex(secret_part.as_bytes()),
            created_at_ms: now,
            expires_at_ms: new.expires_at_ms,
            revoked_at_ms: None,
            created_by: by.map(|p| p.id.clone()),
        };
        let value = serde_json::to_vec(&record).map_err(Error::storage)?;
        self.db.owner_put_with(
            &token_key(&token_id),
            &value,
            &context(&token_id, "create_token", by),
        )?;
        Ok(IssuedToken {
            secret: format!("{TOKEN_PREFIX}{token_id}_{secret_part}"),
            record,
        })
    }

    /// Every issued token (revoked and expired ones included), by id.
    pub fn list(&self) -> Result<Vec<TokenRecord>> {
        let mut out = Vec::new();
        for kv in self.db.scan_unjudged(TOKENS, None) {
            let (_, value) = kv?;
            out.push(serde_json::from_slice(&value).map_err(Error::storage)?);
        }
        Ok(out)
    }

    /// One token's record.
    pub fn get(&self, token_id: &str) -> Result<Option<TokenRecord>> {
        validate_id("token id", token_id)?;
        match self.db.get_unjudged(&token_key(token_id))? {
            Some(bytes) => Ok(Some(
                serde_json::from_slice(&bytes).map_err(Error::storage)?,
            )),
            None => Ok(None),
        }
    }

    /// Revokes a token: from now on it is refused. Revoking twice keeps the
    /// first time. `None` if there is no such token.
    pub fn revoke(&self, token_id: &str, by: Option<&Principal>) -> Result<Option<TokenRecord>> {
        let Some(mut record) = self.get(token_id)? else {
            return Ok(None);
        };
        if record.revoked_at_ms.is_none() {
            record.revoked_at_ms = Some(now_ms());
            let value = serde_json::to_vec(&record).map_err(Error::storage)?;
            self.db.owner_put_with(
                &token_key(token_id),
                &value,
                &context(token_id, "revoke_token", by),
            )?;
        }
        Ok(Some(record))
    }

    /// Applies `record`, a token as the cluster holds it (cluster mode), to
    /// this node's store; returns whether anything changed. A revocation
    /// always applies and is never undone: a record that is not revoked
    /// leaves a token revoked here as it is (the node publishes that
    /// revocation). A token new or changed here passes the policy chain as
    /// `create_token` with `source` = `cluster`; a revocation is bookkeeping
    /// no hook can refuse, since refusing it would keep a revoked token
    /// working.
    #[cfg(feature = "cluster")]
    pub(crate) fn apply_shared(&self, record: &TokenRecord) -> Result<bool> {
        validate_id("token id", &record.token_id)?;
        let local = self.get(&record.token_id)?;
        if local.as_ref() == Some(record)
            || local.as_ref().is_some_and(|l| l.revoked_at_ms.is_some())
        {
            return Ok(false);
        }
        let value = serde_json::to_vec(record).map_err(Error::storage)?;
        let key = token_key(&record.token_id);
        if record.revoked_at_ms.is_some() {
            let ctx = context(&record.token_id, "revoke_token", None).with("source", "cluster");
            let mut tx = self.db.owner_transaction();
            tx.put_with(&key, &value, &ctx)?;
            tx.commit_bookkeeping()?;
        } else {
            let ctx = context(&record.token_id, "create_token", None).with("source", "cluster");
            self.db.owner_put_with(&key, &value, &ctx)?;
        }
        Ok(true)
    }

    /// Revokes `token_id` as bookkeeping (no hook can refuse it): the
    /// cluster no longer holds it, or it could not be published when issued.
    /// The revoked record, if the token is known here.
    #[cfg(feature = "cluster")]
    pub(crate) fn revoke_unconditionally(&self, token_id: &str) -> Result<Option<TokenRecord>> {
        let Some(mut record) = self.get(token_id)? else {
            return Ok(None);
        };
        if record.revoked_at_ms.is_none() {
            record.revoked_at_ms = Some(now_ms());
            self.apply_shared(&record)?;
        }
        Ok(Some(record))
    }

    /// The principal `presented` authenticates, if it is an active token
    /// issued here; `None` for anything else (unknown, wrong secret,
    /// revoked, expired, not a token of this format).
    pub fn authenticate(&self, presented: &str) -> Result<Option<Principal>> {
        let Some((token_id, secret)) = presented
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|rest| rest.rsplit_once('_'))
        else {
            return Ok(None);
        };
        if validate_id("token id", token_id).is_err() {
            return Ok(None);
        }
        let Some(record) = self.get(token_id)? else {
            return Ok(None);
        };
        let hash = sha256_hex(secret.as_bytes());
        if !constant_time_eq(hash.as_bytes(), record.secret_sha256.as_bytes())
            || !record.is_active(now_ms())
        {
            return Ok(None);
        }
        Ok(Some(principal_of(&record)))
    }
}

/// The principal an issued token stands for.
pub fn principal_of(record: &TokenRecord) -> Principal {
    Principal::new(record.caller_id(), record.scopes.clone())
        .with_roles(record.roles.clone())
        .with_claim("token_name", record.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, TokenStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path()).unwrap();
        (dir, TokenStore::new(&db))
    }

    #[test]
    fn a_token_authenticates_until_revoked_and_only_its_hash_is_stored() {
        let (_dir, store) = store();
        let issued = store
            .create(
                NewToken {
                    name: "ci".into(),
                    scopes: vec![Scope::Invoke],
                    roles: vec!["payments".into()],
                    expires_at_ms: None,
                },
                None,
            )
            .unwrap();
        let p = store.authenticate(&issued.secret).unwrap().unwrap();
        assert_eq!(p.id, format!("token:{}", issued.record.token_id));
        assert_eq!(p.roles, vec!["payments".to_string()]);
        let stored = serde_json::to_string(&store.list().unwrap()).unwrap();
        let secret_part = issued.secret.rsplit('_').next().unwrap();
        assert!(!stored.contains(secret_part));
        let mut wrong = issued.secret.clone();
        wrong.pop();
        wrong.push('x');
        assert!(store.authenticate(&wrong).unwrap().is_none());
        store.revoke(&issued.record.token_id, None).unwrap();
        assert!(store.authenticate(&issued.secret).unwrap().is_none());
    }

    #[test]
    fn an_expired_token_is_refused_and_bad_requests_say_which_field() {
        let (_dir, store) = store();
        // Far enough ahead that a busy machine still creates it unexpired.
        let expires_at_ms = now_ms() + 300;
        let issued = store
            .create(
                NewToken {
                    name: "short".into(),
                    scopes: vec![Scope::Audit],
                    roles: vec![],
                    expires_at_ms: Some(expires_at_ms),
                },
                None,
            )
            .unwrap();
        while now_ms() <= expires_at_ms {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(store.authenticate(&issued.secret).unwrap().is_none());
        let err = store.create(
            NewToken {
                name: "x".into(),
                ..NewToken::default()
            },
            None,
        );
        assert!(err.unwrap_err().to_string().contains("scope"));
        assert!(store.authenticate("sbt_nope").unwrap().is_none());
        assert!(store.authenticate("plain").unwrap().is_none());
    }
}
