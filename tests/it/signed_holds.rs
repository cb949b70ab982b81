//! Signed holds (issue 21, docs/signed-holds.md), on a real Redis: the
//! `token` of every answer describing a held reservation verifies, as
//! checkout would verify it, with an independent JWT implementation
//! (`jsonwebtoken`, RustCrypto backend) and the key found by `kid` in the
//! published `GET /.well-known/jwks.json` (decoded from its JSON here), with
//! no leeway; a tampered token, an `alg: none` or HS256-confused one and an
//! expired one do not; a key rotated by a reload keeps the old tokens
//! verifiable while it is listed, and new tokens carry the new `kid`.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{spawn_app_with, RedisServer, TestApp};

#[derive(Debug, Deserialize, Serialize, PartialEq)]
struct Claims {
    sku: String,
    qty: u32,
    sub: String,
    jti: String,
    exp: u64,
}

/// A new key written by `flashgate gen-signing-key`; its file and the kid it printed.
fn gen_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let file = dir.join(name);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flashgate"))
        .args(["gen-signing-key", "--out"])
        .arg(&file)
        .output()
        .expect("flashgate runs");
    assert!(out.status.success(), "{out:?}");
    let kid = String::from_utf8(out.stdout).unwrap().trim().to_string();
    (file, kid)
}

async fn jwks(app: &TestApp) -> JwkSet {
    let a = app.get("/.well-known/jwks.json").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["content-type"], "application/jwk-set+json");
    serde_json::from_value(a.body).expect("a JWK set")
}

/// Checkout's verification: the key named by the token's `kid` in the
/// published set, EdDSA only, `exp` required, no leeway.
fn verify(set: &JwkSet, token: &str) -> Result<Claims, ErrorKind> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.into_kind())?;
    let kid = header.kid.ok_or(ErrorKind::InvalidToken)?;
    let jwk = set.find(&kid).ok_or(ErrorKind::InvalidKeyFormat)?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.into_kind())?;
    let mut v = Validation::new(Algorithm::EdDSA);
    v.leeway = 0;
    jsonwebtoken::decode::<Claims>(token, &key, &v)
        .map(|d| d.claims)
        .map_err(|e| e.into_kind())
}

