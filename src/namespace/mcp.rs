//! MCP upstreams as data: how an MCP server is reached ([`McpServer`], the
//! payload of `AgentTransport::Mcp`), how its tools map to categories and
//! names, the value stored under `mcp_tools/{agent_id}/{tool}` for each
//! tool discovered on it, and under `mcp_prompts/` and `mcp_resources/`
//! for each prompt, resource and resource template.

use super::{validate_id, ToolCategory};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Tools discovered on MCP agents: `mcp_tools/{agent_id}/{tool}`.
pub(crate) const MCP_TOOLS: &str = "mcp_tools/";

/// `mcp_tools/{agent_id}/{tool}`: one tool discovered on an MCP agent.
pub fn mcp_tool_key(agent_id: &str, tool: &str) -> String {
    format!("{MCP_TOOLS}{agent_id}/{tool}")
}

/// Prompts discovered on MCP agents: `mcp_prompts/{agent_id}/{prompt}`.
pub(crate) const MCP_PROMPTS: &str = "mcp_prompts/";

/// Resources and resource templates discovered on MCP agents:
/// `mcp_resources/{agent_id}/{id}` (see [`mcp_resource_key`]).
pub(crate) const MCP_RESOURCES: &str = "mcp_resources/";

/// `mcp_prompts/{agent_id}/{prompt}`: one prompt discovered on an MCP agent.
pub fn mcp_prompt_key(agent_id: &str, prompt: &str) -> String {
    format!("{MCP_PROMPTS}{agent_id}/{prompt}")
}

/// `mcp_resources/{agent_id}/{id}`: one resource or resource template
/// discovered on an MCP agent. A URI may hold any character, so the key
/// holds [`uri_id`] of it; the record holds the URI itself.
pub fn mcp_resource_key(agent_id: &str, uri: &str) -> String {
    format!("{MCP_RESOURCES}{agent_id}/{}", uri_id(uri))
}

