//! Who is calling: the [`Principal`] an authenticated request acts as (its
//! id, scopes, roles and selected claims), and how it is written into a
//! [`PolicyContext`] so every hook and Rego module can judge it.

use super::context::{keys, PolicyContext};
pub use crate::namespace::Scope;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An authenticated caller. Its `id` is what records and the decision log
/// keep (`token:{id}` for an issued token, `jwt:{sub}` for a JWT,
/// `static-admin` for the server's single static token); a secret never is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The caller's id, as records and policies see it.
    pub id: String,
    /// What it may do at all.
    pub scopes: Vec<Scope>,
    /// Free-form roles that policies judge (`payments`, `intern`, …).
    pub roles: Vec<String>,
    /// Selected claims of its credential (e.g. a JWT's `email`), by name.
    pub claims: BTreeMap<String, String>,
    /// The JWT it presented, when it authenticated with one: what an MCP
    /// agent with token exchange exchanges for this caller's own upstream
    /// token. Never stored, logged or sent to an agent as it is.
    #[serde(skip)]
    pub credential: Option<CallerCredential>,
}

/// A caller's bearer JWT, held only in memory for the call; its `Debug`
/// shows no part of it.
#[derive(Clone, PartialEq, Eq)]
pub struct CallerCredential(std::sync::Arc<str>);

impl CallerCredential {
    /// The credential itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for CallerCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallerCredential(<redacted>)")
    }
}

impl Principal {
    /// A principal with `id` and `scopes`, no roles or claims.
    pub fn new(id: impl Into<String>, scopes: Vec<Scope>) -> Self {
        Principal {
            id: id.into(),
            scopes,
            ..Principal::default()
        }
    }

    /// The administrator the server's single static token stands for.
    pub fn static_admin() -> Self {
        Principal::new("static-admin", vec![Scope::Admin]).with_roles(vec!["admin".into()])
    }

    /// Sets its roles.
    pub fn with_roles(mut self, roles: Vec<String>) -> Self {
        self.roles = roles;
        self
    }

    /// Keeps the JWT it authenticated with (see [`Principal::credential`]).
    pub fn with_credential(mut self, jwt: &str) -> Self {
        self.credential = Some(CallerCredential(jwt.into()));
        self
    }

    /// Adds a claim.
    pub fn with_claim(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.claims.insert(name.into(), value.into());
        self
    }

    /// Whether it holds `scope` (admin holds every scope).
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }

    /// Whether it has role `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Writes the caller into `ctx`: `caller` (the id), `roles` and `scopes`
    /// (comma-separated; lists in Rego's `input.context`) and one
    /// `claim.NAME` entry per claim (`input.context.claims.NAME` in Rego).
    pub fn apply_to(&self, ctx: &mut PolicyContext) {
        ctx.insert_static(keys::CALLER, self.id.as_str());
        ctx.insert_static(keys::ROLES, &self.roles.join(","));
        let scopes: Vec<&str> = self.scopes.iter().map(|s| s.as_str()).collect();
        ctx.insert_static(keys::SCOPES, &scopes.join(","));
        for (name, value) in &self.claims {
            ctx.insert(format!("{}{name}", keys::CLAIM_PREFIX), value.as_str());
        }
    }

    /// A context holding only this caller (see [`apply_to`](Self::apply_to)).
    pub fn context(&self) -> PolicyContext {
        let mut ctx = PolicyContext::new();
        self.apply_to(&mut ctx);
        ctx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_reaches_the_context_and_admin_implies_every_scope() {
        let p = Principal::new("token:t1", vec![Scope::Invoke])
            .with_roles(vec!["payments".into(), "ops".into()])
            .with_claim("email", "a@example.com");
        let ctx = p.context();
        assert_eq!(ctx.get("caller"), Some("token:t1"));
        assert_eq!(ctx.get("roles"), Some("payments,ops"));
        assert_eq!(ctx.get("scopes"), Some("invoke"));
        assert_eq!(ctx.get("claim.email"), Some("a@example.com"));
        assert!(p.has_scope(Scope::Invoke) && !p.has_scope(Scope::Audit));
        assert!(Principal::static_admin().has_scope(Scope::Audit));
        assert!("reader".parse::<Scope>().is_err());
    }
}
