//! A node's policy revision: a digest of the policy chain it runs, published
//! in its liveness key so `cluster status` can say when nodes disagree.
//!
//! The digest covers every stored policy (name, revision and a hash of its
//! source, scopes and ops: the `policies_dir` files are imported into the
//! store at start, so they are covered too) and every other Rego module in
//! the chain (name and scope, e.g. added through the library), so the
//! revision of two nodes is equal exactly when they run the same Rego.

use crate::policy::PolicyEngine;
use crate::storage::Database;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `{"policy_revision": "<12 hex digits>", "policies": ["name r2", …]}` for
/// the chain of `db`; `policy_revision` is `"unreadable"` if the stored
/// policies cannot be read.
pub(super) fn policy_revision(db: &Database) -> Value {
    let stored = match db.stored_policies() {
        Ok(stored) => stored,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the stored policies for the node's policy revision");
            return json!({"policy_revision": "unreadable", "policies": []});
        }
    };
    let mut lines = Vec::new();
    let mut names = Vec::new();
    for policy in &stored {
        let content =
            serde_json::to_vec(&(&policy.source, &policy.scopes, &policy.ops)).unwrap_or_default();
        lines.push(format!(
            "stored {} r{} {}",
            policy.name,
            policy.revision,
            hex(&Sha256::digest(&content))
        ));
        names.push(format!("{} r{}", policy.name, policy.revision));
    }
    for (module, scope) in PolicyEngine::new(db).rego_modules() {
        lines.push(format!("module {module} {scope}"));
    }
    lines.sort();
    let digest = hex(&Sha256::digest(lines.join("\n").as_bytes()));
    json!({"policy_revision": &digest[..12], "policies": names})
}
