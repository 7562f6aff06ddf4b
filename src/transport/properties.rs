//! Property tests of the agent-response parser over hostile answers: every
//! status and body is classified, none panics.
//!
//! Deeper runs: `PROPTEST_CASES=100000 cargo test --lib properties`.

use super::http::parse_response;
use super::Failure;
use proptest::prelude::*;

proptest! {
    #![proptest_config(crate::test_support::proptest_config(512))]

    #[test]
    fn agent_answers_are_always_classified(status in 100u16..600, body in proptest::collection::vec(any::<u8>(), 0..256)) {
        match parse_response(status, &body) {
            Ok(value) => {
                prop_assert!((200..300).contains(&status));
                prop_assert_eq!(Some(value), serde_json::from_slice::<serde_json::Value>(&body).ok());
            }
            Err(Failure::Tool(_)) => prop_assert!((400..500).contains(&status) && status != 408 && status != 429),
            Err(failure) => prop_assert!(failure.is_retryable()),
        }
    }
}
