//! The binary on a run directory (tests/fixtures/valid, hand-written):
//! verdict.json, plot.svg and the exit code.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn run_dir_copy(fixture: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    for name in ["history.jsonl", "final.json"] {
        std::fs::copy(src.join(name), dir.path().join(name)).expect("copy fixture");
    }
    dir
}

fn checker(dir: &Path) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_flashgate-checker"))
        .arg(dir)
        .output()
        .expect("run flashgate-checker");
    let verdict = std::fs::read_to_string(dir.join("verdict.json")).expect("verdict.json written");
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(&verdict).expect("verdict.json is JSON"),
    )
}

#[test]
fn a_valid_run_exits_0_with_a_verdict_and_a_plot() {
    let dir = run_dir_copy("valid");
    let (code, v) = checker(dir.path());
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["valid"], true);
    let rules: Vec<&str> = v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert_eq!(
        rules,
        [
            "no_oversell",
            "idempotency",
            "confirm_durable",
            "books",
            "waitlist",
            "info_resolved",
            "cart_whole",
            "cart_replay"
        ]
    );
    assert!(
        v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "ok"),
        "{v:#}"
    );
    let svg = std::fs::read_to_string(dir.path().join("plot.svg")).expect("plot.svg written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // the nemesis window is shaded and labelled, each op has its panel
    assert!(
        svg.contains("<title>redis-pause 0..1100 ms</title>"),
        "{svg}"
    );
    assert!(svg.contains(">redis-pause</text>"));
    for op in ["reserve /s", "confirm /s", "get_ticket /s", "units S1"] {
        assert!(svg.contains(&format!(">{op}</text>")), "panel {op}");
    }
}

#[test]
fn an_invalid_run_exits_1_naming_the_rule_and_the_line() {
    let dir = run_dir_copy("valid");
    let path = dir.path().join("final.json");
    let mut fin: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    fin["ledger_confirmed"] = Value::Array(vec![]);
    std::fs::write(&path, fin.to_string()).unwrap();
    let (code, v) = checker(dir.path());
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["valid"], false);
    let broken: Vec<&Value> = v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "broken")
        .collect();
    assert_eq!(broken.len(), 1, "{v:#}");
    assert_eq!(broken[0]["rule"], "confirm_durable");
    let first = &broken[0]["first"];
    assert_eq!(
        (
            first["index"].as_u64(),
            first["process"].as_str(),
            first["f"].as_str(),
            first["type"].as_str()
        ),
        (Some(7), Some("1"), Some("confirm"), Some("ok"))
    );
    assert_eq!(first["time_ms"].as_f64(), Some(1202.0));
}

#[test]
fn an_unreadable_run_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flashgate-checker"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("history.jsonl"));
}
