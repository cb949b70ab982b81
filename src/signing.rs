//! Signed holds (issue 21): every answer that describes a held reservation
//! carries `token`, a compact JWS (RFC 7515) over the hold's claims, signed
//! with Ed25519 (`alg: EdDSA`, RFC 8037), so a checkout service verifies a
//! hold offline — with the public keys of `GET /.well-known/jwks.json` —
//! instead of calling flashgate back (docs/signed-holds.md).
//!
//! The token: header `{"alg":"EdDSA","typ":"JWT","kid":<kid>}`, claims
//! `{"sku","qty","sub" (the buyer's user id),"jti" (the reservation id),"exp"
//! (the hold's deadline, whole seconds, rounded down: a token never outlives
//! its hold)}`. `kid` is the key's RFC 7638 thumbprint. Ed25519 signatures are
//! deterministic, so the same hold with the same deadline and key always
//! gets the same token (a replay re-signs and answers the same bytes).
//!
//! Keys: `signing_key_file` (a PKCS#8 PEM Ed25519 private key, as `flashgate
//! gen-signing-key` or `openssl genpkey -algorithm ed25519` write it) signs;
//! `previous_signing_keys` (PEM files, public `PUBLIC KEY` or private
//! `PRIVATE KEY`; only their public half is used) stay published beside it,
//! so tokens signed before a rotation keep verifying. Both are reloadable
//! (SIGHUP): a reload reads the files again, and a file that cannot be used
//! refuses the whole reload. No key: no `token`, and an empty key set.
//!
//! Crypto is ring's (already in the tree through rustls); the JOSE framing
//! is three base64url segments, written here. The tests verify the tokens
//! with an independent JWT implementation (tests/it/signed_holds.rs).

use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigError};
use crate::inventory::{Cart, Reservation};

/// The DER prefix of an Ed25519 `SubjectPublicKeyInfo` (RFC 8410): the
/// 32-byte key follows it.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A key file larger than this is not a key (a PEM Ed25519 key is < 200 bytes).
const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;

/// The keys of a running instance: the one that signs (if any) and the key
/// set it publishes.
pub struct Signing {
    current: Option<Current>,
    /// `{"keys":[…]}`: the signing key first, then the previous ones.
    jwks: Bytes,
}

struct Current {
    pair: Ed25519KeyPair,
    kid: String,
    /// base64url of the header, and the `.` after it.
    prefix: String,
}

/// One published key (RFC 7517 / RFC 8037).
#[derive(Serialize)]
struct Jwk<'a> {
    kty: &'static str,
    crv: &'static str,
    x: &'a str,
    kid: &'a str,
    #[serde(rename = "use")]
    use_: &'static str,
    alg: &'static str,
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a str,
}

#[derive(Serialize)]
struct Claims<'a> {
    sku: &'a str,
    qty: u32,
    sub: &'a str,
    jti: &'a str,
    exp: i64,
}

/// A key file's content.
enum KeyFile {
    Private(Ed25519KeyPair),
    Public([u8; 32]),
}

impl KeyFile {
    fn public(&self) -> &[u8] {
        match self {
            KeyFile::Private(p) => p.public_key().as_ref(),
            KeyFile::Public(x) => x,
        }
    }
}

