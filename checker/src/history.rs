//! history.jsonl: one operation per line, Jepsen style. Parsed into [`Line`]s
//! and paired into [`Op`]s (an invoke and its completion, per process).

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;

/// Who did an operation: a client (one operation at a time) or the nemesis.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(untagged)]
pub enum Process {
    Client(i64),
    Named(String),
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Process::Client(n) => write!(f, "{n}"),
            Process::Named(s) => f.write_str(s),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Invoke => "invoke",
            Kind::Ok => "ok",
            Kind::Fail => "fail",
            Kind::Info => "info",
        }
    }
}

/// One line of history.jsonl. Unknown fields are ignored (the harness may add some).
#[derive(Clone, Debug, Deserialize)]
pub struct Line {
    pub index: u64,
    pub time_ms: f64,
    pub process: Process,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub f: String,
    #[serde(default)]
    pub value: Value,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub body: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
    /// Optional wall clock (Unix ms) of the line: anchors `expires_at` on `time_ms`.
    #[serde(default)]
    pub wall_ms: Option<f64>,
}

impl Line {
    pub fn is_nemesis(&self) -> bool {
        self.process == Process::Named("nemesis".into())
    }

    pub fn value_str(&self, field: &str) -> Option<&str> {
        self.value.get(field).and_then(Value::as_str)
    }

    pub fn body_str(&self, field: &str) -> Option<&str> {
        self.body.as_ref()?.get(field)?.as_str()
    }

    pub fn body_i64(&self, field: &str) -> Option<i64> {
        self.body.as_ref()?.get(field)?.as_i64()
    }

    /// Part of the resolve phase (after the faults healed).
    pub fn in_resolve(&self) -> bool {
        self.value_str("phase") == Some("resolve")
    }

    /// The reservation this line is about: the body's, else the request's.
    pub fn reservation_id(&self) -> Option<&str> {
        self.body_str("reservation_id")
            .or_else(|| self.value_str("reservation_id"))
    }

    /// `(storefront, Idempotency-Key)` of a reserve.
    pub fn idem_key(&self) -> Option<(String, String)> {
        let key = self.value_str("key")?;
        let sf = self.value_str("storefront").unwrap_or("");
        Some((sf.to_string(), key.to_string()))
    }
}

/// A client operation: its invoke line and its completion line (None when the
/// history ends before it completed: its outcome is unknown, like `info`).
#[derive(Clone, Copy, Debug)]
pub struct Op {
    pub invoke: usize,
    pub complete: Option<usize>,
}

#[derive(Debug)]
pub struct History {
    pub lines: Vec<Line>,
    pub ops: Vec<Op>,
    /// For each line, the op it belongs to (None for nemesis lines).
    pub op_of: Vec<Option<usize>>,
}

#[derive(Debug)]
pub struct FormatError {
    /// 1-based line number in history.jsonl.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "history.jsonl line {}: {}", self.line, self.message)
    }
}

impl History {
    /// Parse history.jsonl (blank lines skipped) and pair invokes with completions.
    pub fn parse(text: &str) -> Result<History, FormatError> {
        let mut lines = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            if raw.trim().is_empty() {
                continue;
            }
            let line: Line = serde_json::from_str(raw).map_err(|e| FormatError {
                line: n + 1,
                message: e.to_string(),
            })?;
            if line.index != lines.len() as u64 {
                return Err(FormatError {
                    line: n + 1,
                    message: format!("index {} where {} was due", line.index, lines.len()),
                });
            }
            if !line.time_ms.is_finite() {
                return Err(FormatError {
                    line: n + 1,
                    message: "time_ms is not a number".into(),
                });
            }
            lines.push(line);
        }
        Self::pair(lines)
    }

    fn pair(lines: Vec<Line>) -> Result<History, FormatError> {
        let mut ops: Vec<Op> = Vec::new();
        let mut op_of = vec![None; lines.len()];
        let mut open: HashMap<Process, usize> = HashMap::new();
        for (i, l) in lines.iter().enumerate() {
            if l.is_nemesis() {
                continue;
            }
            let err = |message: String| FormatError {
                line: i + 1,
                message,
            };
            match l.kind {
                Kind::Invoke => {
                    if let Some(&o) = open.get(&l.process) {
                        return Err(err(format!(
                            "process {} invokes again while its op at index {} is open",
                            l.process, lines[ops[o].invoke].index
                        )));
                    }
                    open.insert(l.process.clone(), ops.len());
                    op_of[i] = Some(ops.len());
                    ops.push(Op {
                        invoke: i,
                        complete: None,
                    });
                }
                _ => {
                    let o = open.remove(&l.process).ok_or_else(|| {
                        err(format!(
                            "a completion of process {} with no open invoke",
                            l.process
                        ))
                    })?;
                    if lines[ops[o].invoke].f != l.f {
                        return Err(err(format!(
                            "completion `{}` of an invoke `{}`",
                            l.f, lines[ops[o].invoke].f
                        )));
                    }
                    ops[o].complete = Some(i);
                    op_of[i] = Some(o);
                }
            }
        }
        Ok(History { lines, ops, op_of })
    }

    /// The invoke line of the op `line` belongs to (itself for an invoke).
    pub fn invoke_of(&self, line: usize) -> Option<&Line> {
        self.op_of[line].map(|o| &self.lines[self.ops[o].invoke])
    }

    /// Completion lines of client ops, in history order.
    pub fn completions(&self) -> impl Iterator<Item = (usize, &Line)> {
        self.lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.kind != Kind::Invoke && !l.is_nemesis())
    }

    /// The ops whose outcome is unknown: `info`, or never completed.
    pub fn unknown_outcome(&self, op: &Op) -> bool {
        match op.complete {
            None => true,
            Some(c) => self.lines[c].kind == Kind::Info,
        }
    }
}
