//! `flashgate-checker <run-dir>`: exit 0 valid, 1 invalid (a rule broken),
//! 2 the run directory could not be read.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use flashgate_checker::{check_dir, Status};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: flashgate-checker <run-dir>   (reads history.jsonl + final.json, writes verdict.json + plot.svg)");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    match check_dir(&dir) {
        Ok(v) => {
            let mut out = std::io::stdout().lock();
            for r in &v.rules {
                let status = match r.status {
                    Status::Ok => "ok",
                    Status::Broken => "BROKEN",
                    Status::NotChecked => "not checked",
                };
                let at = r.first.as_ref().map_or(String::new(), |c| {
                    format!(
                        " [index {} at {:.3} ms, process {}, {} {}]",
                        c.index, c.time_ms, c.process, c.kind, c.f
                    )
                });
                // a closed stdout (`| head`) must not turn a verdict into a panic
                let _ = writeln!(out, "{:<16} {status}{at}: {}", r.rule, r.message);
            }
            let _ = writeln!(out, "valid: {}", v.valid);
            if v.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("flashgate-checker: {e}");
            ExitCode::from(2)
        }
    }
}
