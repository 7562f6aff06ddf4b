//! Signed Agent Cards: a card's `signatures` are JWS signatures (detached
//! payload) over the card's canonical form: the card as served, without
//! `signatures`, with empty strings, arrays and objects left out (as the
//! A2A SDKs sign it), in the JSON Canonicalization Scheme (RFC 8785). A
//! card verifies when one of its signatures verifies with a key the
//! registration names (a JWKS URL, or a PEM public key file), by RS256 or
//! ES256 (the algorithm its protected header names, which must be the
//! key's: no other algorithm is accepted).

use super::super::{error_chain, read_bounded};
use crate::namespace::CardKeys;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::time::Duration;

/// The largest JWKS accepted (bytes).
const MAX_JWKS_BYTES: usize = 1 << 20;

/// Checks `card` (the card's JSON as served) against `keys`; why not, if
/// it does not verify.
pub(crate) async fn verify(
    http: &reqwest::Client,
    card: &serde_json::Value,
    keys: &CardKeys,
    timeout: Duration,
) -> Result<(), String> {
    let signatures = card
        .get("signatures")
        .and_then(|s| s.as_array())
        .filter(|s| !s.is_empty())
        .ok_or(
            "the Agent Card carries no signatures, and its registration asks for a signed card \
             (verify_signature)",
        )?;
    let mut unsigned = card.clone();
    if let Some(fields) = unsigned.as_object_mut() {
        fields.remove("signatures");
    }
    let mut payload = String::new();
    canonical(&without_empty(unsigned).unwrap_or_default(), &mut payload);
    let payload = base64url(payload.as_bytes());
    let keys = Keys::load(http, keys, timeout).await?;
    let mut reasons = Vec::new();
    for (n, signature) in signatures.iter().enumerate() {
        match check(signature, &payload, &keys) {
            Ok(()) => return Ok(()),
            Err(reason) => reasons.push(format!("signature {}: {reason}", n + 1)),
        }
    }
    Err(format!(
        "no signature of the Agent Card verifies with the key of {} ({})",
        keys.source,
        reasons.join("; ")
    ))
}

/// `bytes` in unpadded base64url (RFC 4648 §5), as JWS writes its parts.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// One `AgentCardSignature` (`protected`, `signature`) over `payload`.
fn check(signature: &serde_json::Value, payload: &str, keys: &Keys) -> Result<(), String> {
    let field = |name: &str| {
        signature
            .get(name)
            .and_then(|v| v.as_str())
            .ok_or(format!("it has no {name}"))
    };
    let (protected, value) = (field("protected")?, field("signature")?);
    // The protected header as a compact JWS's first part.
    let header = jsonwebtoken::decode_header(format!("{protected}.e30."))
        .map_err(|e| format!("its protected header is not a JWS header in base64url ({e})"))?;
    let alg = match header.alg {
        Algorithm::RS256 | Algorithm::ES256 => header.alg,
        other => {
            return Err(format!(
                "its algorithm {other:?} is not accepted (RS256 or ES256)"
            ))
        }
    };
    let kid = header.kid.as_deref();
    let candidates: Vec<&Key> = keys
        .keys
        .iter()
        .filter(|k| k.alg == alg && (kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid))
        .collect();
    if candidates.is_empty() {
        return Err(format!(
            "no {alg:?} key{} among the registration's keys",
            kid.map(|k| format!(" with kid {k:?}")).unwrap_or_default()
        ));
    }
    let message = format!("{protected}.{payload}");
    for key in candidates {
        if jsonwebtoken::crypto::verify(value, message.as_bytes(), &key.key, alg).unwrap_or(false) {
            return Ok(());
        }
    }
    Err(
        "it does not verify (the card was changed after it was signed, or signed by another key)"
            .into(),
    )
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The keys a card may be signed with, and where they came from.
struct Keys {
    source: String,
    keys: Vec<Key>,
}

impl Keys {
    async fn load(
        http: &reqwest::Client,
        keys: &CardKeys,
        timeout: Duration,
    ) -> Result<Keys, String> {
        if let Some(path) = &keys.public_key_file {
            let source = format!("public_key_file {path}");
            let pem = std::fs::read(path).map_err(|e| format!("{source}: {e}"))?;
            let key = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                (Algorithm::RS256, key)
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                (Algorithm::ES256, key)
            } else {
                return Err(format!("{source} is not an RSA or P-256 public key in PEM"));
            };
            return Ok(Keys {
                keys: vec![Key {
                    kid: None,
                    alg: key.0,
                    key: key.1,
                }],
                source,
            });
        }
        let Some(url) = &keys.jwks_url else {
            return Err("verify_signature names no key: give jwks_url or public_key_file".into());
        };
        let source = format!("jwks_url {url}");
        let fetch = async {
            let response = http
                .get(url)
                .send()
                .await
                .map_err(|e| format!("{source}: {}", error_chain(&e)))?;
            if !response.status().is_success() {
                return Err(format!("{source} answered HTTP {}", response.status()));
            }
            read_bounded(response, MAX_JWKS_BYTES)
                .await
                .map_err(|e| format!("{source}: {e}"))
        };
        let body = tokio::time::timeout(timeout, fetch)
            .await
            .map_err(|_| format!("{source} did not answer within {timeout:?}"))??;
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| format!("{source}: not a JWKS ({e})"))?;
        let keys = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let alg = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    _ => return None,
                };
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some(Key {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                })
            })
            .collect();
        Ok(Keys { source, keys })
    }
}

/// `value` without empty strings, arrays and objects (and nulls), at any
/// depth; `None` if nothing is left.
fn without_empty(value: serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::Value;
    match value {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::Array(items) => {
            let items: Vec<Value> = items.into_iter().filter_map(without_empty).collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        Value::Object(fields) => {
            let fields: serde_json::Map<String, Value> = fields
                .into_iter()
                .filter_map(|(k, v)| without_empty(v).map(|v| (k, v)))
                .collect();
            (!fields.is_empty()).then_some(Value::Object(fields))
        }
        other => Some(other),
    }
}

/// Writes `value` in the JSON Canonicalization Scheme (RFC 8785): members
/// sorted by their names' UTF-16 code units, no whitespace, strings
/// escaped minimally, numbers as ECMAScript writes them.
fn canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match n.as_f64() {
            // An integral float is written as an integer, as ECMAScript does.
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e21 => {
                out.push_str(&format!("{}", f as i128))
            }
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => out.push_str(&serde_json::Value::String(s.clone()).to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(fields) => {
            let mut names: Vec<&String> = fields.keys().collect();
            names.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, name) in names.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(name.clone()).to_string());
                out.push(':');
                canonical(&fields[name], out);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_form_sorts_members_and_drops_empty_values() {
        let card = serde_json::json!({
            "name": "é\u{1}\"", "b": [], "a": {"z": 1, "y": 2.0, "x": ""}, "c": [true, null, 1.5]
        });
        let mut out = String::new();
        canonical(&without_empty(card).unwrap(), &mut out);
        assert_eq!(
            out,
            r#"{"a":{"y":2,"z":1},"c":[true,1.5],"name":"é\u0001\""}"#
        );
    }

    #[test]
    fn base64url_is_unpadded() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"\xfb\xff"), "-_8");
    }
}
