//! Task affinity: which agent owns each A2A task created through
//! Switchboard, under `a2a_tasks/{task_id}` (written as bookkeeping of the
//! call that created or changed it, through the policy chain), and the
//! history of the states its answers and stream events reported, under
//! `a2a_task_states/{task_id}/{n}`. In cluster mode the records are shared
//! through the cluster's `SharedTasks`, so any node finds a task's route. Follow-up
//! messages, `GetTask` and `CancelTask` on a task take its route again: its
//! skill, its category and its session, whose binding holds the owner (and
//! is shared in cluster mode like any session binding).

use crate::error::{Error, Result};
use crate::namespace::{
    a2a_task_key, a2a_task_state_key, now_ms, uri_id, validate_id, A2aTaskRecord,
    A2aTaskStateRecord, ToolCategory, A2A_TASKS, MAX_STATE_MESSAGE_CHARS,
};
use crate::policy::{keys, OperationKind, PolicyContext};
use crate::routing::shared::SharedTasks;
use crate::storage::Database;
use std::collections::HashMap;

/// The session id the calls of an A2A context are bound by: a digest of
/// the context id, which a client chooses freely (any text).
pub(crate) fn session_of(context_id: &str) -> String {
    format!("a2a:{}", uri_id(context_id))
}

/// The record of `task_id`, if Switchboard routed its creation: this
/// node's, else (in cluster mode) the one the last node that recorded the
/// task shared.
pub(crate) fn get(
    db: &Database,
    shared: Option<&dyn SharedTasks>,
    task_id: &str,
) -> Result<Option<A2aTaskRecord>> {
    if validate_id("task id", task_id).is_err() {
        return Ok(None);
    }
    match (local(db, task_id)?, shared) {
        (Some(record), _) => Ok(Some(record)),
        (None, Some(shared)) => shared.fetch(task_id),
        (None, None) => Ok(None),
    }
}

/// This node's record of `task_id` (a valid id).
fn local(db: &Database, task_id: &str) -> Result<Option<A2aTaskRecord>> {
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
    shared: Option<&dyn SharedTasks>,
    caller: Option<&str>,
) -> Result<Vec<(String, A2aTaskRecord)>> {
    let mut found: HashMap<String, A2aTaskRecord> = HashMap::new();
    let mut keep = |task_id: String, record: A2aTaskRecord| {
        if record.caller.as_deref() != caller {
            return;
        }
        // A task seen by several nodes: the record of its latest state.
        match found.get(&task_id) {
            Some(held) if held.updated_at_ms >= record.updated_at_ms => {}
            _ => {
                found.insert(task_id, record);
            }
        }
    };
    for item in db.scan_unjudged(A2A_TASKS, None) {
        let (key, value) = item?;
        match serde_json::from_slice::<A2aTaskRecord>(&value) {
            Ok(record) => keep(key[A2A_TASKS.len()..].to_string(), record),
            Err(e) => {
                tracing::warn!(%key, error = %e, "skipping an A2A task record that does not decode")
            }
        }
    }
    if let Some(shared) = shared {
        for (task_id, record) in shared.all()? {
            keep(task_id, record);
        }
    }
    let mut found: Vec<_> = found.into_iter().collect();
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
    /// The agent's timestamp of the state, if it gave one.
    pub(crate) status_timestamp: Option<&'a str>,
    /// The text of the status's message, if it has one.
    pub(crate) message: Option<String>,
    pub(crate) agent_id: &'a str,
    pub(crate) skill: &'a str,
    pub(crate) category: &'a ToolCategory,
    pub(crate) context_id: &'a str,
    pub(crate) caller: Option<&'a str>,
}

