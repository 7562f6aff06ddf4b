//! Fetching `[auth.jwt] jwks_url`: the keys an authorization server
//! publishes, kept current in the background so no request ever waits on
//! the fetch. Fetched at start, every [`REFRESH_EVERY`], and when a token
//! names a key id no key has (a rotation), at most once per
//! [`MIN_INTERVAL`]; over HTTPS with the node's CA trust (`[tls] ca_file`),
//! bounded in time and size, never following a redirect. A failed fetch
//! keeps the keys already held. With `discover_jwks`, each fetch first
//! reads the issuer's metadata (RFC 8414, else OpenID Connect discovery)
//! for its `jwks_uri`, under the same bounds.

use crate::identity::RemoteKeys;
use crate::transport::TlsTrust;
use std::time::{Duration, Instant};

/// How often the set is fetched again with no rotation seen.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// The least time between two fetches, however many unknown key ids arrive.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(5);
/// The largest JWKS accepted.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts keeping `keys` current; the task ends when aborted.
pub(crate) fn spawn(keys: RemoteKeys) -> crate::Result<tokio::task::JoinHandle<()>> {
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(TlsTrust::current().client_config()?)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(FETCH_TIMEOUT)
        .build()
        .map_err(|e| crate::Error::internal("cannot build the JWKS client", e))?;
    Ok(tokio::spawn(async move {
        loop {
            let started = Instant::now();
            let fetched = async {
                let url = if keys.discovered() {
                    discover(&http, keys.url()).await?
                } else {
                    keys.url().to_string()
                };
                let body = fetch(&http, &url).await?;
                keys.replace(&body).map_err(|e| e.to_string())
            };
            match fetched.await {
                Ok(count) => tracing::info!(url = keys.url(), keys = count, "fetched the JWKS"),
                Err(e) => {
                    tracing::warn!(url = keys.url(), error = %e, "cannot fetch the JWKS; keeping the keys held")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(REFRESH_EVERY) => {}
                _ = keys.wanted() => {}
            }
            tokio::time::sleep(MIN_INTERVAL.saturating_sub(started.elapsed())).await;
        }
    }))
}

async fn fetch(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut response = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Where `issuer` says its keys are: the `jwks_uri` of its metadata, at the
/// RFC 8414 location, else the OpenID Connect one. The metadata must name
/// `issuer` as its issuer (RFC 8414 §3.3), and the URL must be one keys may
/// be fetched from (`https://`, or `http://` to a loopback address).
async fn discover(http: &reqwest::Client, issuer: &str) -> Result<String, String> {
    let mut tried = Vec::new();
    for url in metadata_urls(issuer)? {
        let metadata = match fetch(http, &url).await {
            Ok(body) => body,
            Err(e) => {
                tried.push(format!("{url}: {e}"));
                continue;
            }
        };
        let metadata: serde_json::Value = serde_json::from_slice(&metadata)
            .map_err(|e| format!("the metadata at {url} is not JSON ({e})"))?;
        if metadata["issuer"].as_str() != Some(issuer) {
            return Err(format!(
                "the metadata at {url} names issuer {}, not {issuer:?}",
                metadata["issuer"]
            ));
        }
        let jwks_uri = metadata["jwks_uri"]
            .as_str()
            .ok_or_else(|| format!("the metadata at {url} has no jwks_uri"))?;
        return crate::identity::checked_key_url(&format!("the jwks_uri at {url}"), jwks_uri)
            .map_err(|e| e.to_string());
    }
    Err(format!(
        "no metadata for issuer {issuer:?}: {}",
        tried.join("; ")
    ))
}

/// The metadata locations of `issuer`: RFC 8414 puts the well-known path
/// between the host and the issuer's own path; OpenID Connect after it.
fn metadata_urls(issuer: &str) -> Result<Vec<String>, String> {
    let parsed = reqwest::Url::parse(issuer).map_err(|e| format!("issuer {issuer:?}: {e}"))?;
    let path = parsed.path().trim_end_matches('/');
    let origin = parsed.origin().ascii_serialization();
    Ok(vec![
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_looked_for_where_rfc_8414_and_openid_put_it() {
        assert_eq!(
            metadata_urls("https://idp.example").unwrap(),
            [
                "https://idp.example/.well-known/oauth-authorization-server",
                "https://idp.example/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            metadata_urls("https://idp.example:8443/tenant/1").unwrap(),
            [
                "https://idp.example:8443/.well-known/oauth-authorization-server/tenant/1",
                "https://idp.example:8443/tenant/1/.well-known/openid-configuration"
            ]
        );
    }
}
