//! `switchboard policy`: `check` (compile Rego modules and run their tests, a
//! file or a directory), and the stored policies (`policies/{name}`) of a
//! database: `list`, `show`, `put` (alias `add`), `delete` — on the local
//! database (`--data`) or a running server (`--server`).

use super::ServerArgs;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use switchboard::config::DEFAULT_DATA_DIR;
use switchboard::policy::rego::{module_files, run_tests, RegoModule, RegoTestResult};
use switchboard::{Database, Error, PolicyChange, RegoEvaluator, StoredPolicy};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Compile Rego modules (a file, or every *.rego of a directory) with the
    /// parser `serve` uses, and run their *_test.rego tests.
    Check {
        /// A .rego file, or a directory of them (with their *_test.rego files).
        path: PathBuf,
    },
    /// List the stored policies.
    List {
        #[command(flatten)]
        store: PolicyStore,
    },
    /// Show one stored policy: source, scopes, ops, revision.
    Show {
        /// The stored policy's name (see `switchboard policy list`).
        name: String,
        #[command(flatten)]
        store: PolicyStore,
    },
    /// Store a Rego module (replacing the policy of the same name, atomically:
    /// a module that does not compile changes nothing).
    #[command(alias = "add")]
    Put {
        /// The .rego module to store.
        file: PathBuf,
        /// The policy's name [default: the module's package].
        #[arg(long)]
        name: Option<String>,
        /// A key glob it guards, instead of the file's `# scope:` lines
        /// (repeat for several).
        #[arg(long)]
        scope: Vec<String>,
        #[command(flatten)]
        store: PolicyStore,
    },
    /// Delete a stored policy.
    Delete {
        /// The stored policy's name (see `switchboard policy list`).
        name: String,
        #[command(flatten)]
        store: PolicyStore,
    },
}

/// Where the stored policies are: a local database or a running server.
#[derive(Args)]
pub struct PolicyStore {
    /// The database directory.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data: PathBuf,
    #[command(flatten)]
    pub remote: ServerArgs,
}

impl PolicyStore {
    fn open(&self) -> switchboard::Result<Database> {
        super::StoreArgs {
            data: self.data.clone(),
            policies: None,
            remote: ServerArgs::default(),
        }
        .open()
    }
}

fn as_json(policy: &StoredPolicy) -> Value {
    let mut v = serde_json::to_value(policy).unwrap_or(Value::Null);
    v["scope"] = json!(policy.scopes.first().cloned().unwrap_or_default());
    v
}

