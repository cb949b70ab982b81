//! Criterion micro-benchmarks of the request path's pure pieces: request
//! decode + validation, the limiter check, shard choice + key names, and
//! response encode, and admission (key + storefront bucket) read directly
//! or through the reload's snapshot. `cargo bench --bench hot_path`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use flashgate::domain::{IdempotencyKey, Qty, ReservationId, Sku, UserId};
use flashgate::inventory::keys::{default_tag, ShardKeys};
use flashgate::inventory::Reservation;
use flashgate::limiter::{Bucket, Limiter};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ReserveBody {
    sku: String,
    qty: i64,
    user_id: String,
    #[serde(default)]
    waitlist: bool,
}

fn decode(c: &mut Criterion) {
    let body = br#"{"sku":"hot-sneaker-42","qty":1,"user_id":"user-0012345"}"#;
    c.bench_function("request decode + validate", |b| {
        b.iter(|| {
            let r: ReserveBody = serde_json::from_slice(black_box(body)).expect("json");
            let sku = Sku::parse(&r.sku).expect("sku");
            let qty = Qty::parse(r.qty, 10).expect("qty");
            let user = UserId::parse(&r.user_id).expect("user");
            let key = IdempotencyKey::parse(black_box("order-7f3a9c2e-0001")).expect("key");
            black_box((sku, qty, user, key))
        })
    });
}

fn limiter(c: &mut Criterion) {
    let off = Bucket {
        rate_per_second: 0,
        burst: 0,
    };
    let l = Limiter::new(
        off,
        off,
        Bucket {
            rate_per_second: 1_000_000,
            burst: 1_000_000,
        },
    );
    let users: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    let mut i = 0;
    c.bench_function("limiter check (10k known buyers)", |b| {
        b.iter(|| {
            i = (i + 1) % users.len();
            black_box(l.check_user("", &users[i]).is_ok())
        })
    });
}

fn shard_choice(c: &mut Criterion) {
    let sku = Sku::parse("hot-sneaker-42").expect("sku");
    let key = flashgate::domain::ScopedKey::new(
        &flashgate::domain::Tenant::Anonymous,
        &IdempotencyKey::parse("order-7f3a9c2e-0001").expect("key"),
    );
    c.bench_function("shard choice + key names", |b| {
        b.iter(|| {
            let s = (black_box(&key).stable_hash() % 8) as u16;
            let k = ShardKeys::new(&default_tag(&sku, s));
            let rid = ReservationId::new(&sku, s, &uuid::Uuid::new_v4());
            black_box((
                k.stock(),
                k.books(),
                k.holds(),
                k.idem(&key),
                k.events(),
                k.record(&rid),
            ))
        })
    });
}

fn encode(c: &mut Criterion) {
    let r = Reservation {
        reservation_id: "hot-sneaker-42.3.0123456789abcdef0123456789abcdef".into(),
        sku: "hot-sneaker-42".into(),
        qty: 1,
        user_id: "user-0012345".into(),
        status: "held",
        expires_at: flashgate::inventory::ms_to_rfc3339(1_795_000_000_000),
        expires_at_ms: 1_795_000_000_000,
        token: None,
    };
    // a signed hold's token (docs/signed-holds.md): the Ed25519 signature,
    // the claims' JSON and base64url
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("signing.pem");
    std::fs::write(&file, flashgate::signing::generate_pem().expect("key").0).expect("write");
    let signing = flashgate::signing::Signing::from_config(&flashgate::config::Config {
        signing_key_file: file.display().to_string(),
        ..flashgate::config::Config::default()
    })
    .expect("signing");
    c.bench_function("hold token (EdDSA sign)", |b| {
        b.iter(|| black_box(signing.token(black_box(&r))))
    });
    // what the service sends (the body written directly, as a response)
    // against serde_json's encoding of the same struct, the baseline
    c.bench_function("response encode", |b| {
        b.iter(|| {
            black_box(flashgate::http::body::reservation(
                hyper::StatusCode::CREATED,
                black_box(&r),
            ))
        })
    });
    c.bench_function("response encode (serde_json baseline)", |b| {
        b.iter(|| {
            black_box(flashgate::http::body::json(
                hyper::StatusCode::CREATED,
                black_box(&r),
            ))
        })
    });
}

/// Admission as the router does it — the key found among 20, the
/// storefront's bucket checked — with the keys and limiter owned directly
/// (as before reload existed) and read through an `ArcSwap` snapshot (as
/// `AppState::live` does): the price of reloadability per request.
fn admission(c: &mut Criterion) {
    use flashgate::auth::Auth;
    use flashgate::config::Config;
    let config = Config {
        api_keys: (0..20)
            .map(|i| format!("shop-{i}:storefront-key-{i:020}"))
            .collect(),
        admin_keys: vec!["admin-key-00000000000000000001".into()],
        global_rate_per_second: 1_000_000_000,
        global_burst: 1_000_000_000,
        client_rate_per_second: 1_000_000_000,
        client_burst: 1_000_000_000,
        ..Config::default()
    };
    let header =
        hyper::header::HeaderValue::from_static("Bearer storefront-key-00000000000000000013");
    let admit = |auth: &Auth, limiter: &Limiter| {
        let caller = auth.identify(Some(black_box(&header))).expect("known key");
        limiter.check_client(auth.bucket(caller)).is_ok()
    };
    let (auth, limiter) = (Auth::from_config(&config), config.limiter());
    c.bench_function("admission, keys and limiter owned", |b| {
        b.iter(|| black_box(admit(&auth, &limiter)))
    });
    let live = arc_swap::ArcSwap::from_pointee((Auth::from_config(&config), config.limiter()));
    c.bench_function("admission, through the reload snapshot", |b| {
        b.iter(|| {
            let snapshot = live.load();
            black_box(admit(&snapshot.0, &snapshot.1))
        })
    });
}

criterion_group!(benches, decode, limiter, shard_choice, encode, admission);
criterion_main!(benches);
