//! Property tests over hostile input through the public API: id and key
//! validation, the HTTP API's JSON bodies, and policy loading. None may panic;
//! each checks what must hold. (Globs and the agent-response parser are
//! internal; their properties live beside them in `src/policy/glob.rs` and
//! `src/transport/properties.rs`.)
//!
//! Deeper runs: `PROPTEST_CASES=100000 cargo test --test properties`.

mod common;

use common::temp_db;
use proptest::prelude::*;
use switchboard::namespace::{validate_id, validate_key};
use switchboard::policy::rego::{declared_ops, declared_scopes};
use switchboard::server::{AddPolicyBody, InvokeBody, RegisterBody};

/// `cases` per property unless `PROPTEST_CASES` asks for more; failures are
/// reported, not written to a regressions file.
fn config(cases: u32) -> ProptestConfig {
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

fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._:-".contains(c)
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn ids_are_accepted_exactly_when_well_formed(s in "\\PC{0,140}|[A-Za-z0-9._:-]{0,140}") {
        let well_formed = !s.is_empty() && s.len() <= 128 && s.chars().all(id_char);
        prop_assert_eq!(validate_id("id", &s).is_ok(), well_formed);
    }

    #[test]
    fn keys_are_accepted_exactly_when_every_segment_is_an_id(s in "[A-Za-z0-9._:/ *-]{0,80}") {
        let well_formed = s.split('/').all(|seg| !seg.is_empty() && seg.chars().all(id_char));
        prop_assert_eq!(validate_key(&s).is_ok(), well_formed);
    }

    #[test]
    fn api_bodies_parse_or_refuse_without_panicking(text in "\\PC{0,200}") {
        let _ = serde_json::from_str::<InvokeBody>(&text);
        let _ = serde_json::from_str::<AddPolicyBody>(&text);
        if let Ok(body) = serde_json::from_str::<RegisterBody>(&text) {
            let _ = body.into_config();
        }
    }

    #[test]
    fn api_bodies_with_json_shape_parse_or_refuse(
        tool in "\\PC{0,20}",
        category in "\\PC{0,20}",
        strategy in "[a-z_]{0,14}",
        extra in proptest::option::of("[a-z]{1,8}"),
    ) {
        let mut body = serde_json::json!({"tool": tool, "category": category, "strategy": strategy});
        if let Some(field) = extra {
            body[field] = serde_json::json!(1);
        }
        if let Ok(parsed) = serde_json::from_value::<InvokeBody>(body) {
            // A category that parses is a valid id.
            prop_assert!(validate_id("category", parsed.category.as_str()).is_ok());
        }
    }

    #[test]
    fn policy_headers_never_panic(text in "(# (scope|ops): [a-z*/, ]{0,20}\n){0,4}\\PC{0,60}") {
        let _ = declared_scopes("p.rego", &text);
        let _ = declared_ops("p.rego", &text);
    }
}

proptest! {
    // Each case compiles a module: fewer cases keep the suite lean.
    #![proptest_config(config(128))]

    #[test]
    fn rego_sources_compile_or_are_refused_without_panicking(
        body in "(deny contains \"x\" if \\{ [a-z.= \"]{0,20} \\}|allow if [a-z.= ]{0,20}|[a-z{}:= \"]{0,30})",
    ) {
        let (_dir, db) = temp_db();
        let policy = switchboard::PolicyEngine::new(&db);
        let source = format!("package fuzz\nimport rego.v1\n{body}\n");
        match policy.add_rego("notes/**", &source) {
            Ok(()) => {
                // A loaded module decides every write in scope, one way or the other.
                let _ = db.put("notes/a", b"{\"v\": 1}");
            }
            Err(e) => prop_assert!(matches!(e, switchboard::Error::PolicyLoad { .. }), "{e}"),
        }
    }
}
