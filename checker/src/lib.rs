//! flashgate-checker: reads a fault run's history.jsonl and final.json
//! (docs/faults-history.md) and checks flashgate's promises against them
//! (docs/faults-checker.md), independently of flashgate's and the harness's
//! code.
//!
//! Layout: `history` and `final_state` parse the two files into the
//! checker's own types; `holds` derives when each reservation certainly held
//! units (a lower bound, so unknown outcomes never raise false alarms);
//! `rules/` has one file per promise; `verdict` is the answer (verdict.json);
//! `plot` draws the run (plot.svg).

pub mod final_state;
pub mod history;
pub mod holds;
pub mod plot;
pub mod rules;
pub mod verdict;

use std::fmt;
use std::path::Path;

pub use final_state::Final;
pub use history::History;
pub use verdict::{RuleResult, Status, Verdict};

/// Check a parsed history against the final state.
pub fn check(h: &History, fin: &Final) -> Verdict {
    Verdict::new(rules::check_all(h, fin), h.lines.len())
}

#[derive(Debug)]
pub enum Error {
    Io(String, std::io::Error),
    History(history::FormatError),
    Final(serde_json::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(path, e) => write!(f, "{path}: {e}"),
            Error::History(e) => e.fmt(f),
            Error::Final(e) => write!(f, "final.json: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// Read `<dir>/history.jsonl` and `<dir>/final.json`.
pub fn load(dir: &Path) -> Result<(History, Final), Error> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).map_err(|e| Error::Io(p.display().to_string(), e))
    };
    let h = History::parse(&read("history.jsonl")?).map_err(Error::History)?;
    let fin = serde_json::from_str(&read("final.json")?).map_err(Error::Final)?;
    Ok((h, fin))
}

/// Check a run directory and write verdict.json and plot.svg into it.
pub fn check_dir(dir: &Path) -> Result<Verdict, Error> {
    let (h, fin) = load(dir)?;
    let verdict = check(&h, &fin);
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| Error::Io(p.display().to_string(), e))
    };
    let json = serde_json::to_string_pretty(&verdict).map_err(Error::Final)?;
    write("verdict.json", json + "\n")?;
    write("plot.svg", plot::svg(&h, &fin))?;
    Ok(verdict)
}