impl Signing {
    /// No key: no tokens, an empty key set.
    pub fn none() -> Signing {
        Signing {
            current: None,
            jwks: Bytes::from_static(br#"{"keys":[]}"#),
        }
    }

    /// The keys `config` names, read from their files now.
    pub fn from_config(config: &Config) -> Result<Signing, ConfigError> {
        let bad = |file: &str, why: String| {
            ConfigError::Invalid(format!("signing key file {file}: {why}"))
        };
        if config.signing_key_file.is_empty() && config.previous_signing_keys.is_empty() {
            return Ok(Signing::none());
        }
        let current = match config.signing_key_file.as_str() {
            "" => None,
            file => match read_key_file(Path::new(file)).map_err(|e| bad(file, e))? {
                KeyFile::Private(pair) => Some(pair),
                KeyFile::Public(_) => {
                    return Err(bad(
                        file,
                        "is a public key; signing_key_file needs the private key (PRIVATE KEY)"
                            .into(),
                    ))
                }
            },
        };
        let mut published: Vec<(String, String)> = Vec::new(); // (x, kid)
        let mut add = |public: &[u8]| {
            let x = URL_SAFE_NO_PAD.encode(public);
            let kid = thumbprint(&x);
            if !published.iter().any(|(_, k)| *k == kid) {
                published.push((x, kid.clone()));
            }
            kid
        };
        let current = current.map(|pair| {
            let kid = add(pair.public_key().as_ref());
            let header = serde_json::to_vec(&Header {
                alg: "EdDSA",
                typ: "JWT",
                kid: &kid,
            })
            .unwrap_or_default();
            let mut prefix = URL_SAFE_NO_PAD.encode(header);
            prefix.push('.');
            Current { pair, kid, prefix }
        });
        for file in &config.previous_signing_keys {
            let key = read_key_file(Path::new(file)).map_err(|e| bad(file, e))?;
            add(key.public());
        }
        let keys: Vec<Jwk> = published
            .iter()
            .map(|(x, kid)| Jwk {
                kty: "OKP",
                crv: "Ed25519",
                x,
                kid,
                use_: "sig",
                alg: "EdDSA",
            })
            .collect();
        let jwks = serde_json::to_vec(&serde_json::json!({ "keys": keys }))
            .map_err(|e| ConfigError::Invalid(format!("cannot encode the key set: {e}")))?;
        Ok(Signing {
            current,
            jwks: Bytes::from(jwks),
        })
    }

    /// The signing key's `kid`, if a key signs.
    pub fn kid(&self) -> Option<&str> {
        self.current.as_ref().map(|c| c.kid.as_str())
    }

    /// `GET /.well-known/jwks.json`'s body.
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }

    /// The token of a held reservation whose deadline is `r.expires_at_ms`;
    /// `None` without a signing key or for a reservation not held.
    pub fn token(&self, r: &Reservation) -> Option<String> {
        if r.status != "held" {
            return None;
        }
        self.sign(&Claims {
            sku: &r.sku,
            qty: r.qty,
            sub: &r.user_id,
            jti: &r.reservation_id,
            exp: r.expires_at_ms.div_euclid(1000),
        })
    }

    /// Sign each line of a held cart: the line's hold, `exp` the cart's
    /// `expires_at` (the first of its holds' deadlines, so never later than
    /// the line's own). Nothing for a cart not held, or without a key.
    pub fn sign_cart(&self, cart: &mut Cart) {
        let (Some(_), "held", Some(exp)) = (&self.current, cart.status, cart.expires_at_ms) else {
            return;
        };
        for line in &mut cart.lines {
            if let Some(rid) = &line.reservation_id {
                line.token = self.sign(&Claims {
                    sku: &line.sku,
                    qty: line.qty,
                    sub: &cart.user_id,
                    jti: rid,
                    exp: exp.div_euclid(1000),
                });
            }
        }
    }

    fn sign(&self, claims: &Claims) -> Option<String> {
        let current = self.current.as_ref()?;
        let claims = serde_json::to_vec(claims).ok()?;
        // header.claims.signature, each base64url without padding
        let mut token = String::with_capacity(current.prefix.len() + claims.len() * 4 / 3 + 92);
        token.push_str(&current.prefix);
        URL_SAFE_NO_PAD.encode_string(&claims, &mut token);
        let signature = current.pair.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        Some(token)
    }
}

/// The RFC 7638 thumbprint of an Ed25519 key whose base64url is `x`: the
/// SHA-256 of `{"crv":"Ed25519","kty":"OKP","x":"…"}` (the required members,
/// sorted, no spaces), base64url.
pub fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// A new Ed25519 private key as PKCS#8 PEM (`PRIVATE KEY`), and its `kid`
/// (`flashgate gen-signing-key`).
pub fn generate_pem() -> Result<(String, String), String> {
    let rng = ring::rand::SystemRandom::new();
    let der = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| "cannot generate an Ed25519 key".to_string())?;
    let pair = Ed25519KeyPair::from_pkcs8(der.as_ref())
        .map_err(|e| format!("generated key rejected: {e}"))?;
    let kid = thumbprint(&URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()));
    let b64 = STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok((pem, kid))
}

