//! Loading a policy directory: the `# scope:` and `# ops:` headers of each
//! `*.rego` file, compiled all before any is added.

use super::{RegoEvaluator, RegoModule};
use crate::error::{Error, Result};
use crate::policy::glob::Glob;
use crate::policy::Op;
use std::path::Path;

/// Scopes declared by `# scope: GLOB` comment lines at the top of a file.
pub fn declared_scopes(file: &str, source: &str) -> Result<Vec<Glob>> {
    let mut scopes = Vec::new();
    for line in header_comments(source) {
        if let Some(glob) = line.strip_prefix("scope:") {
            scopes.push(Glob::new(glob.trim()).map_err(|e| Error::PolicyLoad {
                name: file.to_string(),
                reason: e.to_string(),
            })?);
        }
    }
    if scopes.is_empty() {
        return Err(Error::PolicyLoad {
            name: file.to_string(),
            reason:
                "no scope declared; start the file with a comment such as `# scope: tools/shell/**`"
                    .into(),
        });
    }
    Ok(scopes)
}

pub(super) fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::PolicyLoad {
        name: path.display().to_string(),
        reason: format!("cannot read: {e}"),
    })
}

fn rego_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::PolicyLoad {
        name: dir.display().to_string(),
        reason: format!("cannot read policy directory: {e}"),
    })?;
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rego"))
        .collect();
    files.sort();
    Ok(files)
}

fn is_test_file(path: &Path) -> bool {
    path.file_stem()
        .and_then(|s| s.to_str())
        .is_some_and(|s| s.ends_with("_test"))
}

/// A module read from a policy directory, with what its header declares.
pub(crate) struct LoadedModule {
    pub(crate) scopes: Vec<Glob>,
    pub(crate) ops: Vec<Op>,
    pub(crate) module: RegoModule,
}

/// Operations declared by a `# ops: put, delete, get` comment line at the top
/// of a file; puts and deletes if there is none.
pub fn declared_ops(file: &str, source: &str) -> Result<Vec<Op>> {
    for line in header_comments(source) {
        if let Some(list) = line.strip_prefix("ops:") {
            let mut ops = Vec::new();
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                ops.push(match name {
                    "put" => Op::Put,
                    "delete" => Op::Delete,
                    "get" => Op::Get,
                    other => {
                        return Err(Error::PolicyLoad {
                            name: file.to_string(),
                            reason: format!(
                                "unknown op {other:?} in `# ops:`; use put, delete, get (get judges reads)"
                            ),
                        })
                    }
                });
            }
            if ops.is_empty() {
                return Err(Error::PolicyLoad {
                    name: file.to_string(),
                    reason: "`# ops:` lists no operation".into(),
                });
            }
            return Ok(ops);
        }
    }
    Ok(vec![Op::Put, Op::Delete])
}

/// The text of the comment lines before the first line of code, trimmed.
fn header_comments(source: &str) -> impl Iterator<Item = &str> {
    source
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map_while(|l| l.strip_prefix('#'))
        .map(str::trim)
}

/// The one parser of a module and its header: every entry point (a policy
/// directory, the stored policies, `policy check`, the HTTP API) goes
/// through it, so a header one accepts every other accepts. `scopes`
/// overrides the `# scope:` lines when given.
pub(crate) fn parse_module(
    file: &str,
    source: &str,
    scopes: Option<&[String]>,
    evaluator: RegoEvaluator,
) -> Result<LoadedModule> {
    let scopes = match scopes {
        Some(globs) if !globs.is_empty() => globs
            .iter()
            .map(|g| {
                Glob::new(g).map_err(|e| Error::PolicyLoad {
                    name: file.to_string(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>>>()?,
        _ => declared_scopes(file, source)?,
    };
    Ok(LoadedModule {
        scopes,
        ops: declared_ops(file, source)?,
        module: RegoModule::compile(Some(file), source, evaluator)?,
    })
}

/// The `*.rego` modules of `dir` (not `*_test.rego`), in file-name order:
/// `(path, source)`.
pub fn module_files(dir: &Path) -> Result<Vec<(std::path::PathBuf, String)>> {
    rego_files(dir)?
        .into_iter()
        .filter(|p| !is_test_file(p))
        .map(|p| read(&p).map(|source| (p, source)))
        .collect()
}

/// Compiles every non-test module of `dir` with its declared scopes and ops.
pub(crate) fn load_dir(dir: &Path, evaluator: RegoEvaluator) -> Result<Vec<LoadedModule>> {
    let mut loaded = Vec::new();
    for (path, source) in module_files(dir)? {
        let file = path.display().to_string();
        loaded.push(parse_module(&file, &source, None, evaluator)?);
    }
    Ok(loaded)
}
