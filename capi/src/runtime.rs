//! The one tokio runtime of the library (threads: one per core), on which
//! pending invokes, local agents' calls and health checks run.

use std::sync::OnceLock;

pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("switchboard")
            .build()
            .expect("cannot start the tokio runtime")
    })
}
