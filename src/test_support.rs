//! Helpers shared by the crate's own unit tests (compiled only for tests).

use proptest::prelude::ProptestConfig;

/// `cases` per property unless `PROPTEST_CASES` asks for another number;
/// failures are reported, not written to a regressions file.
pub(crate) fn proptest_config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}
