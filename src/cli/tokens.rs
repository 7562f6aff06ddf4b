//! `switchboard tokens create|list|revoke`: the API tokens a server accepts,
//! issued in the local database or, with `--server`, over `/v1/tokens`
//! (which needs an admin token). A secret is printed once, at creation.

use super::{say, StoreArgs};
use clap::Subcommand;
use reqwest::Method;
use switchboard::identity::{NewToken, TokenStore};
use switchboard::namespace::{now_ms, Scope};
use switchboard::server::TokenInfo;
use switchboard::Error;

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Issue a token; its secret is printed once and never stored.
    Create {
        /// A name for people, e.g. ci-deployer.
        #[arg(long)]
        name: String,
        /// Comma-separated scopes: admin, invoke, audit.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<Scope>,
        /// Comma-separated roles policies see, e.g. payments,oncall.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Lifetime in seconds [default: no expiry].
        #[arg(long, value_name = "SECS")]
        expires_in: Option<u64>,
        /// Print the token as JSON (with its secret).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List issued tokens (never their secrets).
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a token: it is refused from the next request on.
    Revoke {
        /// The token's id or its name (both shown by `tokens list`); a
        /// name must belong to exactly one token that is not yet revoked.
        #[arg(value_name = "ID|NAME")]
        id_or_name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// The id `revoke` was given, or the id of the one unrevoked token of that name.
fn token_id(infos: &[TokenInfo], given: &str) -> switchboard::Result<String> {
    if infos.iter().any(|t| t.token_id == given) {
        return Ok(given.to_string());
    }
    let named: Vec<&TokenInfo> = infos
        .iter()
        .filter(|t| t.name == given && t.revoked_at_ms.is_none())
        .collect();
    match named.as_slice() {
        [one] => Ok(one.token_id.clone()),
        [] => Err(Error::invalid(format!(
            "no token has the id or name {given:?} (revoked tokens are not matched by name); \
             `switchboard tokens list` shows them"
        ))),
        many => {
            let ids: Vec<&str> = many.iter().map(|t| t.token_id.as_str()).collect();
            Err(Error::invalid(format!(
                "{} tokens are named {given:?}: revoke one by its id ({})",
                many.len(),
                ids.join(", ")
            )))
        }
    }
}

fn info_of(value: serde_json::Value) -> switchboard::Result<TokenInfo> {
    serde_json::from_value(value)
        .map_err(|e| Error::internal("the server's token answer is not understood", e))
}

fn print(info: &TokenInfo, json: bool) -> switchboard::Result<()> {
    if json {
        return super::out(serde_json::to_string(info).map_err(Error::storage)?);
    }
    let scopes: Vec<&str> = info.scopes.iter().map(|s| s.as_str()).collect();
    let state = if info.revoked_at_ms.is_some() {
        "revoked"
    } else if info.active {
        "active"
    } else {
        "expired"
    };
    let expires = info.expires_at_ms.map_or_else(
        || "never".to_string(),
        |ms| format!("{} UTC", super::utc(ms)),
    );
    super::out(format_args!(
        "{:<28} {:<20} {:<8} scopes {:<20} roles {:<16} expires {expires}",
        info.token_id,
        info.name,
        state,
        scopes.join(","),
        if info.roles.is_empty() {
            "-".to_string()
        } else {
            info.roles.join(",")
        }
    ))
}

pub async fn run(cmd: TokensCommand) -> switchboard::Result<()> {
    match cmd {
        TokensCommand::Create {
            name,
            scopes,
            roles,
            expires_in,
            json,
            store,
        } => {
            if expires_in == Some(0) {
                return Err(Error::invalid("--expires-in must be at least 1 second"));
            }
            let (info, secret) = match store.client()? {
                Some(client) => {
                    let body = serde_json::json!({
                        "name": name, "scopes": scopes, "roles": roles,
                        "expires_in_secs": expires_in,
                    });
                    let created = client
                        .send(Method::POST, client.url("v1/tokens"), Some(&body))
                        .await?;
                    let secret = created["secret"].as_str().unwrap_or_default().to_string();
                    (info_of(created["token"].clone())?, secret)
                }
                None => {
                    let db = store.open()?;
                    let issued = TokenStore::new(&db).create(
                        NewToken {
                            name,
                            scopes,
                            roles,
                            expires_at_ms: expires_in
                                .map(|s| now_ms().saturating_add(s.saturating_mul(1000))),
                        },
                        None,
                    )?;
                    let info = TokenInfo::from(&issued.record);
                    (info, issued.secret)
                }
            };
            if json {
                let mut value = serde_json::to_value(&info).map_err(Error::storage)?;
                value["secret"] = serde_json::Value::String(secret);
                super::out(value)?;
            } else {
                print(&info, false)?;
                say!("secret (shown once; send it as `Authorization: Bearer …`):");
                say!("{secret}");
            }
            Ok(())
        }
        TokensCommand::List { json, store } => {
            let infos = match store.client()? {
                Some(client) => {
                    let list = client.get("v1/tokens").await?;
                    list.as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(info_of)
                        .collect::<switchboard::Result<Vec<_>>>()?
                }
                None => {
                    let db = store.open()?;
                    TokenStore::new(&db)
                        .list()?
                        .iter()
                        .map(TokenInfo::from)
                        .collect::<Vec<_>>()
                }
            };
            for info in &infos {
                print(info, json)?;
            }
            if !json {
                say!("({})", super::count(infos.len(), "token"));
            }
            Ok(())
        }
        TokensCommand::Revoke { id_or_name, store } => {
            let info = match store.client()? {
                Some(client) => {
                    let listed = client.get("v1/tokens").await?;
                    let infos = listed
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(info_of)
                        .collect::<switchboard::Result<Vec<_>>>()?;
                    let id = token_id(&infos, &id_or_name)?;
                    let url = client.url(&format!("v1/tokens/{id}"));
                    info_of(client.send(Method::DELETE, url, None).await?)?
                }
                None => {
                    let db = store.open()?;
                    let tokens = TokenStore::new(&db);
                    let infos: Vec<TokenInfo> =
                        tokens.list()?.iter().map(TokenInfo::from).collect();
                    let id = token_id(&infos, &id_or_name)?;
                    match tokens.revoke(&id, None)? {
                        Some(record) => TokenInfo::from(&record),
                        None => {
                            return Err(Error::invalid(format!(
                                "no token {id:?}; `switchboard tokens list` shows the tokens"
                            )))
                        }
                    }
                }
            };
            print(&info, false)
        }
    }
}
