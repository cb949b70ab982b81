//! Optional promotion webhook: each promoted waitlist ticket is POSTed as
//! JSON to the storefront's URL, with retries and backoff, on a task of its
//! own — promotion never waits for it. Delivery is at least once; the ticket
//! id lets the receiver drop duplicates.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

const ATTEMPTS: u32 = 5;

#[derive(Clone)]
pub struct Webhook {
    url: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Webhook {
    /// None when no URL is configured.
    pub fn from_url(url: &str) -> Option<Webhook> {
        if url.is_empty() {
            return None;
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Some(Webhook {
            url: url.to_string(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Deliver `ticket` (whatever the waitlist shows for it) in the
    /// background: up to 5 attempts, 200 ms doubling backoff. `ticket_id`
    /// names it in the logs. The webhook knows no waitlist type, so the
    /// arrow points one way: waitlist → webhook.
    pub fn send(&self, ticket_id: &str, ticket: &impl Serialize) {
        let Ok(body) = serde_json::to_vec(
            &serde_json::json!({"event": "waitlist.promoted", "ticket": ticket}),
        ) else {
            return;
        };
        let this = self.clone();
        let ticket_id = ticket_id.to_owned();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            for attempt in 1..=ATTEMPTS {
                let req = Request::post(this.url.as_str())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.clone())));
                let Ok(req) = req else { return };
                match tokio::time::timeout(Duration::from_secs(5), this.client.request(req)).await {
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
