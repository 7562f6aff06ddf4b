//! The timeout layer: no answer within the agent's timeout is a
//! [`Failure::Timeout`] (the call's future is dropped).

use crate::transport::Failure;
use std::future::Future;
use std::time::Duration;

pub(super) async fn within(
    timeout: Duration,
    call: impl Future<Output = Result<serde_json::Value, Failure>>,
) -> Result<serde_json::Value, Failure> {
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(Failure::Timeout),
        Ok(outcome) => outcome,
    }
}
