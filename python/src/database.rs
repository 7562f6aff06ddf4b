//! `switchboard.Database` and `switchboard.Transaction`: the policy-checked
//! key-value store. Every call that can run policy hooks releases the GIL
//! first, so a Python hook running on another thread can take it.

use crate::errors::{IntoPyResult, InvalidInputError};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;
use switchboard::PolicyContext;

/// Keys a scan reads from RocksDB per trip; the iterator hands them out one
/// by one, so an audit of any length holds at most this many in memory.
const SCAN_BATCH: usize = 256;

/// A value as bytes: `bytes`, `bytearray` or `str` (stored as UTF-8).
pub fn value_bytes(value: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(b) = value.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    if let Ok(b) = value.cast::<PyByteArray>() {
        return Ok(b.to_vec());
    }
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(s.to_str()?.as_bytes().to_vec());
    }
    Err(PyTypeError::new_err(format!(
        "a value must be bytes or str, not {}",
        value.get_type().name()?
    )))
}

/// The policy context handed to hooks: string keys and values.
pub fn context(ctx: Option<HashMap<String, String>>) -> PolicyContext {
    let mut out = PolicyContext::new();
    for (k, v) in ctx.into_iter().flatten() {
        out.insert(k, v);
    }
    out
}

/// One open store. Every write passes through the database's policy hooks.
#[pyclass(module = "switchboard", frozen)]
pub struct Database {
    pub(crate) db: switchboard::Database,
}

#[pymethods]
impl Database {
    /// Opens (creating if needed) the store at `path`.
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let db = py.detach(|| switchboard::Database::open(&path)).py()?;
        Ok(Database { db })
    }

    /// Opens (creating if needed) the store at `path`.
    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        Self::new(py, path)
    }

    /// Where the store lives on disk.
    #[getter]
    fn path(&self) -> PathBuf {
        self.db.path().to_path_buf()
    }

    /// Writes `value` at `key`; `context` (str → str) is handed to the hooks.
    #[pyo3(signature = (key, value, context=None))]
    fn put(
        &self,
        py: Python<'_>,
        key: &str,
        value: &Bound<'_, PyAny>,
        context: Option<HashMap<String, String>>,
    ) -> PyResult<()> {
        let value = value_bytes(value)?;
        let ctx = self::context(context);
        py.detach(|| self.db.put_with(key, &value, &ctx)).py()
    }

    /// The value at `key` (through the read hooks), or None.
    #[pyo3(signature = (key, context=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        context: Option<HashMap<String, String>>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let ctx = self::context(context);
        let value = py.detach(|| self.db.get_with(key, &ctx)).py()?;
        Ok(value.map(|v| PyBytes::new(py, &v)))
    }

    /// Deletes `key` (a missing key is not an error).
    #[pyo3(signature = (key, context=None))]
    fn delete(
        &self,
        py: Python<'_>,
        key: &str,
        context: Option<HashMap<String, String>>,
    ) -> PyResult<()> {
        let ctx = self::context(context);
        py.detach(|| self.db.delete_with(key, &ctx)).py()
    }

    /// Every `(key, value)` under `prefix`, in key order (starting after
    /// `after`, exclusive, if given), through the read hooks as `context`.
    #[pyo3(signature = (prefix, context=None, after=None))]
    fn scan(
        &self,
        prefix: &str,
        context: Option<HashMap<String, String>>,
        after: Option<String>,
    ) -> Scan {
        // A bad prefix is reported by the first `next()`, as the core's scan does.
        Scan {
            state: Mutex::new(ScanState {
                db: self.db.clone(),
                prefix: prefix.to_string(),
                ctx: self::context(context),
                last: after,
                buffer: VecDeque::new(),
                done: false,
            }),
        }
    }

    /// A transaction: stage puts and deletes, then `commit()` them atomically.
    /// As a context manager it commits on a clean exit and discards on an exception.
    fn transaction(&self) -> Transaction {
        Transaction {
            tx: Mutex::new(Some(self.db.transaction())),
        }
    }

    fn __repr__(&self) -> String {
        format!("Database({:?})", self.db.path())
    }
}

