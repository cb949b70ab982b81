//! What admission control costs: a refused (429) request against an admitted
//! reserve, and an admitted reserve with and without the limiter — all in one
//! run on one machine, so the figures are ratios. Starts its own redis-server
//! on a free port; the service runs in-process on 127.0.0.1.
//!
//! `cargo bench --bench admission` (release build; prints figures, no asserts).

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flashgate::app::App;
use flashgate::config::Config;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const N: usize = 5_000;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(6399)
}

struct Stats {
    mean_us: f64,
    p50_us: f64,
    p99_us: f64,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = v.iter().map(|d| us(*d)).sum::<f64>() / v.len() as f64;
    Stats {
        mean_us: mean,
        p50_us: us(v[v.len() / 2]),
        p99_us: us(v[v.len() * 99 / 100]),
    }
}

fn commandstats(port: u16) -> u64 {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|r| r.split(',').next()?.parse::<u64>().ok())
        .sum()
}

async fn run(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: std::net::SocketAddr,
    tag: &str,
    same_user: bool,
    expect: u16,
) -> Vec<Duration> {
    let mut out = Vec::with_capacity(N);
    for i in 0..N {
        let user = if same_user {
            "abuser".to_string()
        } else {
            format!("{tag}-user-{i}")
        };
        let body = format!(r#"{{"sku":"bench","qty":1,"user_id":"{user}"}}"#);
        let req = Request::post(format!("http://{addr}/v1/reservations"))
            .header("content-type", "application/json")
            .header("idempotency-key", format!("{tag}-{i}"))
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let t = Instant::now();
        let resp = client.request(req).await.expect("answer");
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        out.push(t.elapsed());
        assert_eq!(status, expect, "{tag}: unexpected status");
    }
    out
}

async fn app(
    redis_url: &str,
    user_rate: u32,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        redis_url: redis_url.to_string(),
        insecure_no_auth: true,
        user_rate_per_second: user_rate,
        user_burst: 1,
        // the buyer's layer alone: the shipped instance bucket would refuse
        // the measured requests too
        global_rate_per_second: 0,
        client_rate_per_second: 0,
        ..Config::default()
    };
    let app = App::build(config).await.expect("app");
    let addr = app.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async move {
        let _ = rx.await;
        Duration::from_millis(100)
    }));
    (addr, tx)
}

#[tokio::main]
async fn main() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tmp");
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--bind",
            "127.0.0.1",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    std::thread::sleep(Duration::from_millis(300));
    let url = format!("redis://127.0.0.1:{port}");
    let (off_addr, _off) = app(&url, 0).await;
    let (on_addr, _on) = app(&url, 1).await;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let sku = flashgate::domain::Sku::parse("bench").expect("sku");
    let inv = flashgate::inventory::Inventory::connect(
        &Config {
            redis_url: url.clone(),
            ..Config::default()
        },
        std::sync::Arc::new(flashgate::metrics::Metrics::new(1)),
    )
    .await
    .expect("inventory");
    inv.preload(&sku, 1_000_000, 4, false)
        .await
        .expect("preload");

    // warm up both paths
    let _ = run(&client, off_addr, "warm-off", false, 201).await;
    let _ = run(&client, on_addr, "warm-on", false, 201).await;
    let admitted_off = stats(run(&client, off_addr, "off", false, 201).await);
    let admitted_on = stats(run(&client, on_addr, "on", false, 201).await);
    // the abuser's first request passes, the rest are refused
    let _ = run_one(&client, on_addr).await;
    let before = commandstats(port);
    let refused = stats(run(&client, on_addr, "abuse", true, 429).await);
    let redis_calls = commandstats(port).saturating_sub(before);

    println!("admission cost, {N} sequential requests each over one keep-alive connection (same run, same machine)");
    println!(
        "  {:<34} {:>9} {:>9} {:>9}",
        "", "mean µs", "p50 µs", "p99 µs"
    );
    for (name, s) in [
        ("admitted reserve, limiter off", &admitted_off),
        ("admitted reserve, limiter on", &admitted_on),
        ("refused reserve (429)", &refused),
    ] {
        println!(
            "  {name:<34} {:>9.1} {:>9.1} {:>9.1}",
            s.mean_us, s.p50_us, s.p99_us
        );
    }
    println!(
        "  refused / admitted (mean): {:.2}x",
        refused.mean_us / admitted_on.mean_us
    );
    println!(
        "  limiter overhead on an admitted reserve (mean): {:+.1} µs ({:+.1}%)",
        admitted_on.mean_us - admitted_off.mean_us,
        (admitted_on.mean_us / admitted_off.mean_us - 1.0) * 100.0
    );
    println!("  Redis commands during the {N} refused requests: {redis_calls} (INFO commandstats delta, includes the INFO call itself)");
    let _ = redis.kill();
    let _ = redis.wait();
}

async fn run_one(client: &Client<HttpConnector, Full<Bytes>>, addr: std::net::SocketAddr) -> u16 {
    let req = Request::post(format!("http://{addr}/v1/reservations"))
        .header("content-type", "application/json")
        .header("idempotency-key", "abuse-first")
        .body(Full::new(Bytes::from(
            r#"{"sku":"bench","qty":1,"user_id":"abuser"}"#,
        )))
        .expect("request");
    client
        .request(req)
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}