/// A URI (or URI template) as a key segment and a routable name: the first
/// 128 bits of its SHA-256, in hex.
pub fn uri_id(uri: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(uri.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `uri` is one of the URIs `template` (RFC 6570) describes: a
/// simple `{var}` stands for one path segment's worth of characters (no
/// `/`, `?` or `#`, at least one), every other expression (`{+var}`,
/// `{?q}`, …) for any text; the rest must match exactly.
pub fn uri_template_matches(template: &str, uri: &str) -> bool {
    let mut pattern = String::from("^");
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        pattern.push_str(&regex::escape(&rest[..open]));
        let Some(len) = rest[open..].find('}') else {
            return false;
        };
        let expression = &rest[open + 1..open + len];
        pattern.push_str(match expression.chars().next() {
            Some('+' | '#' | '?' | '&' | '/' | '.' | ';') => ".*",
            _ => "[^/?#]+",
        });
        rest = &rest[open + len + 1..];
    }
    pattern.push_str(&regex::escape(rest));
    pattern.push('$');
    regex::Regex::new(&pattern).is_ok_and(|r| r.is_match(uri))
}

/// SHA-256 (hex) of `schema` with object keys sorted at every level.
pub fn schema_hash(schema: &serde_json::Value) -> String {
    use sha2::Digest;
    fn canonical(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(map) => {
                let sorted: BTreeMap<&String, &serde_json::Value> = map.iter().collect();
                out.push('{');
                for (i, (k, v)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push(':');
                    canonical(v, out);
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    canonical(v, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut text = String::new();
    canonical(schema, &mut text);
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What an MCP agent offers besides tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum McpOfferKind {
    /// A prompt (`prompts/list`), named.
    Prompt,
    /// A resource (`resources/list`), named by its URI.
    Resource,
    /// A resource template (`resources/templates/list`), named by its URI template.
    ResourceTemplate,
}

impl McpOfferKind {
    /// What the item's name is in the server's listing.
    pub fn name_field(self) -> &'static str {
        match self {
            McpOfferKind::Prompt => "name",
            McpOfferKind::Resource => "uri",
            McpOfferKind::ResourceTemplate => "uriTemplate",
        }
    }

    /// The key of `name` (a prompt name, URI or URI template) on `agent_id`.
    pub fn key(self, agent_id: &str, name: &str) -> String {
        match self {
            McpOfferKind::Prompt => mcp_prompt_key(agent_id, name),
            McpOfferKind::Resource | McpOfferKind::ResourceTemplate => {
                mcp_resource_key(agent_id, name)
            }
        }
    }

    /// Where this kind's records live.
    pub fn prefix(self) -> &'static str {
        match self {
            McpOfferKind::Prompt => MCP_PROMPTS,
            McpOfferKind::Resource | McpOfferKind::ResourceTemplate => MCP_RESOURCES,
        }
    }

    /// The routable name of an offer: `prompt:{name}` for a prompt (the
    /// name callers see, prefixed on collision), `resource:{id}` and
    /// `template:{id}` for the others ([`uri_id`]). Calls, dispatch records
    /// and policies see this name.
    pub fn routed_name(self, name: &str) -> String {
        match self {
            McpOfferKind::Prompt => format!("prompt:{name}"),
            McpOfferKind::Resource => format!("resource:{}", uri_id(name)),
            McpOfferKind::ResourceTemplate => format!("template:{}", uri_id(name)),
        }
    }
}

/// The value under `mcp_prompts/{agent_id}/{prompt}` or
/// `mcp_resources/{agent_id}/{id}`: one prompt, resource or resource
/// template as the agent listed it, with the category its reads are routed
/// in. Like a tool's record, a policy on the prefix sees every new or
/// changed one before it is offered, and one the agent stops listing stays
/// as a tombstone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpOfferRecord {
    /// The agent offering it.
    pub agent_id: String,
    /// Prompt, resource or resource template.
    pub kind: McpOfferKind,
    /// The prompt's name, the resource's URI or the template.
    pub name: String,
    /// The category its reads are routed in (from the registration).
    pub category: ToolCategory,
    /// The item as the server listed it.
    pub listed: serde_json::Value,
    /// SHA-256 (hex) of the canonical listing: replicas with the same hash
    /// offer the same thing.
    pub hash: String,
    /// When it was first discovered (ms since the Unix epoch).
    pub discovered_at_ms: u64,
    /// The hash before this change, when it was known and changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_hash: Option<String>,
    /// Set when the agent stopped listing it (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn_at_ms: Option<u64>,
}

/// A command Switchboard runs as a local MCP server (stdio transport).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpCommand {
    /// The program (a path, or a name looked up in `PATH`).
    pub program: String,
    /// Its arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment variables (the rest of the environment is inherited).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The working directory (default: Switchboard's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// What a literal `env` value of a stdio MCP command reads as wherever it
/// leaves the node: the API, scans, the CLI and the cluster's shared
/// records. A literal value is taken as a secret (API keys go there), so it
/// is write-only.
pub const REDACTED_ENV: &str = "<redacted>";

/// What an `env` value of a stdio MCP command says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvValue<'a> {
    /// `${VAR}`: the variable `VAR` of the environment of the node that
    /// starts the command.
    Variable(&'a str),
    /// `file:PATH`: the contents of a file on that node.
    File(&'a str),
    /// Anything else: the value itself, a secret.
    Literal(&'a str),
}

impl<'a> EnvValue<'a> {
    /// Reads `value`: a reference when it has a reference's form.
    pub fn of(value: &'a str) -> EnvValue<'a> {
        if let Some(name) = value
            .strip_prefix("${")
            .and_then(|rest| rest.strip_suffix('}'))
            .filter(|name| !name.is_empty())
        {
            return EnvValue::Variable(name);
        }
        match value.strip_prefix("file:").filter(|path| !path.is_empty()) {
            Some(path) => EnvValue::File(path),
            None => EnvValue::Literal(value),
        }
    }
}

/// Whether an `env` value says where its secret is rather than holding it
/// (a `${VAR}` or `file:PATH` [`EnvValue`]). References are resolved at each
/// start, and shown and shared as written.
pub fn is_env_reference(value: &str) -> bool {
    !matches!(EnvValue::of(value), EnvValue::Literal(_))
}

impl McpCommand {
    /// Makes a relative `program` (one naming a path, like `./server.py` or
    /// `bin/server`; a bare name is looked up in `PATH` at each start) and a
    /// relative `cwd` absolute against `base`: done once, at registration,
    /// against the registering process's directory, so the command means
    /// the same wherever and whenever it is started.
    pub fn resolve_relative_paths(&mut self, base: &std::path::Path) {
        let absolute = |path: &str| {
            let path = path.strip_prefix("./").unwrap_or(path);
            base.join(path).display().to_string()
        };
        if self.program.contains('/') && !self.program.starts_with('/') {
            self.program = absolute(&self.program);
        }
        if let Some(cwd) = self.cwd.as_mut().filter(|cwd| !cwd.starts_with('/')) {
            *cwd = absolute(cwd);
        }
    }

    /// The command as it may be shown or shared: each literal `env` value
    /// replaced by [`REDACTED_ENV`], references kept.
    pub fn redacted(&self) -> McpCommand {
        let mut command = self.clone();
        for value in command.env.values_mut() {
            if !is_env_reference(value) {
                *value = REDACTED_ENV.to_string();
            }
        }
        command
    }
}

/// Redacts the literal `env` values in a stored record read as JSON (what a
/// scan shows) when `key` is an agent's (`agents/…`), as
/// [`McpCommand::redacted`] does; other records are left alone.
pub fn redact_agent_json(key: &str, value: &mut serde_json::Value) {
    if !key.starts_with(super::AGENTS) {
        return;
    }
    if let Some(serde_json::Value::Object(env)) = value.pointer_mut("/transport/command/env") {
        for value in env.values_mut() {
            if !value.as_str().is_some_and(is_env_reference) {
                *value = serde_json::Value::String(REDACTED_ENV.to_string());
            }
        }
    }
}

/// Maps the tools whose names match `glob` (`*` any run of characters, `?`
/// one) to `category`. The first matching rule wins; unmatched tools go to
/// the agent's first category.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryRule {
    /// A tool-name pattern, e.g. `search_*`.
    pub glob: String,
    /// The category the matching tools are routed in.
    pub category: ToolCategory,
}

/// How a tool name that several MCP agents serve with different input
/// schemas is told apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefixMode {
    /// Only colliding names are prefixed (`{agent}_{tool}`); replicas with
    /// the same schema share the bare name.
    #[default]
    Conditional,
    /// Every tool of this agent is exposed as `{agent}_{tool}`.
    Always,
}

impl PrefixMode {
    fn is_default(&self) -> bool {
        *self == PrefixMode::Conditional
    }
}

/// An MCP server as an agent: where it is (a streamable-HTTP `url` or a
/// stdio `command`), and how its tools are named and categorised. The
/// categories come from the registration, never from the server's own
/// annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServer {
    /// The streamable-HTTP endpoint (`http://` or `https://`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "not_null"
    )]
    pub url: Option<String>,
    /// The command of a stdio server.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "not_null"
    )]
    pub command: Option<McpCommand>,
    /// The tool names it serves, when declared; empty: what `tools/list`
    /// discovers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_names: Vec<String>,
    /// Tool-name globs to categories (first match wins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub category_rules: Vec<CategoryRule>,
    /// How colliding names are told apart.
    #[serde(default, skip_serializing_if = "PrefixMode::is_default")]
    pub prefix: PrefixMode,
    /// How long a discovered tool list is trusted before it is listed again
    /// (milliseconds; default 5 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_ttl_ms: Option<u64>,
    /// Headers sent with every request to a `url` server: the credentials
    /// an upstream asks for. Each value says where its secret is, never
    /// holds it (see [`HeaderSource`]), and is resolved on the node at each
    /// connection.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// OAuth 2.0 client credentials a `url` server is called with: a token
    /// obtained from its authorization server, sent as `Authorization:
    /// Bearer` with every request.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "not_null"
    )]
    pub oauth: Option<Box<UpstreamOAuth>>,
}

