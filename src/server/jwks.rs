//! Fetching `[auth.jwt] jwks_url`: the keys an authorization server
//! publishes, kept current in the background so no request ever waits on
//! the fetch. Fetched at start, every [`REFRESH_EVERY`], and when a token
//! names a key id no key has (a rotation), at most once per
//! [`MIN_INTERVAL`]; over HTTPS with the node's CA trust (`[tls] ca_file`),
//! bounded in time and size, never following a redirect. A failed fetch
//! keeps the keys already held.

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
            match fetch(&http, keys.url())
                .await
                .and_then(|body| keys.replace(&body).map_err(|e| e.to_string()))
            {
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
