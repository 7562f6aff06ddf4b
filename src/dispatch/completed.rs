//! Calls as they complete, for whoever listens (`GET /v1/calls/stream`, the
//! admin UI's live view): the key of each dispatch record whose outcome was
//! just written. Listeners read the record itself through the store, under
//! their own read policies; the announcement carries nothing a policy
//! could hide.
//!
//! Free on the call path while nobody listens: announcing first asks the
//! channel how many receivers it has (an atomic read) and builds nothing
//! when there are none.

use tokio::sync::broadcast;

/// How many announcements a slow listener may fall behind before it is told
/// it missed some (it then reads the trail to catch up).
const BACKLOG: usize = 1024;

/// One call whose outcome was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletedCall {
    /// The key of its dispatch record (`tools/{category}/{tool}/{id}`).
    pub key: String,
}

/// The announcements of one dispatcher.
pub(crate) struct Completions(broadcast::Sender<CompletedCall>);

impl Default for Completions {
    fn default() -> Self {
        Completions(broadcast::channel(BACKLOG).0)
    }
}

impl Completions {
    /// Announces the call recorded under `key`, if anyone listens.
    pub(crate) fn announce(&self, key: &str) {
        if self.0.receiver_count() == 0 {
            return;
        }
        // Only fails when the last receiver left since the count: nobody to tell.
        let _ = self.0.send(CompletedCall { key: key.into() });
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<CompletedCall> {
        self.0.subscribe()
    }
}