/// OAuth 2.0 client credentials (RFC 6749 §4.4) toward a `url` MCP server.
/// Like [`McpServer::headers`], the client's credential (a secret, or a
/// private key it signs assertions with) is only ever written as where the
/// node finds it, so a registration can be stored, read and shared in clear.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamOAuth {
    /// The client id the authorization server knows Switchboard by.
    pub client_id: String,
    /// Where the client secret is: `${VAR}` (the node's environment) or
    /// `file:PATH` (a file on the node); never the secret itself. Exactly
    /// one of this and `private_key`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "not_null"
    )]
    pub client_secret: Option<String>,
    /// Where the PEM private key is (`${VAR}` or `file:PATH`) that signs
    /// the client assertion of `private_key_jwt` authentication (RFC 7523
    /// §2.2) instead of a secret.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "not_null"
    )]
    pub private_key: Option<String>,
    /// The JWS algorithm of the client assertion (`ES256`, `RS256`, …);
    /// absent: the key's own (ES256 or ES384 by its curve, RS256, EdDSA).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "not_null"
    )]
    pub signing_algorithm: Option<String>,
    /// The `aud` of the client assertion; absent: the authorization
    /// server's issuer when discovered, else `token_url`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "not_null"
    )]
    pub assertion_audience: Option<String>,
    /// The scopes asked for (sent space-separated; none: the server's default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The token endpoint; absent: discovered from the MCP server's
    /// Protected Resource Metadata (RFC 9728) and its first authorization
    /// server's metadata (RFC 8414, or OpenID Connect discovery).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "not_null"
    )]
    pub token_url: Option<String>,
    /// The `resource` the token is asked for (RFC 8707); absent: the MCP url.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "not_null"
    )]
    pub resource: Option<String>,
    /// Calls made by a caller who authenticated with a JWT run with that
    /// caller's own upstream token, which the JWT is exchanged for (RFC
    /// 8693) at the same token endpoint, by this client; absent: every call
    /// runs with the registration's one client-credentials token.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "not_null"
    )]
    pub token_exchange: Option<TokenExchange>,
}

/// Token exchange (RFC 8693 §2.1) of a caller's JWT for an upstream token
/// of the caller's own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenExchange {
    /// What the caller's JWT is to the authorization server, sent as
    /// `subject_token_type` `urn:ietf:params:oauth:token-type:{this}`:
    /// `access_token` (absent), `id_token` or `jwt`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "not_null"
    )]
    pub subject_token_type: Option<String>,
    /// The `audience` asked for (the upstream's name at the authorization
    /// server), when it wants one besides `resource`; with
    /// `identity_provider`, the authorization server the grant is for
    /// (absent: its issuer, when discovered, else `token_url`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "not_null"
    )]
    pub audience: Option<String>,
    /// The identity assertion grant (MCP's enterprise-managed
    /// authorization): the caller's token is exchanged at this identity
    /// provider for an identity assertion (ID-JAG), which the MCP server's
    /// authorization server takes with the `jwt-bearer` grant (RFC 7523
    /// §2.1); absent: exchanged at the authorization server directly.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "not_null"
    )]
    pub identity_provider: Option<IdentityProvider>,
}

/// The identity provider a [`TokenExchange`] asks for identity assertions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityProvider {
    /// Its token endpoint (`http://` or `https://`).
    pub token_url: String,
    /// The client id it knows Switchboard by.
    pub client_id: String,
    /// Where its client secret is (`${VAR}` or `file:PATH`), sent in the
    /// form; absent: a public client.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "not_null"
    )]
    pub client_secret: Option<String>,
}

/// The kinds of caller token a [`TokenExchange`] may name.
pub const SUBJECT_TOKEN_TYPES: &[&str] = &["access_token", "id_token", "jwt"];

/// RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), at most
/// 256 bytes.
pub(crate) fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope.len() <= 256
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// The JWS algorithms a client assertion may be signed with.
pub const ASSERTION_ALGORITHMS: &[&str] = &[
    "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA",
];

