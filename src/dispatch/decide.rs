//! The failover decision: after each attempt, one function says whether the
//! call returns, tries the next agent, or gives up.

use crate::namespace::AttemptOutcome;

/// What the failover loop does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// The call is over with this attempt's result (output or tool error).
    Return,
    /// Try another agent, never one already tried.
    NextAgent,
    /// No further attempt: answer with the best reason collected so far.
    GiveUp,
}

/// What follows an attempt that ended with `outcome`, when `calls_made`
/// agent calls (of `max_attempts`) have been made. Candidates refused by
/// policy or a rate limit were not called and do not count as attempts.
pub(super) fn after_attempt(outcome: AttemptOutcome, calls_made: u32, max_attempts: u32) -> Step {
    match outcome {
        AttemptOutcome::Succeeded | AttemptOutcome::ToolError => Step::Return,
        AttemptOutcome::Denied | AttemptOutcome::RateLimited => Step::NextAgent,
        AttemptOutcome::Failed | AttemptOutcome::Timeout | AttemptOutcome::Overloaded => {
            if calls_made < max_attempts {
                Step::NextAgent
            } else {
                Step::GiveUp
            }
        }
        // Not outcomes of a finished attempt in this process.
        AttemptOutcome::InFlight | AttemptOutcome::Interrupted | AttemptOutcome::Cancelled => {
            Step::GiveUp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AttemptOutcome::*;

    #[test]
    fn denied_and_rate_limited_candidates_move_on_without_counting() {
        assert_eq!(after_attempt(Denied, 3, 3), Step::NextAgent);
        assert_eq!(after_attempt(RateLimited, 3, 3), Step::NextAgent);
    }

    #[test]
    fn success_and_tool_errors_end_the_call() {
        assert_eq!(after_attempt(Succeeded, 1, 3), Step::Return);
        assert_eq!(after_attempt(ToolError, 1, 3), Step::Return);
    }

    #[test]
    fn retryable_failures_fail_over_until_attempts_are_used_up() {
        for outcome in [Failed, Timeout, Overloaded] {
            assert_eq!(after_attempt(outcome, 1, 3), Step::NextAgent);
            assert_eq!(after_attempt(outcome, 2, 3), Step::NextAgent);
            assert_eq!(after_attempt(outcome, 3, 3), Step::GiveUp);
            assert_eq!(after_attempt(outcome, 1, 1), Step::GiveUp);
        }
    }
}
