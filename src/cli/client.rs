//! Client mode: with `--server URL` (or `SWITCHBOARD_URL`) the commands talk
//! to a running `switchboard serve` over its HTTP API instead of opening the
//! database, which that server holds locked. This file owns the connection
//! (URL, bearer token) and turns the API's answers and failures into CLI
//! errors; each command builds its own requests.

use clap::Args;
use reqwest::{Method, StatusCode, Url};
use switchboard::Error;

/// Where a running server is, if the command should use one.
#[derive(Args, Clone, Debug, Default)]
pub struct ServerArgs {
    /// Talk to a running `switchboard serve` at this URL (e.g.
    /// http://127.0.0.1:7700) instead of opening the database
    /// [env: SWITCHBOARD_URL].
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// The server's API token, with --server [env: SWITCHBOARD_TOKEN].
    #[arg(long)]
    pub token: Option<String>,
}

impl ServerArgs {
    /// The client these flags (or `SWITCHBOARD_URL` / `SWITCHBOARD_TOKEN`)
    /// name, or `None` to work on the local database.
    pub fn client(&self) -> switchboard::Result<Option<Client>> {
        let url = self
            .server
            .clone()
            .or_else(|| non_empty_env("SWITCHBOARD_URL"));
        let Some(url) = url else {
            if self.token.is_some() {
                return Err(Error::invalid(
                    "--token is for a server: add --server URL (or set SWITCHBOARD_URL)",
                ));
            }
            return Ok(None);
        };
        let token = self
            .token
            .clone()
            .or_else(|| non_empty_env("SWITCHBOARD_TOKEN"));
        Client::new(&url, token).map(Some)
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A connection to one server's HTTP API.
pub struct Client {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(url: &str, token: Option<String>) -> switchboard::Result<Client> {
        let mut base = Url::parse(url).map_err(|e| {
            Error::invalid(format!(
                "--server {url:?} is not a URL ({e}); e.g. http://127.0.0.1:7700"
            ))
        })?;
        if base.scheme() != "http" && base.scheme() != "https" {
            return Err(Error::invalid(format!(
                "--server {url:?} must be an http:// URL"
            )));
        }
        // Routes are joined onto the base: keep any path prefix a proxy adds.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| Error::internal("cannot build the HTTP client", e))?;
        Ok(Client { base, token, http })
    }

    /// The bearer token requests carry, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The HTTP client requests go through (for the MCP bridge's requests,
    /// which rmcp sends).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The URL of `route` (no leading slash), e.g. `v1/agents`.
    pub fn url(&self, route: &str) -> Url {
        self.base.join(route).expect("routes are relative paths")
    }

    /// `method url` with an optional JSON body; the answer's JSON (or
    /// `null` for an empty 2xx answer), or the server's error message.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&serde_json::Value>,
    ) -> switchboard::Result<serde_json::Value> {
        let mut request = self.http.request(method, url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(body).map_err(Error::storage)?);
        }
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.unreachable(e))?;
        if status.is_success() {
            if bytes.is_empty() {
                return Ok(serde_json::Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|e| {
                Error::internal(
                    format!(
                        "{} answered {status} with a body that is not JSON",
                        self.base
                    ),
                    e,
                )
            });
        }
        Err(server_error(self.base.as_str(), status, &bytes))
    }

    pub async fn get(&self, route: &str) -> switchboard::Result<serde_json::Value> {
        self.send(Method::GET, self.url(route), None).await
    }

    /// Says which server could not be reached and what to do about it.
    fn unreachable(&self, e: reqwest::Error) -> Error {
        let advice = if e.is_connect() {
            format!(
                "cannot connect to {}: is `switchboard serve` running there? Start it, or drop \
                 --server (and unset SWITCHBOARD_URL) to use the local database",
                self.base
            )
        } else {
            format!("request to {} failed", self.base)
        };
        Error::internal(advice, e)
    }
}

/// The server's own `{"error": {"code", "message"}}`, as one line.
pub(super) fn server_error(base: &str, status: StatusCode, body: &[u8]) -> Error {
    let parsed: Option<(String, String)> = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            Some((
                e.get("code")?.as_str()?.to_string(),
                e.get("message")?.as_str()?.to_string(),
            ))
        });
    let message = match parsed {
        Some((code, message)) => {
            let hint = if code == "unauthorized" {
                " (pass --token or set SWITCHBOARD_TOKEN)"
            } else {
                ""
            };
            format!("{}{hint}", in_cli_words(&code, &message))
        }
        None => String::from_utf8_lossy(body).trim().to_string(),
    };
    Error::internal(format!("{base} answered {}", status.as_u16()), message)
}

/// The server's hints name its HTTP routes; printed by the CLI, they name
/// the commands that do the same.
fn in_cli_words(code: &str, message: &str) -> String {
    if code == "unknown_agent" {
        if let Some((id, _)) = message
            .strip_prefix("unknown agent ")
            .and_then(|rest| rest.split_once(':'))
        {
            return format!(
                "unknown agent {id}: see `switchboard agents list`, or add it with \
                 `switchboard agents register {id} --tools … --endpoint …`"
            );
        }
    }
    [
        ("GET /v1/agents", "`switchboard agents list`"),
        ("GET /v1/tokens", "`switchboard tokens list`"),
        ("GET /v1/policies", "`switchboard policy list`"),
        ("PUT /v1/policies/{name}", "`switchboard policy put FILE`"),
    ]
    .iter()
    .fold(message.to_string(), |m, (route, command)| {
        m.replace(route, command)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_hints_name_commands() {
        let m = super::in_cli_words(
            "unknown_agent",
            "unknown agent a1: register it with PUT /v1/agents/a1, or see GET /v1/agents",
        );
        assert!(
            m.contains("switchboard agents register a1") && !m.contains("/v1/"),
            "{m}"
        );
        let m = super::in_cli_words("unknown_token", "no token \"x\"; GET /v1/tokens lists them");
        assert_eq!(m, "no token \"x\"; `switchboard tokens list` lists them");
    }
}