fn token_of(a: &support::Answer) -> &str {
    a.body["token"]
        .as_str()
        .unwrap_or_else(|| panic!("a token in {}", a.body))
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// `expires_at` (RFC 3339) in whole seconds, rounded down.
fn exp_of(body: &Value) -> u64 {
    let at = humantime::parse_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
    at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

#[tokio::test]
async fn every_answer_of_a_held_reservation_carries_a_token_checkout_verifies_with_the_jwks() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (key, kid) = gen_key(dir.path(), "signing.pem");
    let app = spawn_app_with(&redis, |c| {
        c.signing_key_file = key.display().to_string();
        c.hold_seconds = 60;
        c.extend_seconds = 600;
    })
    .await;
    app.preload("SIGNED-1", 10, 2).await;

    let set = jwks(&app).await;
    assert_eq!(set.keys.len(), 1);
    // the published key, read as plain JSON: RFC 8037 members, and a kid
    // that is the RFC 7638 thumbprint of its x
    let raw = app.get("/.well-known/jwks.json").await.body;
    let k = &raw["keys"][0];
    assert_eq!(
        (&k["kty"], &k["crv"], &k["use"], &k["alg"]),
        (
            &Value::from("OKP"),
            &Value::from("Ed25519"),
            &Value::from("sig"),
            &Value::from("EdDSA")
        )
    );
    let x = k["x"].as_str().unwrap();
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    let thumb = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
    assert_eq!(k["kid"], thumb);
    assert_eq!(kid, thumb, "gen-signing-key prints the kid");
    assert!(k.get("d").is_none(), "no private part published");

    // the hold
    let held = app.reserve("k-signed-1", "SIGNED-1", 2, "buyer-7").await;
    assert_eq!(held.status, 201, "{}", held.body);
    let token = token_of(&held).to_string();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
    let rid = held.body["reservation_id"].as_str().unwrap().to_string();
    let want = Claims {
        sku: "SIGNED-1".into(),
        qty: 2,
        sub: "buyer-7".into(),
        jti: rid.clone(),
        exp: exp_of(&held.body),
    };
    assert_eq!(verify(&set, &token).unwrap(), want);

    // a replay and a read describe the same hold: the same claims (Ed25519
    // is deterministic: the same token)
    let replay = app.reserve("k-signed-1", "SIGNED-1", 2, "buyer-7").await;
    assert_eq!(replay.status, 200);
    assert_eq!(verify(&set, token_of(&replay)).unwrap(), want);
    let read = app.get(&format!("/v1/reservations/{rid}")).await;
    assert_eq!(read.status, 200);
    assert_eq!(token_of(&read), token);

    // extend: a new token with the new exp
    let extended = app.action(&rid, "extend").await;
    assert_eq!(extended.status, 200, "{}", extended.body);
    let new_exp = exp_of(&extended.body);
    assert!(new_exp > want.exp, "{new_exp} > {}", want.exp);
    let claims = verify(&set, token_of(&extended)).unwrap();
    assert_eq!(
        claims,
        Claims {
            exp: new_exp,
            ..want
        }
    );

    // what is no longer held has no token
    let confirmed = app.action(&rid, "confirm").await;
    assert_eq!(confirmed.status, 200);
    assert_eq!(confirmed.body["status"], "confirmed");
    assert!(confirmed.body.get("token").is_none(), "{}", confirmed.body);
    let read = app.get(&format!("/v1/reservations/{rid}")).await;
    assert!(read.body.get("token").is_none(), "{}", read.body);
    let other = app.reserve("k-signed-2", "SIGNED-1", 1, "buyer-8").await;
    let rid2 = other.body["reservation_id"].as_str().unwrap();
    let released = app.action(rid2, "release").await;
    assert_eq!(released.body["status"], "released");
    assert!(released.body.get("token").is_none(), "{}", released.body);
}

#[tokio::test]
async fn a_tampered_or_algorithm_confused_token_fails() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = gen_key(dir.path(), "signing.pem");
    let app = spawn_app_with(&redis, |c| c.signing_key_file = key.display().to_string()).await;
    app.preload("SIGNED-2", 10, 1).await;
    let set = jwks(&app).await;
    let held = app.reserve("k-tamper", "SIGNED-2", 1, "buyer-1").await;
    let token = token_of(&held).to_string();
    assert!(verify(&set, &token).is_ok());
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);

    // the payload: one more unit, the signature kept
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["qty"] = Value::from(5);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    assert_eq!(verify(&set, &forged), Err(ErrorKind::InvalidSignature));
    // another buyer
    claims["qty"] = Value::from(1);
    claims["sub"] = Value::from("buyer-2");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    assert_eq!(verify(&set, &forged), Err(ErrorKind::InvalidSignature));

    // one bit of the signature
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[7] ^= 1;
    let forged = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
    assert_eq!(verify(&set, &forged), Err(ErrorKind::InvalidSignature));

    // alg none, no signature
    let kid = kid_of(&token);
    let none = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#));
    let forged = format!("{none}.{}.", parts[1]);
    assert!(verify(&set, &forged).is_err());

    // HS256 keyed with the public key (the published x, and its raw bytes)
    let x = set
        .find(&kid)
        .map(|j| serde_json::to_value(j).unwrap())
        .unwrap()["x"]
        .as_str()
        .unwrap()
        .to_string();
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(kid.clone());
    let real: Claims = verify(&set, &token).unwrap();
    for secret in [x.as_bytes().to_vec(), URL_SAFE_NO_PAD.decode(&x).unwrap()] {
        let forged = jsonwebtoken::encode(&hs, &real, &EncodingKey::from_secret(&secret)).unwrap();
        assert_eq!(verify(&set, &forged), Err(ErrorKind::InvalidAlgorithm));
    }
    // and the genuine token still verifies
    assert_eq!(verify(&set, &token).unwrap(), real);
}

#[tokio::test]
async fn a_token_expires_with_its_hold() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = gen_key(dir.path(), "signing.pem");
    let app = spawn_app_with(&redis, |c| {
        c.signing_key_file = key.display().to_string();
        c.hold_seconds = 1;
    })
    .await;
    app.preload("SIGNED-3", 10, 1).await;
    let set = jwks(&app).await;
    let held = app.reserve("k-expiring", "SIGNED-3", 1, "buyer-1").await;
    assert_eq!(held.status, 201);
    let token = token_of(&held).to_string();
    let claims = verify(&set, &token).expect("valid while held");
    // exp is the hold's deadline in whole seconds, rounded down: never later
    assert_eq!(claims.exp, exp_of(&held.body));
    // past exp (the verifier's clock, no leeway) the token is refused
    assert!(
        support::eventually(Duration::from_secs(10), || async {
            now_secs() > claims.exp
        })
        .await
    );
    assert_eq!(verify(&set, &token), Err(ErrorKind::ExpiredSignature));
    // and the hold, read once its deadline passed, carries no token
    let rid = held.body["reservation_id"].as_str().unwrap();
    let read = app.get(&format!("/v1/reservations/{rid}")).await;
    assert_eq!(read.body["status"], "expired", "{}", read.body);
    assert!(read.body.get("token").is_none(), "{}", read.body);
}

