//! The run's history (docs/faults-history.md): one JSON object per line,
//! in the order things happened. The index and the time of a line are taken
//! under the same lock as its write, so the file's order is the order of
//! the clock.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Map, Value};

/// Who did an operation: a client (one operation at a time) or the nemesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    Client(u32),
    Nemesis,
}

impl Process {
    fn json(self) -> Value {
        match self {
            Process::Client(n) => json!(n),
            Process::Nemesis => json!("nemesis"),
        }
    }
}

/// How an operation ended (the format's `type` of a completion).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ok,
    Fail,
    Info,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ok => "ok",
            Kind::Fail => "fail",
            Kind::Info => "info",
        }
    }

    /// The format's rule: 2xx ok, 4xx fail (a refusal that changed
    /// nothing), anything else (5xx, no answer) info (outcome unknown).
    pub fn of_status(status: Option<u16>) -> Kind {
        match status {
            Some(s) if (200..300).contains(&s) => Kind::Ok,
            Some(s) if (400..500).contains(&s) => Kind::Fail,
            _ => Kind::Info,
        }
    }
}

pub struct History {
    epoch: Instant,
    /// The wall clock (Unix ms) at `epoch`.
    pub started_at_unix_ms: f64,
    inner: Mutex<Inner>,
}

struct Inner {
    next: u64,
    out: BufWriter<File>,
}

impl History {
    pub fn create(path: &Path, epoch: Instant) -> anyhow::Result<History> {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
            - epoch.elapsed().as_secs_f64() * 1000.0;
        Ok(History {
            epoch,
            started_at_unix_ms: unix.round(),
            inner: Mutex::new(Inner {
                next: 0,
                out: BufWriter::new(File::create(path)?),
            }),
        })
    }

    /// ms since the run started.
    pub fn now_ms(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * 1000.0
    }

    /// Append one line; returns its time. `extra` adds `status`, `body`,
    /// `error` to a completion.
    pub fn record(
        &self,
        process: Process,
        kind: &str,
        f: &str,
        value: &Value,
        extra: Option<Map<String, Value>>,
    ) -> f64 {
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let time_ms = self.now_ms();
        let mut line = Map::new();
        line.insert("index".into(), json!(inner.next));
        line.insert("time_ms".into(), json!((time_ms * 1000.0).round() / 1000.0));
        line.insert(
            "wall_ms".into(),
            json!((self.started_at_unix_ms + time_ms).round()),
        );
        line.insert("process".into(), process.json());
        line.insert("type".into(), json!(kind));
        line.insert("f".into(), json!(f));
        line.insert("value".into(), value.clone());
        if let Some(extra) = extra {
            line.extend(extra);
        }
        inner.next += 1;
        let text = Value::Object(line).to_string();
        // a run stopped half-way keeps every line written so far
        let _ = writeln!(inner.out, "{text}").and_then(|_| inner.out.flush());
        time_ms
    }

    /// A nemesis `start` or `stop` line.
    pub fn nemesis(&self, f: &str, fault: &str, detail: &str) -> f64 {
        self.record(
            Process::Nemesis,
            "info",
            f,
            &json!({"fault": fault, "detail": detail}),
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_formats_types() {
        assert_eq!(Kind::of_status(Some(201)), Kind::Ok);
        assert_eq!(Kind::of_status(Some(202)), Kind::Ok);
        assert_eq!(Kind::of_status(Some(409)), Kind::Fail);
        assert_eq!(Kind::of_status(Some(429)), Kind::Fail);
        assert_eq!(Kind::of_status(Some(503)), Kind::Info);
        assert_eq!(Kind::of_status(Some(500)), Kind::Info);
        assert_eq!(Kind::of_status(None), Kind::Info);
    }

    #[test]
    fn lines_are_numbered_in_order_with_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let h = History::create(&path, Instant::now()).unwrap();
        h.record(
            Process::Client(3),
            "invoke",
            "reserve",
            &json!({"sku": "S1"}),
            None,
        );
        h.nemesis("start", "redis-kill", "SIGKILL");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["index"], 0);
        assert_eq!(lines[0]["process"], 3);
        assert_eq!(lines[1]["index"], 1);
        assert_eq!(lines[1]["process"], "nemesis");
        assert_eq!(lines[1]["value"]["fault"], "redis-kill");
        assert!(lines[1]["time_ms"].as_f64() >= lines[0]["time_ms"].as_f64());
    }
}
