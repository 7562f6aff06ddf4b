//! Issued tokens kept in step with `switchboard/tokens/`: each token's
//! record (its hash, never the secret, and its revocation) is published
//! when issued or revoked here, and the cluster's are applied here, so every
//! node accepts and refuses the same tokens.

use super::etcd::{Event, WatchMessage};
use super::state::{State, RETRY_EVERY, TOKENS};
use crate::error::{Error, Result};
use crate::storage::Database;
use std::collections::HashMap;
use std::sync::Arc;

/// Keeps this node's issued tokens in step with `switchboard/tokens/` (each
/// token's record: its hash, never the secret, and its revocation), so
/// every node accepts and refuses the same tokens. Each round lists the
/// prefix and reconciles both ways (a token or revocation only this node
/// has, issued offline or revoked while etcd was unreachable, is
/// published; the cluster's are applied here), then watches the prefix
/// until anything changes: a revocation made on any node applies here in
/// the round its event starts. Tokens are few, so a round per change (or
/// per broken watch) costs a small listing. Runs until dropped.
pub(super) async fn follow_tokens(state: Arc<State>, db: Database) {
    let tokens = crate::identity::TokenStore::new(&db);
    loop {
        let revision = match reconcile_tokens(&state, &tokens).await {
            Ok(revision) => revision,
            Err(e) => {
                tracing::debug!(error = %e, "cannot reconcile the issued tokens with the cluster");
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            }
        };
        // Any change ends the watch: the next round's listing applies it.
        // A token deleted from etcd is revoked here first, or that round
        // would publish it again.
        let mut removed = Vec::new();
        let watched = state
            .etcd
            .watch(TOKENS, revision + 1, |message| match message {
                WatchMessage::Compacted => false,
                WatchMessage::Events { events, .. } => {
                    let changed = !events.is_empty();
                    removed.extend(events.into_iter().filter_map(|event| match event {
                        Event::Delete(key) => key.strip_prefix(TOKENS).map(str::to_string),
                        Event::Put(_) => None,
                    }));
                    !changed
                }
            })
            .await;
        if !removed.is_empty() {
            let tokens = tokens.clone();
            let revoked = tokio::task::spawn_blocking(move || {
                for id in removed {
                    if let Err(e) = tokens.revoke_unconditionally(&id) {
                        tracing::warn!(token_id = %id, error = %e, "could not revoke a token removed from the cluster");
                    }
                }
            })
            .await;
            if let Err(e) = revoked {
                tracing::warn!(error = %e, "revoking the tokens removed from the cluster failed");
            }
        }
        if let Err(e) = watched {
            tracing::debug!(error = %e, "the tokens watch stopped; reconciling again");
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }
}

fn apply_token(tokens: &crate::identity::TokenStore, key: &str, value: &[u8]) {
    let Some(id) = key.strip_prefix(TOKENS) else {
        return;
    };
    match serde_json::from_slice::<crate::namespace::TokenRecord>(value) {
        Ok(record) if record.token_id == id => match tokens.apply_shared(&record) {
            Ok(true) => {
                tracing::info!(token_id = %id, revoked = record.revoked_at_ms.is_some(), "applied a token from the cluster")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(token_id = %id, error = %e, "a token from the cluster was refused or failed on this node; not applied")
            }
        },
        Ok(_) => tracing::warn!(token_id = %id, "a token in etcd names another id; ignored"),
        Err(e) => {
            tracing::warn!(token_id = %id, error = %e, "a token in etcd does not decode; ignored")
        }
    }
}

/// One reconciling round: publishes what only this node has (a token, or a
/// revocation the cluster lacks), applies the cluster's tokens here, and
/// returns the revision listed at.
async fn reconcile_tokens(state: &State, tokens: &crate::identity::TokenStore) -> Result<i64> {
    let (kvs, revision) = state.etcd.list(TOKENS).await?;
    let local = {
        let tokens = tokens.clone();
        tokio::task::spawn_blocking(move || tokens.list())
            .await
            .map_err(|e| Error::internal("listing this node's tokens", e))??
    };
    let in_etcd: HashMap<String, crate::namespace::TokenRecord> = kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .map(|r: crate::namespace::TokenRecord| (r.token_id.clone(), r))
        .collect();
    for record in &local {
        let theirs = in_etcd.get(&record.token_id);
        let publish = match theirs {
            None => true,
            Some(theirs) => record.revoked_at_ms.is_some() && theirs.revoked_at_ms.is_none(),
        };
        if publish {
            publish_token(state, record).await?;
        }
    }
    let tokens = tokens.clone();
    tokio::task::spawn_blocking(move || {
        for kv in kvs {
            apply_token(&tokens, &kv.key, &kv.value);
        }
    })
    .await
    .map_err(|e| Error::internal("applying the cluster's tokens", e))?;
    Ok(revision)
}

/// Puts `record` under `switchboard/tokens/{id}`: a new token only if the
/// key is absent, a revocation over whatever is there.
pub(super) async fn publish_token(
    state: &State,
    record: &crate::namespace::TokenRecord,
) -> Result<()> {
    let key = format!("{TOKENS}{}", record.token_id);
    let value = serde_json::to_vec(record).map_err(Error::storage)?;
    if record.revoked_at_ms.is_some() {
        state.etcd.put(&key, &value, None).await
    } else {
        state
            .etcd
            .create_if_absent(&key, &value, None)
            .await
            .map(drop)
    }
}