/// Serialises this process's records of task states, so that each state
/// gets its own number in the task's history.
static RECORDING: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// Records that `seen.agent_id` owns `seen.task_id` and the state it
/// reported, with that state as the next entry of the task's history,
/// unless it is the state this node last recorded (the same state, owner
/// and agent timestamp: an answer reporting it again). A task id Switchboard cannot
/// hold as a key is not recorded (its follow-ups cannot be routed: logged).
/// In cluster mode the record is then shared with the other nodes (a
/// failure to is logged: the task's follow-ups then reach its owner through
/// this node only).
pub(crate) fn record(
    db: &Database,
    shared: Option<&dyn SharedTasks>,
    seen: Seen<'_>,
) -> Result<()> {
    if let Err(e) = validate_id("task id", seen.task_id) {
        tracing::warn!(agent_id = seen.agent_id, error = %e, "an A2A agent's task id cannot be a key; its follow-ups are not routed to it");
        return Ok(());
    }
    let recording = RECORDING.lock();
    // Each node's trail holds the states it saw: a state is new here
    // unless this node recorded it last.
    let here = local(db, seen.task_id)?;
    if here.as_ref().is_some_and(|b| {
        b.state == seen.state
            && b.agent_id == seen.agent_id
            && b.status_timestamp.as_deref() == seen.status_timestamp
    }) {
        return Ok(());
    }
    let before = match (here, shared) {
        (Some(record), _) => Some(record),
        (None, Some(shared)) => shared.fetch(seen.task_id)?,
        (None, None) => None,
    };
    let now = now_ms();
    let caller = before
        .as_ref()
        .map_or(seen.caller.map(str::to_string), |b| b.caller.clone());
    let states = before.as_ref().map_or(0, |b| b.states) + 1;
    let record = A2aTaskRecord {
        agent_id: seen.agent_id.to_string(),
        skill: seen.skill.to_string(),
        category: seen.category.clone(),
        context_id: seen.context_id.to_string(),
        session_id: session_of(seen.context_id),
        state: seen.state.to_string(),
        caller: caller.clone(),
        created_at_ms: before.as_ref().map_or(now, |b| b.created_at_ms),
        updated_at_ms: now,
        states,
        status_timestamp: seen.status_timestamp.map(str::to_string),
    };
    let state = A2aTaskStateRecord {
        state: seen.state.to_string(),
        agent_id: seen.agent_id.to_string(),
        caller,
        status_timestamp: seen.status_timestamp.map(str::to_string),
        message: seen
            .message
            .map(|text| text.chars().take(MAX_STATE_MESSAGE_CHARS).collect()),
        recorded_at_ms: now,
    };
    let ctx = PolicyContext::new()
        .with(keys::AGENT_ID, seen.agent_id)
        .with(keys::TOOL, seen.skill)
        .with(keys::CATEGORY, seen.category.as_str())
        .with("a2a_task", seen.task_id)
        .with("a2a_state", seen.state)
        .for_operation(OperationKind::Outcome);
    let mut tx = db.owner_transaction();
    tx.put_with(
        &a2a_task_key(seen.task_id),
        &serde_json::to_vec(&record).map_err(Error::storage)?,
        &ctx,
    )?;
    tx.put_with(
        &a2a_task_state_key(seen.task_id, states),
        &serde_json::to_vec(&state).map_err(Error::storage)?,
        &ctx,
    )?;
    tx.commit()?;
    drop(recording);
    if let Some(shared) = shared {
        if let Err(e) = shared.publish(seen.task_id, &record) {
            tracing::warn!(task_id = seen.task_id, error = %e, "could not share an A2A task's record with the cluster; other nodes cannot route its follow-ups");
        }
    }
    Ok(())
}

/// The text parts of an A2A message, joined by newlines; `None` for a
/// message without text.
pub(crate) fn message_text(message: &serde_json::Value) -> Option<String> {
    let texts: Vec<&str> = message
        .get("parts")?
        .as_array()?
        .iter()
        .filter_map(|part| part.get("text").and_then(|t| t.as_str()))
        .collect();
    (!texts.is_empty()).then(|| texts.join("\n"))
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
            status_timestamp: None,
            message: Some(format!("now {state}")),
            agent_id: "alpha",
            skill: "echo",
            category: &ToolCategory::Search,
            context_id: "any text, even / and spaces",
            caller: Some("alice"),
        };
        {
            let db = Database::open(dir.path()).unwrap();
            record(&db, None, seen("TASK_STATE_INPUT_REQUIRED")).unwrap();
            let first = get(&db, None, "t-1").unwrap().unwrap();
            record(&db, None, seen("TASK_STATE_COMPLETED")).unwrap();
            // Reported again by a later answer: not a new state.
            record(&db, None, seen("TASK_STATE_COMPLETED")).unwrap();
            let now = get(&db, None, "t-1").unwrap().unwrap();
            assert_eq!(now.state, "TASK_STATE_COMPLETED");
            assert_eq!(now.created_at_ms, first.created_at_ms);
            assert_eq!(now.states, 2);
        }
        let db = Database::open(dir.path()).unwrap();
        let held = get(&db, None, "t-1").unwrap().unwrap();
        assert_eq!(held.agent_id, "alpha");
        assert_eq!(held.caller.as_deref(), Some("alice"));
        assert_eq!(held.session_id, session_of("any text, even / and spaces"));
        assert!(validate_id("session id", &held.session_id).is_ok());
        assert_eq!(get(&db, None, "t-2").unwrap(), None);
        let history: Vec<A2aTaskStateRecord> = db
            .scan_unjudged("a2a_task_states/t-1/", None)
            .map(|item| serde_json::from_slice(&item.unwrap().1).unwrap())
            .collect();
        let states: Vec<(&str, Option<&str>)> = history
            .iter()
            .map(|s| (s.state.as_str(), s.message.as_deref()))
            .collect();
        assert_eq!(
            states,
            [
                (
                    "TASK_STATE_INPUT_REQUIRED",
                    Some("now TASK_STATE_INPUT_REQUIRED")
                ),
                ("TASK_STATE_COMPLETED", Some("now TASK_STATE_COMPLETED")),
            ]
        );
        assert!(history.iter().all(|s| s.caller.as_deref() == Some("alice")));
        assert_eq!(get(&db, None, "not a key/").unwrap(), None);
        let mine: Vec<String> = of_caller(&db, None, Some("alice"))
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(mine, ["t-1"]);
        assert!(of_caller(&db, None, Some("bob")).unwrap().is_empty());
        assert!(
            of_caller(&db, None, None).unwrap().is_empty(),
            "the operator's are not alice's"
        );
    }

    #[test]
    fn the_generic_api_cannot_forge_an_owner() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path()).unwrap();
        assert!(db.put(&a2a_task_key("t-1"), b"{}").is_err());
        assert!(db.put(&a2a_task_state_key("t-1", 1), b"{}").is_err());
    }
}
