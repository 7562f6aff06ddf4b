//! [`ToolCategory`]: the kinds of tool an agent serves, and how a category is
//! written in keys and JSON.

use super::validate_id;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What kind of tool an agent serves. Serialised lowercase (`"code"`); a custom
/// category by its own name. `Custom("code")` is the same category as `Code`.
#[derive(Clone, Debug)]
pub enum ToolCategory {
    /// Running code.
    Code,
    /// Searching.
    Search,
    /// Database queries.
    Database,
    /// Web access.
    Web,
    /// File operations.
    File,
    /// Git operations.
    Git,
    /// Shell commands.
    Shell,
    /// Computing embeddings.
    Embedding,
    /// Any other category, named by a valid id.
    Custom(String),
}

impl ToolCategory {
    /// The built-in categories, each a variant of its own.
    pub const BUILT_IN: [ToolCategory; 8] = [
        ToolCategory::Code,
        ToolCategory::Search,
        ToolCategory::Database,
        ToolCategory::Web,
        ToolCategory::File,
        ToolCategory::Git,
        ToolCategory::Shell,
        ToolCategory::Embedding,
    ];

    /// The category's name as it appears in keys and JSON.
    pub fn as_str(&self) -> &str {
        match self {
            ToolCategory::Code => "code",
            ToolCategory::Search => "search",
            ToolCategory::Database => "database",
            ToolCategory::Web => "web",
            ToolCategory::File => "file",
            ToolCategory::Git => "git",
            ToolCategory::Shell => "shell",
            ToolCategory::Embedding => "embedding",
            ToolCategory::Custom(name) => name,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        validate_id("category", self.as_str())
    }
}

impl PartialEq for ToolCategory {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for ToolCategory {}
impl std::hash::Hash for ToolCategory {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Display for ToolCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ToolCategory {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        validate_id("category", s)?;
        Ok(Self::BUILT_IN
            .into_iter()
            .find(|built_in| built_in.as_str() == s)
            .unwrap_or_else(|| ToolCategory::Custom(s.to_string())))
    }
}

impl Serialize for ToolCategory {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ToolCategory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