struct ScanState {
    db: switchboard::Database,
    prefix: String,
    ctx: PolicyContext,
    last: Option<String>,
    buffer: VecDeque<(String, Vec<u8>)>,
    done: bool,
}

/// An iterator of `(key: str, value: bytes)`, read in batches.
#[pyclass(module = "switchboard", frozen)]
pub struct Scan {
    state: Mutex<ScanState>,
}

#[pymethods]
impl Scan {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<(String, Bound<'py, PyBytes>)>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.buffer.is_empty() && !state.done {
            let st = &mut *state;
            let batch = py
                .detach(|| {
                    st.db
                        .scan_from(&st.prefix)
                        .after(st.last.as_deref())
                        .as_reader(&st.ctx)
                        .iter()
                        .take(SCAN_BATCH)
                        .collect::<switchboard::Result<Vec<_>>>()
                })
                .py()?;
            st.done = batch.len() < SCAN_BATCH;
            if let Some((key, _)) = batch.last() {
                st.last = Some(key.clone());
            }
            st.buffer.extend(batch);
        }
        Ok(state
            .buffer
            .pop_front()
            .map(|(k, v)| (k, PyBytes::new(py, &v))))
    }
}

/// Staged writes that commit together: any Deny stores nothing of them.
#[pyclass(module = "switchboard", frozen)]
pub struct Transaction {
    tx: Mutex<Option<switchboard::Transaction>>,
}

impl Transaction {
    fn with<T>(&self, f: impl FnOnce(&mut switchboard::Transaction) -> PyResult<T>) -> PyResult<T> {
        let mut guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(tx) => f(tx),
            None => Err(InvalidInputError::new_err(
                "this transaction has already been committed or discarded",
            )),
        }
    }

    fn take(&self) -> Option<switchboard::Transaction> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[pymethods]
impl Transaction {
    /// Stages a put.
    #[pyo3(signature = (key, value, context=None))]
    fn put(
        &self,
        key: &str,
        value: &Bound<'_, PyAny>,
        context: Option<HashMap<String, String>>,
    ) -> PyResult<()> {
        let value = value_bytes(value)?;
        let ctx = context_of(context);
        self.with(|tx| tx.put_with(key, &value, &ctx).py())
    }

    /// Stages a delete.
    #[pyo3(signature = (key, context=None))]
    fn delete(&self, key: &str, context: Option<HashMap<String, String>>) -> PyResult<()> {
        let ctx = context_of(context);
        self.with(|tx| tx.delete_with(key, &ctx).py())
    }

    /// The value `key` will have once this commits: the last staged write,
    /// else the stored value.
    fn get<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let value = self.with(|tx| py.detach(|| tx.get(key)).py())?;
        Ok(value.map(|v| PyBytes::new(py, &v)))
    }

    /// Runs the before-hooks on every staged write and commits them all, or
    /// none (raising the first refusal).
    fn commit(&self, py: Python<'_>) -> PyResult<()> {
        match self.take() {
            Some(tx) => py.detach(|| tx.commit()).py(),
            None => Err(InvalidInputError::new_err(
                "this transaction has already been committed or discarded",
            )),
        }
    }

    /// Drops every staged write.
    fn discard(&self) {
        self.take();
    }

    fn __len__(&self) -> usize {
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |tx| tx.len())
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// Commits on a clean exit; discards when the block raised (and lets
    /// the exception through).
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        if exc_type.is_some_and(|t| !t.is_none()) {
            self.take();
            return Ok(false);
        }
        // None: committed or discarded inside the block.
        if let Some(tx) = self.take() {
            py.detach(|| tx.commit()).py()?;
        }
        Ok(false)
    }
}

fn context_of(ctx: Option<HashMap<String, String>>) -> PolicyContext {
    context(ctx)
}