/// An optional field that is either left out or given a value: `null` is
/// refused with a reason, as the API schema does not allow it.
pub(crate) fn not_null<'de, D, T>(deserializer: D) -> std::result::Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer)?
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("null is not a value here: leave the field out"))
}

/// The most scopes an [`UpstreamOAuth`] may ask for.
pub const MAX_OAUTH_SCOPES: usize = 32;

impl UpstreamOAuth {
    /// Checks what does not depend on the network: a client id, one
    /// credential (a secret or a private key) given by reference, scopes
    /// that are RFC 6749 scope tokens.
    fn validate(&self) -> Result<()> {
        if self.client_id.is_empty() || self.client_id.len() > 256 {
            return Err(Error::invalid("oauth.client_id must be 1 to 256 bytes"));
        }
        if self.client_id.chars().any(char::is_control) {
            return Err(Error::invalid(
                "oauth.client_id must not hold control characters",
            ));
        }
        match (&self.client_secret, &self.private_key) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "oauth takes client_secret or private_key, not both: the client \
                     authenticates one way",
                ))
            }
            (None, None) => {
                return Err(Error::invalid(
                    "oauth needs the client's credential: client_secret (where the node finds \
                     the secret, \"${VAR}\" or \"file:PATH\") or private_key (where it finds the \
                     PEM private key that signs a private_key_jwt assertion, the same forms)",
                ))
            }
            _ => {}
        }
        for (field, reference) in [
            ("client_secret", &self.client_secret),
            ("private_key", &self.private_key),
        ] {
            if reference.as_deref().is_some_and(|r| !is_env_reference(r)) {
                return Err(Error::invalid(format!(
                    "oauth.{field} holds its value; say where the node finds it instead, so no \
                     credential is stored: \"${{VAR}}\" or \"file:PATH\""
                )));
            }
        }
        if self.private_key.is_none()
            && (self.signing_algorithm.is_some() || self.assertion_audience.is_some())
        {
            return Err(Error::invalid(
                "oauth.signing_algorithm and oauth.assertion_audience describe a private_key_jwt \
                 assertion: give oauth.private_key too, or leave them out",
            ));
        }
        if let Some(algorithm) = &self.signing_algorithm {
            if !ASSERTION_ALGORITHMS.contains(&algorithm.as_str()) {
                return Err(Error::invalid(format!(
                    "oauth.signing_algorithm {algorithm:?} is not one of {}",
                    ASSERTION_ALGORITHMS.join(", ")
                )));
            }
        }
        if let Some(audience) = &self.assertion_audience {
            if audience.is_empty()
                || audience.len() > 2048
                || audience.chars().any(char::is_control)
            {
                return Err(Error::invalid(
                    "oauth.assertion_audience must be 1 to 2048 bytes without control characters",
                ));
            }
        }
        if self.scopes.len() > MAX_OAUTH_SCOPES {
            return Err(Error::invalid(format!(
                "at most {MAX_OAUTH_SCOPES} oauth.scopes"
            )));
        }
        for scope in &self.scopes {
            if !is_scope_token(scope) {
                return Err(Error::invalid(format!(
                    "oauth scope {scope:?} is not a scope token (visible ASCII, no space, \" or \\)"
                )));
            }
        }
        if let Some(exchange) = &self.token_exchange {
            if let Some(kind) = &exchange.subject_token_type {
                if !SUBJECT_TOKEN_TYPES.contains(&kind.as_str()) {
                    return Err(Error::invalid(format!(
                        "oauth.token_exchange.subject_token_type {kind:?} is not one of {}",
                        SUBJECT_TOKEN_TYPES.join(", ")
                    )));
                }
            }
            if let Some(provider) = &exchange.identity_provider {
                let url = reqwest::Url::parse(&provider.token_url).ok();
                if !url.is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
                    || provider.token_url.len() > 2048
                {
                    return Err(Error::invalid(format!(
                        "oauth.token_exchange.identity_provider.token_url {:?} must be an \
                         http:// or https:// URL of at most 2048 bytes",
                        provider.token_url
                    )));
                }
                if provider.client_id.is_empty()
                    || provider.client_id.len() > 256
                    || provider.client_id.chars().any(char::is_control)
                {
                    return Err(Error::invalid(
                        "oauth.token_exchange.identity_provider.client_id must be 1 to 256 bytes \
                         without control characters",
                    ));
                }
                if provider
                    .client_secret
                    .as_deref()
                    .is_some_and(|r| !is_env_reference(r))
                {
                    return Err(Error::invalid(
                        "oauth.token_exchange.identity_provider.client_secret holds its value; \
                         say where the node finds it instead, so no credential is stored: \
                         \"${VAR}\" or \"file:PATH\"",
                    ));
                }
            }
            if let Some(audience) = &exchange.audience {
                if audience.is_empty()
                    || audience.len() > 2048
                    || audience.chars().any(char::is_control)
                {
                    return Err(Error::invalid(
                        "oauth.token_exchange.audience must be 1 to 2048 bytes without control \
                         characters",
                    ));
                }
            }
        }
        if let Some(resource) = &self.resource {
            // RFC 8707 §2: an absolute URI without a fragment.
            let valid = resource.len() <= 2048
                && reqwest::Url::parse(resource).is_ok_and(|url| url.fragment().is_none());
            if !valid {
                return Err(Error::invalid(format!(
                    "oauth.resource {resource:?} must be an absolute URI without a #fragment \
                     (RFC 8707), at most 2048 bytes"
                )));
            }
        }
        Ok(())
    }
}