/// `key`'s public half as a `PUBLIC KEY` PEM file, made from its JWK's x.
fn public_pem(set: &JwkSet, kid: &str, file: &Path) {
    let x = serde_json::to_value(set.find(kid).unwrap()).unwrap()["x"]
        .as_str()
        .unwrap()
        .to_string();
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend(URL_SAFE_NO_PAD.decode(x).unwrap());
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(spki)
    );
    std::fs::write(file, pem).unwrap();
}

#[tokio::test]
async fn a_key_rotated_by_reload_keeps_old_tokens_verifiable_while_listed() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (old_key, old_kid) = gen_key(dir.path(), "old.pem");
    let (new_key, new_kid) = gen_key(dir.path(), "new.pem");
    let app = spawn_app_with(&redis, |c| {
        c.signing_key_file = old_key.display().to_string();
    })
    .await;
    app.preload("SIGNED-4", 10, 1).await;
    let before = app.reserve("k-before", "SIGNED-4", 1, "buyer-1").await;
    let old_token = token_of(&before).to_string();
    assert_eq!(kid_of(&old_token), old_kid);
    let set = jwks(&app).await;

    // step 1: publish the new key before it signs (as its public half)
    let new_public = dir.path().join("new.pub.pem");
    let mut with_new = app.state.live().config.clone();
    // (the private file gives the public half; the test writes the PEM from it)
    with_new.previous_signing_keys = vec![new_key.display().to_string()];
    app.state.apply(Ok(with_new.clone())).expect("reload");
    let pre = jwks(&app).await;
    assert_eq!(pre.keys.len(), 2);
    assert!(pre.find(&new_kid).is_some() && pre.find(&old_kid).is_some());
    public_pem(&pre, &new_kid, &new_public);
    with_new.previous_signing_keys = vec![new_public.display().to_string()];
    app.state.apply(Ok(with_new)).expect("reload");
    assert_eq!(jwks(&app).await.keys.len(), 2);
    let still_old = app.reserve("k-between", "SIGNED-4", 1, "buyer-1").await;
    assert_eq!(kid_of(token_of(&still_old)), old_kid, "not signing yet");

    // step 2: the new key signs, the old one stays listed (its public half)
    let old_public = dir.path().join("old.pub.pem");
    public_pem(&set, &old_kid, &old_public);
    let mut rotated = app.state.live().config.clone();
    rotated.signing_key_file = new_key.display().to_string();
    rotated.previous_signing_keys = vec![old_public.display().to_string()];
    app.state.apply(Ok(rotated.clone())).expect("reload");
    let after = jwks(&app).await;
    assert_eq!(after.keys.len(), 2);
    assert_eq!(
        serde_json::to_value(&after.keys[0]).unwrap()["kid"],
        new_kid,
        "the signing key first"
    );
    // a token signed before the rotation still verifies from the JWKS
    assert_eq!(verify(&after, &old_token).unwrap().sub, "buyer-1");
    // new tokens carry the new kid, and so do new answers for an old hold
    let fresh = app.reserve("k-after", "SIGNED-4", 1, "buyer-2").await;
    assert_eq!(kid_of(token_of(&fresh)), new_kid);
    assert!(verify(&after, token_of(&fresh)).is_ok());
    let rid = before.body["reservation_id"].as_str().unwrap();
    let reread = app.get(&format!("/v1/reservations/{rid}")).await;
    assert_eq!(kid_of(token_of(&reread)), new_kid);
    assert!(verify(&after, token_of(&reread)).is_ok());

    // step 3 (after max_hold_seconds): the old key leaves the set, and its
    // tokens no longer verify from it
    rotated.previous_signing_keys = vec![];
    app.state.apply(Ok(rotated)).expect("reload");
    let last = jwks(&app).await;
    assert_eq!(last.keys.len(), 1);
    assert!(verify(&last, &old_token).is_err());
    assert!(verify(&last, token_of(&fresh)).is_ok());
}

