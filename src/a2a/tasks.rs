//! Task affinity: which agent owns each A2A task created through
//! Switchboard, under `a2a_tasks/{task_id}` (written as bookkeeping of the
//! call that created or changed it, through the policy chain). Follow-up
//! messages, `GetTask` and `CancelTask` on a task take its route again: its
//! skill, its category and its session, whose binding holds the owner (and
//! is shared in cluster mode like any session binding).

use crate::error::{Error, Result};
use crate::namespace::{
    a2a_task_key, now_ms, uri_id, validate_id, A2aTaskRecord, ToolCategory, A2A_TASKS,
};
use crate::policy::{keys, OperationKind, PolicyContext};
use crate::storage::Database;

/// The session id the calls of an A2A context are bound by: a digest of
/// the context id, which a client chooses freely (any text).
pub(crate) fn session_of(context_id: &str) -> String {
    format!("a2a:{}", uri_id(context_id))
}

/// The record of `task_id`, if Switchboard routed its creation.
pub(crate) fn get(db: &Database, task_id: &str) -> Result<Option<A2aTaskRecord>> {
    if validate_id("task id", task_id).is_err() {
        return Ok(None);
    }
    match db.get_unjudged(&a2a_task_key(task_id))? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(Error::storage),
        None => Ok(None),
    }
}

/// The tasks `caller` created (`None`: the local operator's), newest
/// change first, each with its id.
pub(crate) fn of_caller(
    db: &Database,
    caller: Option<&str>,
) -> Result<Vec<(String, A2aTaskRecord)>> {
    let mut found = Vec::new();
    for item in db.scan_unjudged(A2A_TASKS, None) {
        let (key, value) = item?;
        match serde_json::from_slice::<A2aTaskRecord>(&value) {
            Ok(record) if record.caller.as_deref() == caller => {
                found.push((key[A2A_TASKS.len()..].to_string(), record));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(%key, error = %e, "skipping an A2A task record that does not decode")
            }
        }
    }
    found.sort_by(|a, b| {
        b.1.updated_at_ms
            .cmp(&a.1.updated_at_ms)
            .then(a.0.cmp(&b.0))
    });
    Ok(found)
}

/// What a routed call learnt of a task.
pub(crate) struct Seen<'a> {
    pub(crate) task_id: &'a str,
    pub(crate) state: &'a str,
    pub(crate) agent_id: &'a str,
    pub(crate) skill: &'a str,
    pub(crate) category: &'a ToolCategory,
    pub(crate) context_id: &'a str,
    pub(crate) caller: Option<&'a str>,
}

/// Records that `seen.agent_id` owns `seen.task_id` (or the task's new
/// state), unless nothing changed. A task id Switchboard cannot hold as a
/// key is not recorded (its follow-ups cannot be routed: logged).
pub(crate) fn record(db: &Database, seen: Seen<'_>) -> Result<()> {
    if let Err(e) = validate_id("task id", seen.task_id) {
        tracing::warn!(agent_id = seen.agent_id, error = %e, "an A2A agent's task id cannot be a key; its follow-ups are not routed to it");
        return Ok(());
    }
    let before = get(db, seen.task_id)?;
    if before
        .as_ref()
        .is_some_and(|b| b.state == seen.state && b.agent_id == seen.agent_id)
    {
        return Ok(());
    }
    let now = now_ms();
    let record = A2aTaskRecord {
        agent_id: seen.agent_id.to_string(),
        skill: seen.skill.to_string(),
        category: seen.category.clone(),
        context_id: seen.context_id.to_string(),
        session_id: session_of(seen.context_id),
        state: seen.state.to_string(),
        caller: before
            .as_ref()
            .map_or(seen.caller.map(str::to_string), |b| b.caller.clone()),
        created_at_ms: before.as_ref().map_or(now, |b| b.created_at_ms),
        updated_at_ms: now,
    };
    let ctx = PolicyContext::new()
        .with(keys::AGENT_ID, seen.agent_id)
        .with(keys::TOOL, seen.skill)
        .with(keys::CATEGORY, seen.category.as_str())
        .with("a2a_task", seen.task_id)
        .with("a2a_state", seen.state)
        .for_operation(OperationKind::Outcome);
    let value = serde_json::to_vec(&record).map_err(Error::storage)?;
    db.owner_put_with(&a2a_task_key(seen.task_id), &value, &ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_owned_by_the_agent_that_made_it_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let seen = |state| Seen {
            task_id: "t-1",
            state,
            agent_id: "alpha",
            skill: "echo",
            category: &ToolCategory::Search,
            context_id: "any text, even / and spaces",
            caller: Some("alice"),
        };
        {
            let db = Database::open(dir.path()).unwrap();
            record(&db, seen("TASK_STATE_INPUT_REQUIRED")).unwrap();
            let first = get(&db, "t-1").unwrap().unwrap();
            record(&db, seen("TASK_STATE_COMPLETED")).unwrap();
            let now = get(&db, "t-1").unwrap().unwrap();
            assert_eq!(now.state, "TASK_STATE_COMPLETED");
            assert_eq!(now.created_at_ms, first.created_at_ms);
        }
        let db = Database::open(dir.path()).unwrap();
        let held = get(&db, "t-1").unwrap().unwrap();
        assert_eq!(held.agent_id, "alpha");
        assert_eq!(held.caller.as_deref(), Some("alice"));
        assert_eq!(held.session_id, session_of("any text, even / and spaces"));
        assert!(validate_id("session id", &held.session_id).is_ok());
        assert_eq!(get(&db, "t-2").unwrap(), None);
        assert_eq!(get(&db, "not a key/").unwrap(), None);
        let mine: Vec<String> = of_caller(&db, Some("alice"))
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(mine, ["t-1"]);
        assert!(of_caller(&db, Some("bob")).unwrap().is_empty());
        assert!(
            of_caller(&db, None).unwrap().is_empty(),
            "the operator's are not alice's"
        );
    }

    #[test]
    fn the_generic_api_cannot_forge_an_owner() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path()).unwrap();
        assert!(db.put(&a2a_task_key("t-1"), b"{}").is_err());
    }
}