/// Read a PEM key file: `PRIVATE KEY` (PKCS#8, v1 or v2) or `PUBLIC KEY`
/// (SubjectPublicKeyInfo), Ed25519 only.
fn read_key_file(path: &Path) -> Result<KeyFile, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read: {e}"))?
        .len();
    if size > MAX_KEY_FILE_BYTES {
        return Err(format!("larger than {MAX_KEY_FILE_BYTES} bytes: not a key"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    parse_pem(&text)
}

fn parse_pem(text: &str) -> Result<KeyFile, String> {
    let (label, der) = pem_block(text)?;
    match label {
        "PRIVATE KEY" => Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map(KeyFile::Private)
            .map_err(|e| format!("not an Ed25519 PKCS#8 private key ({e})")),
        "PUBLIC KEY" => match der.strip_prefix(&SPKI_PREFIX[..]) {
            Some(x) => <[u8; 32]>::try_from(x)
                .map(KeyFile::Public)
                .map_err(|_| "not an Ed25519 public key".to_string()),
            None => Err("not an Ed25519 public key".into()),
        },
        other => Err(format!(
            "holds a {other} block; expected PRIVATE KEY or PUBLIC KEY (Ed25519)"
        )),
    }
}

/// The first PEM block of `text`: its label and its bytes.
fn pem_block(text: &str) -> Result<(&str, Vec<u8>), String> {
    const BEGIN: &str = "-----BEGIN ";
    let start = text.find(BEGIN).ok_or("no PEM block (-----BEGIN …)")?;
    let rest = &text[start + BEGIN.len()..];
    let label_end = rest.find("-----").ok_or("a PEM header without its end")?;
    let label = &rest[..label_end];
    let body = &rest[label_end + 5..];
    let end = format!("-----END {label}-----");
    let body_end = body.find(&end).ok_or("a PEM block without its END line")?;
    let b64: String = body[..body_end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = STANDARD
        .decode(b64)
        .map_err(|e| format!("the PEM block is not base64: {e}"))?;
    Ok((label, der))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8037 appendix A.1/A.2/A.3: the key, its `x`, its thumbprint.
    #[test]
    fn the_rfc_8037_key_gets_its_published_thumbprint() {
        let d = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        assert_eq!(thumbprint(x), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        // the same private key as PKCS#8 v1 (RFC 8410 §7 framing)
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend(URL_SAFE_NO_PAD.decode(d).unwrap());
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(&der)
        );
        let KeyFile::Private(pair) = parse_pem(&pem).unwrap() else {
            panic!("a private key")
        };
        assert_eq!(URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()), x);
        // RFC 8037 A.4: the signature of "Example of Ed25519 signing"
        let input = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
        assert_eq!(
            URL_SAFE_NO_PAD.encode(pair.sign(input.as_bytes()).as_ref()),
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
        // its public half as SubjectPublicKeyInfo
        let mut spki = SPKI_PREFIX.to_vec();
        spki.extend(URL_SAFE_NO_PAD.decode(x).unwrap());
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(&spki)
        );
        assert!(
            matches!(parse_pem(&pem), Ok(KeyFile::Public(k)) if URL_SAFE_NO_PAD.encode(k) == x)
        );
    }

    /// What `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`
    /// write (OpenSSL 3.0; a test key, never used elsewhere): PKCS#8 v1.
    #[test]
    fn openssls_key_files_are_read() {
        let private = "-----BEGIN PRIVATE KEY-----\n\
            MC4CAQAwBQYDK2VwBCIEIHgNu7IO5V9Xgv7IAtuLuAJ93DXjtANfNhG8CaDcdMQt\n\
            -----END PRIVATE KEY-----\n";
        let public = "-----BEGIN PUBLIC KEY-----\n\
            MCowBQYDK2VwAyEAzeqDz50g4PF7uvv3oS7eCy0advVqSym08nYvWhdy+bI=\n\
            -----END PUBLIC KEY-----\n";
        let (Ok(KeyFile::Private(pair)), Ok(KeyFile::Public(x))) =
            (parse_pem(private), parse_pem(public))
        else {
            panic!("both read")
        };
        assert_eq!(pair.public_key().as_ref(), &x[..]);
    }

    #[test]
    fn a_generated_key_reads_back_with_its_kid() {
        let (pem, kid) = generate_pem().unwrap();
        let KeyFile::Private(pair) = parse_pem(&pem).unwrap() else {
            panic!("a private key")
        };
        assert_eq!(
            thumbprint(&URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())),
            kid
        );
    }

    #[test]
    fn what_is_not_an_ed25519_key_is_refused() {
        for text in [
            "",
            "hello",
            "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n",
        ] {
            assert!(parse_pem(text).is_err(), "{text:?}");
        }
    }
}