#[tokio::test]
async fn a_key_file_that_cannot_be_used_refuses_the_start_and_the_reload() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (key, kid) = gen_key(dir.path(), "signing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.pem");
    let huge = dir.path().join("huge.pem");
    std::fs::write(&huge, vec![b'A'; 1 << 20]).unwrap();
    for bad in [&garbage, &missing, &huge] {
        let mut c = support::test_config(&redis);
        c.signing_key_file = bad.display().to_string();
        assert!(
            flashgate::app::App::build(c).await.is_err(),
            "{} refused at start",
            bad.display()
        );
    }
    // a public key cannot sign
    let app = spawn_app_with(&redis, |c| c.signing_key_file = key.display().to_string()).await;
    let public = dir.path().join("signing.pub.pem");
    public_pem(&jwks(&app).await, &kid, &public);
    for bad in [&garbage, &missing, &huge, &public] {
        let mut c = app.state.live().config.clone();
        c.signing_key_file = bad.display().to_string();
        assert!(app.state.apply(Ok(c)).is_err(), "{}", bad.display());
        let mut c = app.state.live().config.clone();
        c.previous_signing_keys = vec![bad.display().to_string()];
        if bad != &public {
            assert!(app.state.apply(Ok(c)).is_err(), "{}", bad.display());
        }
    }
    // nothing changed: the same key signs and is the only one published
    assert_eq!(app.state.live().signing.kid(), Some(kid.as_str()));
    assert_eq!(jwks(&app).await.keys.len(), 1);
}

#[tokio::test]
async fn without_a_key_no_token_and_an_empty_key_set() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |_| {}).await;
    app.preload("SIGNED-5", 10, 1).await;
    let held = app.reserve("k-plain", "SIGNED-5", 1, "buyer-1").await;
    assert_eq!(held.status, 201);
    assert!(held.body.get("token").is_none(), "{}", held.body);
    let a = app.get("/.well-known/jwks.json").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, serde_json::json!({"keys": []}));
}

#[test]
fn gen_signing_key_writes_an_owner_only_file_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let (file, kid) = gen_key(dir.path(), "k.pem");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
    assert_eq!(kid.len(), 43, "a base64url SHA-256: {kid}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_flashgate"))
        .args(["gen-signing-key", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text, "untouched");
}

#[tokio::test]
async fn each_line_of_a_held_cart_carries_a_token_for_its_hold() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (key, kid) = gen_key(dir.path(), "signing.pem");
    let app = spawn_app_with(&redis, |c| c.signing_key_file = key.display().to_string()).await;
    app.preload("CART-A", 10, 2).await;
    app.preload("CART-B", 10, 1).await;
    let set = jwks(&app).await;
    let body = serde_json::json!({
        "user_id": "buyer-9",
        "lines": [{"sku": "CART-A", "qty": 2}, {"sku": "CART-B", "qty": 1}],
    });
    let created = app
        .request(
            hyper::Method::POST,
            "/v1/carts",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "k-cart-signed"),
            ],
            body.to_string().into_bytes(),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["status"], "held");
    let exp = exp_of(&created.body);
    let check = |cart: &Value| {
        let lines = cart["lines"].as_array().unwrap();
        assert_eq!(lines.len(), 2);
        for line in lines {
            let token = line["token"].as_str().unwrap_or_else(|| panic!("{cart}"));
            assert_eq!(kid_of(token), kid);
            // the line's own reservation, held, says the same
            let rid = line["reservation_id"].as_str().unwrap();
            assert_eq!(
                verify(&set, token).unwrap(),
                Claims {
                    sku: line["sku"].as_str().unwrap().into(),
                    qty: line["qty"].as_u64().unwrap() as u32,
                    sub: "buyer-9".into(),
                    jti: rid.into(),
                    exp: exp_of(cart),
                }
            );
        }
    };
    check(&created.body);
    let cart_id = created.body["cart_id"].as_str().unwrap().to_string();
    let read = app.get(&format!("/v1/carts/{cart_id}")).await;
    check(&read.body);
    // never later than the line's own hold
    for line in read.body["lines"].as_array().unwrap() {
        let rid = line["reservation_id"].as_str().unwrap();
        let hold = app.get(&format!("/v1/reservations/{rid}")).await;
        assert!(exp <= exp_of(&hold.body));
    }
    let confirmed = app
        .request(
            hyper::Method::POST,
            &format!("/v1/carts/{cart_id}/confirm"),
            &[],
            vec![],
        )
        .await;
    assert_eq!(confirmed.status, 200, "{}", confirmed.body);
    assert_eq!(confirmed.body["status"], "confirmed");
    for line in confirmed.body["lines"].as_array().unwrap() {
        assert!(line.get("token").is_none(), "{}", confirmed.body);
    }
}
