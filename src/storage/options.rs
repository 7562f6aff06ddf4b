//! How a [`Database`](super::Database) is opened: durability, value size
//! limit, block cache, and the table format.

/// The default ceiling on a stored value's size.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;
/// The default size of the cache of uncompressed table blocks.
pub const DEFAULT_BLOCK_CACHE_BYTES: usize = 32 << 20;

/// When a commit is considered durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every commit is in the write-ahead log before it returns, but the log is
    /// not fsynced: a crashed *process* loses nothing, a crashed *machine* may
    /// lose the last moments of writes. The default.
    #[default]
    Buffered,
    /// The log is fsynced on every commit: survives power loss, costs a disk flush.
    Sync,
}

/// How to open a [`Database`](crate::Database).
#[derive(Clone, Debug)]
pub struct DatabaseOptions {
    /// See [`Durability`].
    pub durability: Durability,
    /// Values larger than this are refused with [`Error::InvalidInput`](crate::Error::InvalidInput).
    pub max_value_bytes: usize,
    /// Memory for uncompressed table blocks. Long scans read fastest when the
    /// part of the store they cover fits (see docs/benchmarks.md).
    pub block_cache_bytes: usize,
}

impl Default for DatabaseOptions {
    fn default() -> Self {
        DatabaseOptions {
            durability: Durability::Buffered,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            block_cache_bytes: DEFAULT_BLOCK_CACHE_BYTES,
        }
    }
}

impl DatabaseOptions {
    /// Sets the durability of commits.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the largest value accepted.
    pub fn max_value_bytes(mut self, max: usize) -> Self {
        self.max_value_bytes = max;
        self
    }

    /// Sets the memory for cached table blocks.
    pub fn block_cache_bytes(mut self, bytes: usize) -> Self {
        self.block_cache_bytes = bytes;
        self
    }
}

/// The table format: 16 KiB blocks (RocksDB's default is 4 KiB), because the
/// store is read mostly by long prefix scans of records a few hundred bytes
/// long, which then cost a quarter of the block reads and checksums; and a
/// block cache of `block_cache_bytes`.
pub(crate) fn table_options(block_cache_bytes: usize) -> rocksdb::BlockBasedOptions {
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_size(16 << 10);
    table.set_block_cache(&rocksdb::Cache::new_lru_cache(block_cache_bytes));
    table
}
