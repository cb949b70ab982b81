//! The checker's answer: one result per rule, and the run's verdict.

use serde::Serialize;

use crate::history::{History, Line};

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Broken,
    NotChecked,
}

/// The history line at which a rule broke.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Culprit {
    pub index: u64,
    pub time_ms: f64,
    pub process: String,
    pub f: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl Culprit {
    pub fn of(line: &Line) -> Culprit {
        Culprit {
            index: line.index,
            time_ms: line.time_ms,
            process: line.process.to_string(),
            f: line.f.clone(),
            kind: line.kind.name().to_string(),
        }
    }

    pub fn at(h: &History, pos: usize) -> Culprit {
        Culprit::of(&h.lines[pos])
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RuleResult {
    pub rule: &'static str,
    pub status: Status,
    /// Broken: what broke. Not checked: why not. Ok: what was checked, or a caveat.
    pub message: String,
    /// Broken: the first history line that broke the rule (None when only
    /// final.json shows it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<Culprit>,
}

impl RuleResult {
    pub fn ok(rule: &'static str, message: impl Into<String>) -> Self {
        RuleResult {
            rule,
            status: Status::Ok,
            message: message.into(),
            first: None,
        }
    }

    pub fn not_checked(rule: &'static str, why: impl Into<String>) -> Self {
        RuleResult {
            rule,
            status: Status::NotChecked,
            message: why.into(),
            first: None,
        }
    }

    pub fn broken(rule: &'static str, first: Option<Culprit>, message: impl Into<String>) -> Self {
        RuleResult {
            rule,
            status: Status::Broken,
            message: message.into(),
            first,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Verdict {
    /// No rule broken (rules not checked do not make a run invalid; they are listed).
    pub valid: bool,
    pub rules: Vec<RuleResult>,
    pub lines: usize,
}

impl Verdict {
    pub fn new(rules: Vec<RuleResult>, lines: usize) -> Verdict {
        Verdict {
            valid: rules.iter().all(|r| r.status != Status::Broken),
            rules,
            lines,
        }
    }

    pub fn rule(&self, name: &str) -> Option<&RuleResult> {
        self.rules.iter().find(|r| r.rule == name)
    }
}
