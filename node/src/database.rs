//! `NativeDatabase`: one open store. Every call that can run policy hooks
//! is async and runs off the JS thread (a JS hook called from there would
//! wait for the thread that is waiting for it).
//!
//! Scans are read in pages (`scanPage`) that `index.js` turns into an async
//! iterator, so an audit of any length holds one page in memory.

use crate::errors::invalid;
use crate::runtime::blocking;
use napi::bindgen_prelude::Buffer;
use napi_derive::napi;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use switchboard::PolicyContext;

/// Keys read from RocksDB per page of a scan.
const SCAN_PAGE: u32 = 256;

/// The policy context handed to hooks: string keys and values.
pub fn context(ctx: Option<HashMap<String, String>>) -> PolicyContext {
    let mut out = PolicyContext::new();
    for (k, v) in ctx.into_iter().flatten() {
        out.insert(k, v);
    }
    out
}

/// One key and its value, as a scan returns them.
#[napi(object)]
pub struct Entry {
    pub key: String,
    pub value: Buffer,
}

/// One staged write of a batch: `value` for a put, none for a delete.
#[napi(object)]
pub struct BatchOp {
    pub key: String,
    pub value: Option<Buffer>,
    pub context: Option<HashMap<String, String>>,
}

/// An open store. `close()` drops this handle's reference; RocksDB closes
/// once no dispatcher or policy engine holds one either.
#[napi]
pub struct NativeDatabase {
    db: Arc<Mutex<Option<switchboard::Database>>>,
    path: String,
}

impl NativeDatabase {
    /// The store, or an error once closed.
    pub fn handle(&self) -> napi::Result<switchboard::Database> {
        self.db
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| invalid("this database has been closed"))
    }
}

/// Opens (creating if needed) the store at `path`.
#[napi]
pub async fn open_database(path: String) -> napi::Result<NativeDatabase> {
    let p = path.clone();
    let db = blocking(move || switchboard::Database::open(&p)).await?;
    Ok(NativeDatabase {
        path: db.path().to_string_lossy().into_owned(),
        db: Arc::new(Mutex::new(Some(db))),
    })
}

#[napi]
impl NativeDatabase {
    /// Where the store lives on disk.
    #[napi(getter)]
    pub fn path(&self) -> String {
        self.path.clone()
    }

    /// Writes `value` at `key` through the write hooks.
    #[napi]
    pub async fn put(
        &self,
        key: String,
        value: Buffer,
        context: Option<HashMap<String, String>>,
    ) -> napi::Result<()> {
        let db = self.handle()?;
        let value = value.to_vec();
        let ctx = self::context(context);
        blocking(move || db.put_with(&key, &value, &ctx)).await
    }

    /// The value at `key` through the read hooks, or null.
    #[napi]
    pub async fn get(
        &self,
        key: String,
        context: Option<HashMap<String, String>>,
    ) -> napi::Result<Option<Buffer>> {
        let db = self.handle()?;
        let ctx = self::context(context);
        let value = blocking(move || db.get_with(&key, &ctx)).await?;
        Ok(value.map(Buffer::from))
    }

    /// Deletes `key` (a missing key is not an error).
    #[napi]
    pub async fn delete(
        &self,
        key: String,
        context: Option<HashMap<String, String>>,
    ) -> napi::Result<()> {
        let db = self.handle()?;
        let ctx = self::context(context);
        blocking(move || db.delete_with(&key, &ctx)).await
    }

    /// Up to `limit` (default 256) entries under `prefix` in key order,
    /// after `after` (exclusive), through the read hooks.
    #[napi]
    pub async fn scan_page(
        &self,
        prefix: String,
        after: Option<String>,
        limit: Option<u32>,
        context: Option<HashMap<String, String>>,
    ) -> napi::Result<Vec<Entry>> {
        let db = self.handle()?;
        let ctx = self::context(context);
        let limit = limit.unwrap_or(SCAN_PAGE).clamp(1, 10_000) as usize;
        let page = blocking(move || {
            db.scan_from(&prefix)
                .after(after.as_deref())
                .as_reader(&ctx)
                .iter()
                .take(limit)
                .collect::<switchboard::Result<Vec<_>>>()
        })
        .await?;
        Ok(page
            .into_iter()
            .map(|(key, value)| Entry {
                key,
                value: value.into(),
            })
            .collect())
    }

    /// Commits `ops` atomically through the hooks: any Deny stores none.
    #[napi]
    pub async fn commit(&self, ops: Vec<BatchOp>) -> napi::Result<()> {
        let db = self.handle()?;
        let ops: Vec<(String, Option<Vec<u8>>, PolicyContext)> = ops
            .into_iter()
            .map(|op| (op.key, op.value.map(|v| v.to_vec()), context(op.context)))
            .collect();
        blocking(move || {
            let mut tx = db.transaction();
            for (key, value, ctx) in &ops {
                match value {
                    Some(v) => tx.put_with(key, v, ctx)?,
                    None => tx.delete_with(key, ctx)?,
                }
            }
            tx.commit()
        })
        .await
    }

    /// Drops this handle's reference to the store.
    #[napi]
    pub async fn close(&self) -> napi::Result<()> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner()).take();
        // The last reference closes RocksDB (a flush): not on the JS thread.
        blocking(move || {
            drop(db);
            Ok(())
        })
        .await
    }

    /// Whether `close()` has been called.
    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.db.lock().unwrap_or_else(|p| p.into_inner()).is_none()
    }
}
