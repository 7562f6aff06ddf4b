//! The crate's layers depend one way. Each top-level module of `src/` has a
//! rank; a file may name `crate::X` only where `X`'s rank is at most its own.
//! A name re-exported at the crate root (`crate::Error`) counts as the module
//! it comes from. See ARCHITECTURE.md for the picture.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Lowest first. Modules of one rank may use each other.
const LAYERS: &[&[&str]] = &[
    &["error", "test_support"],
    &["namespace"],
    &["policy"],
    &["storage"],
    &["identity"],
    &["routing"],
    &["transport"],
    &["telemetry"],
    &["dispatch"],
    &["cluster"],
    &["config"],
    &["mcp", "a2a"],
    &["server"],
    &["cli"],
];

fn rank_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`None` for the crate
/// root and the binary's `main.rs`).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => None,
        Some(module) => Some(module.to_string()),
        None => Some(first),
    }
}

/// Crate-root names re-exported from a module by a top-level
/// `pub use module::{...}` in lib.rs.
fn root_reexports() -> HashMap<String, String> {
    let lib = fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut names = HashMap::new();
    let mut statement = String::new();
    for raw in lib.lines() {
        // Only the crate root's own `pub use` (unindented): a facade module's
        // re-exports inside lib.rs are not crate-root names.
        if statement.is_empty() && !raw.starts_with("pub use ") {
            continue;
        }
        let line = raw.trim();
        statement.push_str(line);
        statement.push(' ');
        if !line.ends_with(';') {
            continue;
        }
        let body = statement["pub use ".len()..].trim().trim_end_matches(';');
        let module = body.split("::").next().unwrap().trim().to_string();
        let list = body
            .split_once('{')
            .map(|(_, rest)| rest.trim_end_matches('}').to_string())
            .unwrap_or_else(|| body.rsplit("::").next().unwrap().to_string());
        for name in list.split(',') {
            let name = name.split(" as ").last().unwrap().trim();
            let name = name.rsplit("::").next().unwrap().trim();
            if !name.is_empty() {
                names.insert(name.to_string(), module.clone());
            }
        }
        statement.clear();
    }
    names
}

/// Every `crate::NAME` a line of code names (comments skipped).
fn crate_paths(code: &str) -> Vec<String> {
    paths_after(code, "crate::")
}

/// Every `NAME` a line of code names right after `prefix` (`crate::`,
/// `super::`, …), comments skipped: the first segment of each path.
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find(prefix) {
            let preceded_by_ident = rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            rest = &rest[at + prefix.len()..];
            if preceded_by_ident {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a, b::c}`: the first segment of each path inside.
                let inner = group.split('}').next().unwrap_or("");
                found.extend(
                    inner
                        .split(',')
                        .map(|p| p.trim().split("::").next().unwrap().trim().to_string())
                        .filter(|p| !p.is_empty()),
                );
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let reexports = root_reexports();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let mut violations = Vec::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        let Some(own) = rank_of(&module) else {
            violations.push(format!(
                "{}: module `{module}` has no layer; add it to LAYERS in tests/layers.rs and to ARCHITECTURE.md",
                file.display()
            ));
            continue;
        };
        let code = fs::read_to_string(file).unwrap();
        for name in crate_paths(&code) {
            let target = if rank_of(&name).is_some() {
                name.clone()
            } else if let Some(module) = reexports.get(&name) {
                module.clone()
            } else {
                violations.push(format!(
                    "{}: `crate::{name}` is neither a module nor a crate-root re-export",
                    file.display()
                ));
                continue;
            };
            let theirs = rank_of(&target).unwrap();
            if theirs > own {
                violations.push(format!(
                    "{}: `{module}` uses `crate::{name}` from the higher layer `{target}`",
                    file.strip_prefix(src()).unwrap().display()
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

/// The files of `src/routing/`, lowest first; files of one rank may use
/// each other. Agent state at the bottom, the index and router over it, the
/// registry over them and over its store, and health checking and outlier
/// detection on top, driving the registry through its methods (`set_health`,
/// `live_agents`).
/// `mod.rs` is the module's facade and may name any of them.
const ROUTING_LAYERS: &[&[&str]] = &[
    &["endpoint", "metrics", "shared"],
    &["agent"],
    &["tiers"],
    &["strategy"],
    &["load_index"],
    &["router"],
    &["registration"],
    &["registry_store"],
    &["registry"],
    &["affinity"],
    &["health_config"],
    &["outlier"],
    &["health"],
];

fn routing_rank_of(file: &str) -> Option<usize> {
    ROUTING_LAYERS
        .iter()
        .position(|layer| layer.contains(&file))
}

/// The files of `src/routing/` a routing file's code names: `super::X`,
/// `crate::routing::X` (and the layer's own module name, `routing_layer`).
fn routing_paths(code: &str) -> Vec<String> {
    let mut found = paths_after(code, "super::");
    found.extend(paths_after(code, "crate::routing::"));
    found.extend(paths_after(code, "crate::routing_layer::"));
    found.retain(|name| routing_rank_of(name).is_some());
    found
}

#[test]
fn no_routing_file_imports_one_above_it() {
    let dir = src().join("routing");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    files.sort();
    let mut violations = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&dir).unwrap();
        let name = rel.to_str().unwrap().trim_end_matches(".rs").to_string();
        if name == "mod" {
            continue;
        }
        let Some(own) = routing_rank_of(&name) else {
            violations.push(format!(
                "routing/{}: no rank; add it to ROUTING_LAYERS in tests/layers.rs and to ARCHITECTURE.md",
                rel.display()
            ));
            continue;
        };
        let code = fs::read_to_string(file).unwrap();
        for target in routing_paths(&code) {
            if routing_rank_of(&target).unwrap() > own {
                violations.push(format!(
                    "routing/{}: uses `{target}`, which is above it",
                    rel.display()
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "routing order violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_routing_checker_sees_sibling_imports_in_every_form() {
    let code = "use super::agent::Agent;\nuse super::{router::ToolRouter, tiers};\n\
                use super::*;\n// use super::health::x;\n\
                let x = super::metrics::y(); use crate::routing::outlier::Health;";
    assert_eq!(
        routing_paths(code),
        vec!["agent", "router", "tiers", "metrics", "outlier"]
    );
}

#[test]
fn the_checker_sees_imports_in_every_form() {
    let code = "use crate::storage::Database;\nuse crate::{policy::Op, error::Error};\n\
                // use crate::server::x;\nlet x = crate::routing::y(); let z = mycrate::no;";
    assert_eq!(
        crate_paths(code),
        vec!["storage", "policy", "error", "routing"]
    );
}

#[test]
fn every_source_file_says_what_it_owns() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let unexplained: Vec<String> = files
        .iter()
        .filter(|f| {
            !fs::read_to_string(f)
                .unwrap()
                .trim_start()
                .starts_with("//!")
        })
        .map(|f| f.strip_prefix(src()).unwrap().display().to_string())
        .collect();
    assert!(
        unexplained.is_empty(),
        "files without a `//!` header saying what they own: {unexplained:?}"
    );
}
