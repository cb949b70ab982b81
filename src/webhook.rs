//! Optional promotion webhook: each promoted waitlist ticket is POSTed as
//! JSON to the storefront's URL, with retries and backoff, on a task of its
//! own — promotion never waits for it. Delivery is at least once; the ticket
//! id lets the receiver drop duplicates.
//!
//! **Signed.** Every attempt carries `Flashgate-Signature: t=<unix
//! seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` (Stripe's scheme):
//! the receiver recomputes it with the shared secret, compares in constant
//! time and refuses a `t` too far from its clock, so neither a forged nor a
//! replayed delivery passes (docs/webhooks.md). Each attempt is signed
//! afresh, so a retry is not refused as a replay.
//!
//! **https:// or http://.** TLS (rustls) trusts the webpki roots, or only the
//! certificates of `waitlist_webhook_ca_file` when it is set (a private CA).
//!
//! **Reloadable.** The URL, secret and CA file live behind one pointer that a
//! reload swaps ([`Webhook::reconfigure`]); each attempt reads the current
//! one, so a delivery being retried moves to the new URL and secret, and
//! stops if the webhook was removed.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http_body_util::Full;
use hyper::Request;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::config::{Config, ConfigError};

const ATTEMPTS: u32 = 5;

/// The header a delivery's signature travels in.
pub const SIGNATURE_HEADER: &str = "flashgate-signature";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Where promotions go, if anywhere: a handle shared by the promoter and
/// the reload (cloning it shares the target).
#[derive(Clone, Default)]
pub struct Webhook {
    target: Arc<ArcSwapOption<Target>>,
}

struct Target {
    url: hyper::Uri,
    secret: Vec<u8>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Webhook {
    /// The webhook `c` configures (none without a URL). Fails on a CA file
    /// that cannot be read or holds no certificate.
    pub fn from_config(c: &Config) -> Result<Webhook, ConfigError> {
        let w = Webhook::default();
        w.reconfigure(c)?;
        Ok(w)
    }

    /// Take `c`'s URL, secret and CA file, or fail and keep the current ones.
    pub fn reconfigure(&self, c: &Config) -> Result<(), ConfigError> {
        let target = Target::new(c)?;
        self.target.store(target.map(Arc::new));
        Ok(())
    }

    /// Deliver `ticket` (whatever the waitlist shows for it) in the
    /// background: up to 5 attempts, 200 ms doubling backoff. `ticket_id`
    /// names it in the logs. The webhook knows no waitlist type, so the
    /// arrow points one way: waitlist → webhook.
    pub fn send(&self, ticket_id: &str, ticket: &impl Serialize) {
        if self.target.load().is_none() {
            return;
        }
        let Ok(body) = serde_json::to_vec(
            &serde_json::json!({"event": "waitlist.promoted", "ticket": ticket}),
        ) else {
            return;
        };
        let body = Bytes::from(body);
        let this = self.clone();
        let ticket_id = ticket_id.to_owned();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            for attempt in 1..=ATTEMPTS {
                // the target now: a reload between attempts takes effect
                let Some(target) = this.target.load_full() else {
                    tracing::info!(ticket = %ticket_id, "webhook removed by a reload; delivery dropped");
                    return;
                };
                let Some(signature) = sign(&target.secret, unix_now(), &body) else {
                    tracing::error!(ticket = %ticket_id, "webhook: cannot sign; delivery dropped");
                    return;
                };
                let req = Request::post(target.url.clone())
                    .header("content-type", "application/json")
                    .header(SIGNATURE_HEADER, signature)
                    .body(Full::new(body.clone()));
                let Ok(req) = req else { return };
                match tokio::time::timeout(Duration::from_secs(5), target.client.request(req)).await
                {
                    Ok(Ok(resp)) if resp.status().is_success() => return,
                    Ok(Ok(resp)) => {
                        tracing::warn!(ticket = %ticket_id, attempt, status = %resp.status(), "webhook refused")
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(ticket = %ticket_id, attempt, error = %e, "webhook failed")
                    }
                    Err(_) => tracing::warn!(ticket = %ticket_id, attempt, "webhook timed out"),
                }
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            tracing::error!(ticket = %ticket_id, "webhook gave up after {ATTEMPTS} attempts");
        });
    }
}