fn summary(p: &Value) -> String {
    let list = |field: &str| {
        p[field]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    format!(
        "{}  revision {}  scope {}  ops {}",
        p["name"].as_str().unwrap_or_default(),
        p["revision"],
        list("scopes"),
        list("ops")
    )
}

pub async fn run(cmd: PolicyCommand) -> switchboard::Result<()> {
    match cmd {
        PolicyCommand::Check { path } => check(&path),
        PolicyCommand::List { store } => {
            let policies: Vec<Value> = match store.remote.client()? {
                Some(client) => client
                    .get("v1/policies")
                    .await?
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
                None => store
                    .open()?
                    .stored_policies()?
                    .iter()
                    .map(as_json)
                    .collect(),
            };
            for p in &policies {
                super::out(summary(p))?;
            }
            if policies.is_empty() {
                super::out("(no policies loaded)")?;
            }
            Ok(())
        }
        PolicyCommand::Show { name, store } => {
            let policy = match store.remote.client()? {
                Some(client) => client.get(&format!("v1/policies/{name}")).await?,
                None => match store.open()?.stored_policy(&name)? {
                    Some(p) => as_json(&p),
                    None => {
                        return Err(Error::invalid(format!(
                            "no stored policy {name}; `switchboard policy list` shows them"
                        )))
                    }
                },
            };
            super::out(summary(&policy))?;
            super::out(policy["source"].as_str().unwrap_or_default().trim_end())
        }
        PolicyCommand::Put {
            file,
            name,
            scope,
            store,
        } => {
            let source = read(&file)?;
            let name = match name {
                Some(name) => name,
                None => RegoModule::compile(
                    Some(&file.display().to_string()),
                    &source,
                    RegoEvaluator::Interpreter,
                )?
                .name()
                .to_string(),
            };
            let scopes = (!scope.is_empty()).then_some(scope);
            let (policy, change) = match store.remote.client()? {
                Some(client) => {
                    let mut body = json!({ "source": source });
                    if let Some(scopes) = &scopes {
                        body["scopes"] = json!(scopes);
                    }
                    let answer = client
                        .send(
                            Method::PUT,
                            client.url(&format!("v1/policies/{name}")),
                            Some(&body),
                        )
                        .await
                        .map_err(scope_hint)?;
                    let change = answer["change"].as_str().unwrap_or("stored").to_string();
                    (answer, change)
                }
                None => {
                    let (policy, change) = store
                        .open()?
                        .put_policy(&name, &source, scopes.as_deref())
                        .map_err(scope_hint)?;
                    let change = match change {
                        PolicyChange::Created => "created",
                        PolicyChange::Replaced => "replaced",
                        PolicyChange::Unchanged => "unchanged",
                    };
                    (as_json(&policy), change.to_string())
                }
            };
            super::out(format_args!("{change}: {}", summary(&policy)))
        }
        PolicyCommand::Delete { name, store } => {
            match store.remote.client()? {
                Some(client) => {
                    client
                        .send(
                            Method::DELETE,
                            client.url(&format!("v1/policies/{name}")),
                            None,
                        )
                        .await?;
                }
                None => {
                    if store.open()?.delete_policy(&name)?.is_none() {
                        return Err(Error::invalid(format!(
                            "no stored policy {name}; `switchboard policy list` shows them"
                        )));
                    }
                }
            }
            super::out(format_args!("deleted {name}"))
        }
    }
}

fn read(file: &Path) -> switchboard::Result<String> {
    std::fs::read_to_string(file)
        .map_err(|e| Error::invalid(format!("cannot read {}: {e}", file.display())))
}

/// Checks one module file, or every module of a directory (like `opa test
/// DIR`); fails if any does not load or any test fails.
pub fn check(path: &Path) -> switchboard::Result<()> {
    let files: Vec<PathBuf> = if path.is_dir() {
        module_files(path)?.into_iter().map(|(p, _)| p).collect()
    } else {
        vec![path.to_path_buf()]
    };
    if files.is_empty() {
        return Err(Error::invalid(format!(
            "{} holds no *.rego module",
            path.display()
        )));
    }
    let (mut passed, mut failed, mut missing) = (0, 0, 0);
    for file in &files {
        let results = run_tests(file).map_err(scope_hint)?;
        let source = read(file)?;
        let name = file.display().to_string();
        let scopes =
            switchboard::policy::rego::declared_scopes(&name, &source).map_err(scope_hint)?;
        let ops = switchboard::policy::rego::declared_ops(&name, &source)?;
        let scopes: Vec<&str> = scopes.iter().map(|g| g.as_str()).collect();
        let ops: Vec<&str> = ops.iter().map(|o| o.as_str()).collect();
        super::out(format_args!(
            "{name}: compiles; scope {}; ops {}",
            scopes.join(", "),
            ops.join(", ")
        ))?;
        for f in switchboard::policy::rego::unknown_input_fields(&source) {
            let hint = match (f.nearest, f.reference.rsplit_once('.')) {
                (Some(n), Some((head, _))) => format!("; did you mean {head}.{n}?"),
                _ => String::new(),
            };
            if f.certain {
                missing += 1;
                super::out(format_args!(
                    "  ERROR line {}: {} is not in the input document (op, phase, key, value, context, input), so what tests it never holds{hint}",
                    f.line, f.reference
                ))?;
            } else {
                super::out(format_args!(
                    "  WARNING line {}: Switchboard sets no {}{hint} (fine if your application sets it)",
                    f.line, f.reference
                ))?;
            }
        }
        if results.is_empty() {
            super::out(format_args!(
                "  no tests (add {}_test.rego beside it)",
                file.file_stem().and_then(|s| s.to_str()).unwrap_or("")
            ))?;
        }
        for r in &results {
            report(r)?;
            if r.passed {
                passed += 1;
            } else {
                failed += 1;
            }
        }
    }
    super::out(format_args!("{passed} passed, {failed} failed"))?;
    if missing > 0 {
        return Err(Error::invalid(format!(
            "{} to fields the input document does not have (docs/policy.md lists them)",
            super::count(missing, "reference")
        )));
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(Error::invalid(format!("{failed} policy test(s) failed")))
    }
}

/// A module without `# scope:` lines can still be stored with scopes given
/// on the command line: say so where the library's message cannot.
fn scope_hint(e: Error) -> Error {
    if !e.to_string().contains("no scope declared") {
        return e;
    }
    Error::invalid(format!(
        "{e}, or store it with `switchboard policy put FILE --scope GLOB` (repeatable)"
    ))
}

fn report(r: &RegoTestResult) -> switchboard::Result<()> {
    match &r.detail {
        None => super::out(format_args!("  PASS {}", r.name)),
        Some(d) => super::out(format_args!(
            "  FAIL {}\n       expected: true\n       actual:   {d}",
            r.name
        )),
    }
}