/// The most headers one MCP server may be given.
pub const MAX_MCP_HEADERS: usize = 32;

/// Headers an MCP server's `headers` may not set: the transport's own.
const RESERVED_HEADERS: &[&str] = &[
    "accept",
    "connection",
    "content-length",
    "content-type",
    "host",
    "last-event-id",
    "mcp-protocol-version",
    "mcp-session-id",
    "transfer-encoding",
];

/// Where the value of an upstream header comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderSource<'a> {
    /// `file:PATH`: the contents of a file on the node (without a trailing
    /// newline).
    File(&'a str),
    /// Text with one or more `${VAR}` references to the node's environment,
    /// e.g. `Bearer ${FILES_TOKEN}`.
    Template(Vec<HeaderPart<'a>>),
}

/// A piece of a [`HeaderSource::Template`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderPart<'a> {
    /// Text sent as written.
    Text(&'a str),
    /// The value of this environment variable.
    Variable(&'a str),
}

impl<'a> HeaderSource<'a> {
    /// Reads a header value. One that refers to nothing (a literal) is
    /// refused: a credential written into a registration would be stored
    /// and shared in clear.
    pub fn of(name: &str, value: &'a str) -> Result<HeaderSource<'a>> {
        if let Some(path) = value.strip_prefix("file:").filter(|p| !p.is_empty()) {
            return Ok(HeaderSource::File(path));
        }
        let mut parts = Vec::new();
        let mut rest = value;
        while let Some(start) = rest.find("${") {
            let Some(len) = rest[start + 2..].find('}') else {
                return Err(Error::invalid(format!(
                    "header {name}: {value:?} opens a ${{ reference it does not close"
                )));
            };
            let var = &rest[start + 2..start + 2 + len];
            if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(Error::invalid(format!(
                    "header {name}: ${{{var}}} is not an environment variable's name \
                     (letters, digits and _)"
                )));
            }
            if start > 0 {
                parts.push(HeaderPart::Text(&rest[..start]));
            }
            parts.push(HeaderPart::Variable(var));
            rest = &rest[start + 3 + len..];
        }
        if !rest.is_empty() {
            parts.push(HeaderPart::Text(rest));
        }
        if !parts.iter().any(|p| matches!(p, HeaderPart::Variable(_))) {
            return Err(Error::invalid(format!(
                "header {name} holds its value; say where the node finds it instead, so no \
                 credential is stored: \"${{VAR}}\" (text around it is kept, e.g. \
                 \"Bearer ${{FILES_TOKEN}}\") or \"file:PATH\""
            )));
        }
        for part in &parts {
            if let HeaderPart::Text(text) = part {
                if !text
                    .bytes()
                    .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
                {
                    return Err(Error::invalid(format!(
                        "header {name}: {text:?} is not visible ASCII"
                    )));
                }
            }
        }
        Ok(HeaderSource::Template(parts))
    }
}

/// An MCP server as a registration gives it (the `mcp` field of
/// `PUT /v1/agents/{id}` and of a config file's `[[agents]]`): its
/// streamable-HTTP URL alone, or the full [`McpServer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum McpSpec {
    /// `"http://127.0.0.1:9000/mcp"`
    Url(String),
    /// `{"url": ..., "tool_names": [...], "category_rules": [...], ...}` or
    /// `{"command": {"program": ..., "args": [...]}}`
    Server(McpServer),
}

/// A string is a URL, an object a full server; an object that is not a
/// valid server is refused with the reason [`McpServer`] gives (a missing
/// or misspelt field), not a bare "matched no variant".
impl<'de> Deserialize<'de> for McpSpec {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        struct SpecVisitor;
        impl<'de> serde::de::Visitor<'de> for SpecVisitor {
            type Value = McpSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an MCP server's URL (a string) or an object with `url` or `command`")
            }
            fn visit_str<E: serde::de::Error>(self, url: &str) -> std::result::Result<McpSpec, E> {
                Ok(McpSpec::Url(url.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<McpSpec, A::Error> {
                McpServer::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(McpSpec::Server)
            }
        }
        deserializer.deserialize_any(SpecVisitor)
    }
}

impl McpSpec {
    /// The server it describes.
    pub fn into_server(self) -> McpServer {
        match self {
            McpSpec::Url(url) => McpServer::http(url),
            McpSpec::Server(server) => server,
        }
    }
}

/// The longest `discovery_ttl_ms` accepted: 7 days.
pub const MAX_DISCOVERY_TTL_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// The longest list of declared tool names or category rules.
pub const MAX_MCP_RULES: usize = 1024;

impl McpServer {
    /// A server at a streamable-HTTP URL.
    pub fn http(url: impl Into<String>) -> Self {
        McpServer {
            url: Some(url.into()),
            ..Self::default()
        }
    }

    /// A stdio server run as `program args…`.
    pub fn stdio(program: impl Into<String>, args: Vec<String>) -> Self {
        McpServer {
            command: Some(McpCommand {
                program: program.into(),
                args,
                ..McpCommand::default()
            }),
            ..Self::default()
        }
    }

    /// The category of tool `name`: the first rule whose glob matches, else
    /// `default`.
    pub fn category_of(&self, name: &str, default: &ToolCategory) -> ToolCategory {
        self.category_rules
            .iter()
            .find(|r| name_glob_matches(&r.glob, name))
            .map_or_else(|| default.clone(), |r| r.category.clone())
    }

    /// Checks the parts that do not depend on the network: one of `url` and
    /// `command`, valid declared names, rule categories among `categories`.
    pub(crate) fn validate(&self, categories: &[ToolCategory]) -> Result<()> {
        match (&self.url, &self.command) {
            (Some(_), Some(_)) => return Err(Error::invalid(
                "an MCP agent has either a url (streamable HTTP) or a command (stdio), not both",
            )),
            (None, None) => {
                return Err(Error::invalid(
                    "an MCP agent needs a url (streamable HTTP) or a command (stdio)",
                ))
            }
            (None, Some(command)) if command.program.trim().is_empty() => {
                return Err(Error::invalid("the MCP command's program is empty"))
            }
            _ => {}
        }
        if self.tool_names.len() > MAX_MCP_RULES || self.category_rules.len() > MAX_MCP_RULES {
            return Err(Error::invalid(format!(
                "at most {MAX_MCP_RULES} tool names and {MAX_MCP_RULES} category rules"
            )));
        }
        for name in &self.tool_names {
            validate_id("tool name", name)?;
        }
        for rule in &self.category_rules {
            if rule.glob.is_empty() || rule.glob.len() > 128 {
                return Err(Error::invalid(format!(
                    "category rule glob {:?} must be 1 to 128 characters",
                    rule.glob
                )));
            }
            rule.category.validate()?;
            if !categories.contains(&rule.category) {
                return Err(Error::invalid(format!(
                    "category rule {:?} maps to {}, which the agent does not serve; add it to its tools",
                    rule.glob, rule.category
                )));
            }
        }
        if self.discovery_ttl_ms == Some(0) {
            return Err(Error::invalid("discovery_ttl_ms must be at least 1"));
        }
        if self
            .discovery_ttl_ms
            .is_some_and(|ttl| ttl > MAX_DISCOVERY_TTL_MS)
        {
            return Err(Error::invalid(format!(
                "discovery_ttl_ms is at most {MAX_DISCOVERY_TTL_MS} (7 days); a list trusted longer \
                 is never refreshed in practice"
            )));
        }
        if !self.headers.is_empty() && self.url.is_none() {
            return Err(Error::invalid(
                "headers are sent to a url (streamable HTTP) server; a stdio command takes env instead",
            ));
        }
        if self.headers.len() > MAX_MCP_HEADERS {
            return Err(Error::invalid(format!("at most {MAX_MCP_HEADERS} headers")));
        }
        for (name, value) in &self.headers {
            let valid = !name.is_empty()
                && name.len() <= 128
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !valid {
                return Err(Error::invalid(format!(
                    "header name {name:?} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"
                )));
            }
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(Error::invalid(format!(
                    "header {name} is set by the MCP transport itself and cannot be given"
                )));
            }
            if value.len() > 4096 {
                return Err(Error::invalid(format!(
                    "header {name}'s value is longer than 4096 bytes"
                )));
            }
            HeaderSource::of(name, value)?;
        }
        if let Some(oauth) = &self.oauth {
            if self.url.is_none() {
                return Err(Error::invalid(
                    "oauth is for a url (streamable HTTP) server; a stdio command takes env instead",
                ));
            }
            if self
                .headers
                .keys()
                .any(|h| h.eq_ignore_ascii_case("authorization"))
            {
                return Err(Error::invalid(
                    "an MCP agent with oauth sends the token it obtains as its Authorization \
                     header; remove Authorization from headers",
                ));
            }
            oauth.validate()?;
        }
        Ok(())
    }
}

/// Whether a tool name matches a category rule's glob: `*` matches any run
/// of characters (none included), `?` exactly one, anything else itself.
pub fn name_glob_matches(glob: &str, name: &str) -> bool {
    let (g, n): (Vec<char>, Vec<char>) = (glob.chars().collect(), name.chars().collect());
    // Iterative wildcard matching with one backtrack point.
    let (mut gi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == n[ni]) {
            gi += 1;
            ni += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some(gi);
            mark = ni;
            gi += 1;
        } else if let Some(s) = star {
            gi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

/// The value under `mcp_tools/{agent_id}/{tool}`: one tool as the agent's
/// `tools/list` described it, with the category Switchboard routes it in. A policy on `mcp_tools/**` sees every new or changed tool before
/// it is routed (and `previous` when the description or schema changed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpToolRecord {
    /// The agent serving it.
    pub agent_id: String,
    /// Its name on the MCP server.
    pub name: String,
    /// The category its calls are routed in (from the registration).
    pub category: ToolCategory,
    /// The server's description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON schema of its arguments.
    pub input_schema: serde_json::Value,
    /// SHA-256 (hex) of the canonical input schema: replicas with the same
    /// hash are one tool.
    pub schema_hash: String,
    /// When it was first discovered (ms since the Unix epoch).
    pub discovered_at_ms: u64,
    /// What the description and schema hash were before this change, when
    /// the tool was known already and one of them changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<McpToolPrevious>,
    /// Set when the agent stopped listing the tool (ms since the Unix
    /// epoch): the record stays as a tombstone, not routed, so a tool that
    /// is listed again is judged against what was last accepted rather than
    /// as a new one (leaving a tool out of one listing must not wash its
    /// description change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn_at_ms: Option<u64>,
}

/// The earlier description and schema hash of a tool that changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpToolPrevious {
    /// The description before the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The schema hash before the change.
    pub schema_hash: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_hashes_ignore_key_order() {
        let a = serde_json::json!({"type": "object", "properties": {"x": {"type": "string"}, "y": {"type": "number"}}});
        let b = serde_json::json!({"properties": {"y": {"type": "number"}, "x": {"type": "string"}}, "type": "object"});
        let c = serde_json::json!({"type": "object", "properties": {"x": {"type": "number"}}});
        assert_eq!(schema_hash(&a), schema_hash(&b));
        assert_ne!(schema_hash(&a), schema_hash(&c));
        assert_eq!(schema_hash(&a).len(), 64);
    }

    #[test]
    fn relative_paths_are_resolved_against_the_registering_directory() {
        let base = std::path::Path::new("/home/op/project");
        let mut command = McpCommand {
            program: "./servers/search.py".into(),
            cwd: Some("data".into()),
            ..McpCommand::default()
        };
        command.resolve_relative_paths(base);
        assert_eq!(command.program, "/home/op/project/servers/search.py");
        assert_eq!(command.cwd.as_deref(), Some("/home/op/project/data"));
        for (program, kept) in [("python3", "python3"), ("/usr/bin/node", "/usr/bin/node")] {
            let mut command = McpCommand {
                program: program.into(),
                cwd: Some("/srv".into()),
                ..McpCommand::default()
            };
            command.resolve_relative_paths(base);
            assert_eq!(command.program, kept);
            assert_eq!(command.cwd.as_deref(), Some("/srv"));
        }
    }

    #[test]
    fn literal_env_values_are_redacted_and_references_kept() {
        let mut command = McpCommand {
            program: "/usr/bin/server".into(),
            ..McpCommand::default()
        };
        for (name, value) in [
            ("API_KEY", "sk-live-1"),
            ("FROM_VAR", "${API_KEY}"),
            ("FROM_FILE", "file:/run/secrets/key"),
            ("NOT_A_REFERENCE", "${}"),
            ("EMPTY_PATH", "file:"),
        ] {
            command.env.insert(name.into(), value.into());
        }
        let shown = command.redacted();
        assert_eq!(shown.env["API_KEY"], REDACTED_ENV);
        assert_eq!(shown.env["FROM_VAR"], "${API_KEY}");
        assert_eq!(shown.env["FROM_FILE"], "file:/run/secrets/key");
        assert_eq!(shown.env["NOT_A_REFERENCE"], REDACTED_ENV);
        assert_eq!(shown.env["EMPTY_PATH"], REDACTED_ENV);
        assert_eq!(shown.program, command.program);

        let mut stored = serde_json::json!({"transport": {"kind": "mcp",
            "command": serde_json::to_value(&command).unwrap()}});
        let mut elsewhere = stored.clone();
        redact_agent_json("agents/a", &mut stored);
        assert_eq!(
            stored["transport"]["command"],
            serde_json::to_value(&shown).unwrap()
        );
        redact_agent_json("tools/code/x/1", &mut elsewhere);
        assert_eq!(
            elsewhere["transport"]["command"]["env"]["API_KEY"],
            "sk-live-1"
        );
    }

    #[test]
    fn globs_match_names() {
        assert!(name_glob_matches("search_*", "search_web"));
        assert!(name_glob_matches("*", ""));
        assert!(name_glob_matches("a?c", "abc"));
        assert!(name_glob_matches("*_files*", "list_files_now"));
        assert!(!name_glob_matches("search_*", "web_search"));
        assert!(!name_glob_matches("a?c", "ac"));
    }

    #[test]
    fn rules_choose_categories_in_order() {
        let mut server = McpServer::http("http://127.0.0.1:1/mcp");
        server.category_rules = vec![
            CategoryRule {
                glob: "search_*".into(),
                category: ToolCategory::Search,
            },
            CategoryRule {
                glob: "*".into(),
                category: ToolCategory::Web,
            },
        ];
        assert_eq!(
            server.category_of("search_web", &ToolCategory::Code),
            ToolCategory::Search
        );
        assert_eq!(
            server.category_of("fetch", &ToolCategory::Code),
            ToolCategory::Web
        );
        assert!(server.validate(&[ToolCategory::Code]).is_err());
        assert!(server
            .validate(&[ToolCategory::Search, ToolCategory::Web])
            .is_ok());
    }

    #[test]
    fn oauth_needs_a_url_a_secret_by_reference_and_its_own_authorization() {
        let oauth = UpstreamOAuth {
            client_id: "switchboard".into(),
            client_secret: Some("${FILES_SECRET}".into()),
            scopes: vec!["files:read".into()],
            ..UpstreamOAuth::default()
        };
        let mut server = McpServer::http("http://127.0.0.1:1/mcp");
        server.oauth = Some(Box::new(oauth.clone()));
        assert!(server.validate(&[ToolCategory::Code]).is_ok());
        let refused = |change: &dyn Fn(&mut McpServer)| {
            let mut server = server.clone();
            change(&mut server);
            server
                .validate(&[ToolCategory::Code])
                .unwrap_err()
                .to_string()
        };
        let err = refused(&|s| s.oauth.as_mut().unwrap().client_secret = Some("hunter2".into()));
        assert!(err.contains("${VAR}") && !err.contains("hunter2"), "{err}");
        let err = refused(&|s| s.oauth.as_mut().unwrap().client_secret = None);
        assert!(
            err.contains("client_secret") && err.contains("private_key"),
            "{err}"
        );
        let err = refused(&|s| s.oauth.as_mut().unwrap().private_key = Some("${KEY}".into()));
        assert!(err.contains("not both"), "{err}");
        let err = refused(&|s| {
            let oauth = s.oauth.as_mut().unwrap();
            oauth.client_secret = None;
            oauth.private_key = Some("-----BEGIN PRIVATE KEY-----".into());
        });
        assert!(
            err.contains("oauth.private_key") && !err.contains("BEGIN"),
            "{err}"
        );
        let err = refused(&|s| {
            let oauth = s.oauth.as_mut().unwrap();
            oauth.client_secret = None;
            oauth.private_key = Some("file:/etc/switchboard/client.pem".into());
            oauth.signing_algorithm = Some("HS256".into());
        });
        assert!(err.contains("HS256") && err.contains("ES256"), "{err}");
        let err = refused(&|s| s.oauth.as_mut().unwrap().signing_algorithm = Some("ES256".into()));
        assert!(err.contains("private_key"), "{err}");
        let err = refused(&|s| {
            s.oauth.as_mut().unwrap().token_exchange = Some(TokenExchange {
                subject_token_type: Some("saml2".into()),
                ..TokenExchange::default()
            })
        });
        assert!(err.contains("saml2") && err.contains("id_token"), "{err}");
        let err = refused(&|s| {
            s.oauth.as_mut().unwrap().token_exchange = Some(TokenExchange {
                identity_provider: Some(IdentityProvider {
                    token_url: "https://idp.example/token".into(),
                    client_id: "switchboard".into(),
                    client_secret: Some("idp-s3cret".into()),
                }),
                ..TokenExchange::default()
            })
        });
        assert!(
            err.contains("${VAR}") && !err.contains("idp-s3cret"),
            "{err}"
        );
        let err = refused(&|s| {
            s.headers
                .insert("authorization".into(), "Bearer ${T}".into());
        });
        assert!(err.contains("Authorization"), "{err}");
        let err = refused(&|s| {
            s.url = None;
            s.command = Some(McpCommand {
                program: "/bin/server".into(),
                ..McpCommand::default()
            });
        });
        assert!(err.contains("stdio"), "{err}");
        let err = refused(&|s| s.oauth.as_mut().unwrap().scopes = vec!["a b".into()]);
        assert!(err.contains("scope"), "{err}");
        let err = refused(&|s| s.oauth.as_mut().unwrap().client_id = String::new());
        assert!(err.contains("client_id"), "{err}");
        let err = refused(&|s| s.oauth.as_mut().unwrap().resource = Some("/mcp".into()));
        assert!(err.contains("RFC 8707"), "{err}");
        let json = serde_json::to_value(&server).unwrap();
        assert_eq!(
            json["oauth"],
            serde_json::json!({"client_id": "switchboard", "client_secret": "${FILES_SECRET}",
                "scopes": ["files:read"]})
        );
    }

    #[test]
    fn a_server_that_does_not_parse_says_why() {
        let spec = |json: &str| serde_json::from_str::<McpSpec>(json).map_err(|e| e.to_string());
        assert_eq!(
            spec(r#""http://127.0.0.1:1/mcp""#),
            Ok(McpSpec::Url("http://127.0.0.1:1/mcp".into()))
        );
        let oauth = spec(r#"{"url": "http://127.0.0.1:1/mcp", "oauth": {"client_id": "sb"}}"#);
        assert!(
            oauth.is_ok(),
            "validation, not parsing, asks for the credential: {oauth:?}"
        );
        let err = spec(r#"{"url": "http://127.0.0.1:1/mcp", "oauth": {"client_secret": "${S}"}}"#)
            .unwrap_err();
        assert!(err.contains("missing field `client_id`"), "{err}");
        let err = spec(r#"{"url": "http://127.0.0.1:1/mcp", "tool_name": ["a"]}"#).unwrap_err();
        assert!(err.contains("unknown field `tool_name`"), "{err}");
        for null in [
            r#"{"url": null}"#,
            r#"{"url": "http://127.0.0.1:1/mcp", "oauth": null}"#,
            r#"{"url": "http://127.0.0.1:1/mcp", "command": null}"#,
        ] {
            let err = spec(null).unwrap_err();
            assert!(
                err.contains("null") && err.contains("leave the field out"),
                "{null}: {err}"
            );
        }
        let err = spec(
            r#"{"url": "http://127.0.0.1:1/mcp", "oauth": {"client_id": "sb", "token_url": null}}"#,
        )
        .unwrap_err();
        assert!(err.contains("leave the field out"), "{err}");
        assert!(spec(r#"{"url": "http://127.0.0.1:1/mcp", "discovery_ttl_ms": null}"#).is_ok());
        assert!(spec("3").unwrap_err().contains("a string) or an object"));
    }

    #[test]
    fn stored_json_is_compact() {
        let server = McpServer::http("http://127.0.0.1:1/mcp");
        assert_eq!(
            serde_json::to_string(&server).unwrap(),
            r#"{"url":"http://127.0.0.1:1/mcp"}"#
        );
    }
}