impl Target {
    fn new(c: &Config) -> Result<Option<Target>, ConfigError> {
        if c.waitlist_webhook_url.is_empty() {
            return Ok(None);
        }
        let bad = |m: String| ConfigError::Invalid(m);
        let url: hyper::Uri = c
            .waitlist_webhook_url
            .parse()
            .map_err(|e| bad(format!("waitlist_webhook_url: {e}")))?;
        let mut roots = rustls::RootCertStore::empty();
        if c.waitlist_webhook_ca_file.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        } else {
            use rustls::pki_types::{pem::PemObject, CertificateDer};
            let path = &c.waitlist_webhook_ca_file;
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad(format!("waitlist_webhook_ca_file {path}: {e}")))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(bad(format!(
                    "waitlist_webhook_ca_file {path}: no usable certificate"
                )));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_secs(2)));
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Some(Target {
            url,
            secret: c.waitlist_webhook_secret.as_bytes().to_vec(),
            client: Client::builder(TokioExecutor::new()).build(https),
        }))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// HMAC-SHA256 over `"<t>.<body>"`. (HMAC takes a key of any length; the
/// `None` of the key-length check is never met.)
fn mac(secret: &[u8], t: u64, body: &[u8]) -> Option<HmacSha256> {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret).ok()?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

/// The `Flashgate-Signature` value of `body` sent at unix time `t`.
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> Option<String> {
    let tag = mac(secret, t, body)?.finalize().into_bytes();
    let mut hex = String::with_capacity(tag.len() * 2);
    for b in tag.iter() {
        hex.push_str(&format!("{b:02x}"));
    }
    Some(format!("t={t},v1={hex}"))
}

/// Why a delivery does not verify.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    #[error("no t=…,v1=… in the signature header")]
    Malformed,
    #[error("signed more than the tolerance away from now (a replay?)")]
    Stale,
    #[error("the signature does not match the body and secret")]
    Mismatch,
}

/// What a receiver does (docs/webhooks.md has it in Python): check that
/// `header` signs `body` with `secret`, at most `tolerance` seconds from
/// `now` (unix seconds). The comparison is constant-time.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance: u64,
) -> Result<(), Unverified> {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1.push(v),
            _ => {}
        }
    }
    let t = t.ok_or(Unverified::Malformed)?;
    if v1.is_empty() {
        return Err(Unverified::Malformed);
    }
    if now.abs_diff(t) > tolerance {
        return Err(Unverified::Stale);
    }
    let expected = mac(secret, t, body)
        .ok_or(Unverified::Mismatch)?
        .finalize()
        .into_bytes();
    let ok = v1.iter().any(|hex| {
        let Some(given) = unhex(hex) else {
            return false;
        };
        bool::from(subtle::ConstantTimeEq::ct_eq(&given[..], &expected[..]))
    });
    if ok {
        Ok(())
    } else {
        Err(Unverified::Mismatch)
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec-0123456789abcdef";

    #[test]
    fn a_signature_is_stripes_scheme_over_timestamp_and_body() {
        // checked against an independent HMAC: the hex of
        // HMAC-SHA256("key", "1.{}"), computed with Python's hmac module
        assert_eq!(
            sign(b"key", 1, b"{}").unwrap(),
            "t=1,v1=1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"
        );
        let body = br#"{"event":"waitlist.promoted"}"#;
        let header = sign(SECRET, 1_000, body).unwrap();
        assert_eq!(verify(SECRET, &header, body, 1_000, 300), Ok(()));
        assert_eq!(verify(SECRET, &header, body, 1_300, 300), Ok(()));
    }

    #[test]
    fn a_tampered_body_a_wrong_secret_or_an_old_timestamp_fails() {
        let body = br#"{"event":"waitlist.promoted","ticket":{"user_id":"u1"}}"#;
        let header = sign(SECRET, 1_000, body).unwrap();
        let tampered = br#"{"event":"waitlist.promoted","ticket":{"user_id":"u2"}}"#;
        assert_eq!(
            verify(SECRET, &header, tampered, 1_000, 300),
            Err(Unverified::Mismatch)
        );
        assert_eq!(
            verify(b"whsec-someone-elses-secret", &header, body, 1_000, 300),
            Err(Unverified::Mismatch)
        );
        assert_eq!(
            verify(SECRET, &header, body, 1_301, 300),
            Err(Unverified::Stale)
        );
        // a re-signed timestamp without the secret does not match
        let moved = header.replacen("t=1000", "t=2000", 1);
        assert_eq!(
            verify(SECRET, &moved, body, 2_000, 300),
            Err(Unverified::Mismatch)
        );
        assert_eq!(
            verify(SECRET, "v1=00", body, 1_000, 300),
            Err(Unverified::Malformed)
        );
        assert_eq!(
            verify(SECRET, "t=1000,v1=zz", body, 1_000, 300),
            Err(Unverified::Mismatch)
        );
    }
}
