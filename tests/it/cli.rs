//! The command line as ops use it: preload, status, config layering.

use crate::support;

use std::process::Command;

use support::RedisServer;

fn flashgate(redis: &RedisServer, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flashgate"))
        .args(args)
        .env("FLASHGATE_REDIS_URL", redis.url())
        .output()
        .expect("run flashgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn preload_refuses_a_live_sku_and_status_shows_the_books() {
    let redis = RedisServer::start();
    let (ok, out, _) = flashgate(
        &redis,
        &[
            "preload", "--sku", "cli-sku", "--stock", "10", "--shards", "4",
        ],
    );
    assert!(ok);
    assert!(out.contains("[3, 3, 2, 2]"), "{out}");
    // a typo on a live SKU changes nothing
    let (ok, _, err) = flashgate(&redis, &["preload", "--sku", "cli-sku", "--stock", "99999"]);
    assert!(!ok);
    assert!(
        err.contains("already loaded") && err.contains("--force"),
        "{err}"
    );
    let (ok, _, _) = flashgate(
        &redis,
        &["preload", "--sku", "cli-sku", "--stock", "5", "--if-absent"],
    );
    assert!(ok, "--if-absent succeeds without change");
    let (ok, out, _) = flashgate(&redis, &["status", "--sku", "cli-sku", "--format", "json"]);
    assert!(ok);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (st["available"].as_i64(), st["shards"].as_i64()),
        (Some(10), Some(4))
    );
    let (ok, _, _) = flashgate(
        &redis,
        &["preload", "--sku", "cli-sku", "--stock", "8", "--force"],
    );
    assert!(ok);
    let (ok, out, _) = flashgate(&redis, &["status", "--sku", "cli-sku"]);
    assert!(ok);
    assert!(
        out.contains("available 8") && out.contains("drift 0"),
        "{out}"
    );
    let (ok, _, err) = flashgate(&redis, &["status", "--sku", "no-such-sku"]);
    assert!(!ok);
    assert!(err.contains("unknown sku"), "{err}");
    let (ok, _, err) = flashgate(&redis, &["preload", "--sku", "bad{sku}", "--stock", "1"]);
    assert!(!ok && err.contains("sku"), "{err}");
}

#[test]
fn flags_win_over_environment_over_file() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fg.toml");
    std::fs::write(
        &file,
        "hold_seconds = 111\nextend_seconds = 222\nmax_hold_seconds = 3000\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flashgate"))
        .args(["config", "--config"])
        .arg(&file)
        .args(["--extend-seconds", "333"])
        .env("FLASHGATE_HOLD_SECONDS", "444")
        .env("FLASHGATE_EXTEND_SECONDS", "555")
        .env("FLASHGATE_REDIS_URL", "redis://user:hunter2@127.0.0.1:1")
        .env("FLASHGATE_API_KEYS", "storefront-secret-00001")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("hold_seconds = 444"), "env over file: {text}");
    assert!(
        text.contains("extend_seconds = 333"),
        "flag over env: {text}"
    );
    assert!(
        text.contains("max_hold_seconds = 3000"),
        "file over default: {text}"
    );
    assert!(
        !text.contains("hunter2") && !text.contains("storefront-secret"),
        "secrets redacted: {text}"
    );
    drop(redis);
}
