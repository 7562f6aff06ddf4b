//! In-process agents: a handler closure `(tool, input) -> output`, called
//! with panics (while building its future or while it runs) turned into
//! agent failures.

use super::{Failure, ToolError, WireRequest};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// An in-process agent: `(tool, input) -> output`.
pub(crate) type LocalHandler = Arc<
    dyn Fn(String, serde_json::Value) -> BoxFuture<Result<serde_json::Value, ToolError>>
        + Send
        + Sync,
>;

pub(crate) fn local_handler<F, Fut>(f: F) -> LocalHandler
where
    F: Fn(String, serde_json::Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<serde_json::Value, ToolError>> + Send + 'static,
{
    Arc::new(move |tool, input| Box::pin(f(tool, input)))
}

/// Runs one call of a local handler to completion.
pub(crate) async fn call(
    handler: &LocalHandler,
    request: WireRequest<'_>,
) -> Result<serde_json::Value, Failure> {
    let tool = request.tool.to_string();
    let input = request.input.clone();
    let fut = match catch_unwind(AssertUnwindSafe(|| handler(tool, input))) {
        Ok(fut) => CatchUnwind(fut),
        Err(panic) => {
            let message = crate::policy::panic_message(&panic);
            return Err(Failure::Agent(format!("handler panicked: {message}")));
        }
    };
    match fut.await {
        Err(panic) => Err(Failure::Agent(format!("handler panicked: {panic}"))),
        Ok(Err(e)) if e.is_retryable() => Err(Failure::Agent(e.message().to_string())),
        Ok(Err(e)) => Err(Failure::Tool(e.message().to_string())),
        Ok(Ok(output)) => Ok(output),
    }
}

/// Polls a future, turning a panic inside it into an error.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(crate::policy::panic_message(&panic))),
        }
    }
}
