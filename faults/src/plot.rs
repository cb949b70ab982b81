//! `timeline.svg`: completions per second (ok, fail, info) over the sale
//! (not the resolve phase), the nemesis windows shaded. Plain SVG written by hand, from the history
//! file alone.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

/// Per-second counts and the fault windows of a history.
#[derive(Debug, Default, PartialEq)]
pub struct Timeline {
    /// second -> [ok, fail, info]
    pub counts: Vec<[u32; 3]>,
    /// (fault, start ms, stop ms)
    pub windows: Vec<(String, f64, f64)>,
}

pub fn timeline(history: &str) -> Timeline {
    let mut t = Timeline::default();
    let mut open: BTreeMap<String, f64> = BTreeMap::new();
    let mut last = 0.0f64;
    for line in history.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let ms = v["time_ms"].as_f64().unwrap_or(0.0);
        last = last.max(ms);
        if v["process"] == "nemesis" {
            let fault = v["value"]["fault"].as_str().unwrap_or("?").to_owned();
            if v["f"] == "start" {
                open.insert(fault, ms);
            } else if let Some(start) = open.remove(&fault) {
                t.windows.push((fault, start, ms));
            }
            continue;
        }
        // the resolve phase's reads are not the sale
        if v["value"]["phase"] == "resolve" {
            continue;
        }
        let slot = match v["type"].as_str() {
            Some("ok") => 0,
            Some("fail") => 1,
            Some("info") => 2,
            _ => continue,
        };
        let sec = (ms / 1000.0) as usize;
        if t.counts.len() <= sec {
            t.counts.resize(sec + 1, [0; 3]);
        }
        t.counts[sec][slot] += 1;
    }
    for (fault, start) in open {
        t.windows.push((fault, start, last));
    }
    t
}

pub fn svg(t: &Timeline, title: &str) -> String {
    let (w, h, left, top, bottom) = (1000.0, 360.0, 50.0, 30.0, 40.0);
    let secs = t.counts.len().max(1) as f64;
    let peak = t
        .counts
        .iter()
        .flat_map(|c| c.iter())
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |s: f64| left + (w - left - 10.0) * s / secs;
    let y = |n: f64| top + (h - top - bottom) * (1.0 - n / peak);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{left}" y="18">{title}: completions per second, fault windows shaded</text>"#
    );
    for (fault, a, b) in &t.windows {
        let (xa, xb) = (x(a / 1000.0), x(b / 1000.0));
        let _ = write!(
            out,
            r##"<rect x="{xa:.1}" y="{top}" width="{:.1}" height="{:.1}" fill="#f4a261" fill-opacity="0.3"><title>{fault}</title></rect>"##,
            (xb - xa).max(1.0),
            h - top - bottom
        );
    }
    for (slot, (name, colour)) in [("ok", "#2a9d8f"), ("fail", "#264653"), ("info", "#e63946")]
        .iter()
        .enumerate()
    {
        let points: Vec<String> = t
            .counts
            .iter()
            .enumerate()
            .map(|(s, c)| format!("{:.1},{:.1}", x(s as f64 + 0.5), y(f64::from(c[slot]))))
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/><text x="{}" y="{}" fill="{colour}">{name}</text>"#,
            points.join(" "),
            w - 60.0,
            top + 15.0 * (slot as f64 + 1.0)
        );
    }
    let _ = write!(
        out,
        r#"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/><text x="{left}" y="{2}">0 s</text><text x="{3}" y="{2}">{secs} s</text><text x="5" y="{top}">{peak}</text></svg>"#,
        h - bottom,
        w - 10.0,
        h - bottom + 15.0,
        w - 50.0
    );
    out
}

/// Write `timeline.svg` beside the run's history.
pub fn write(run_dir: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(run_dir.join("history.jsonl"))?;
    let title = run_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("run");
    std::fs::write(run_dir.join("timeline.svg"), svg(&timeline(&text), title))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_are_counted_per_second_and_windows_paired() {
        let h = [
            r#"{"index":0,"time_ms":10.0,"process":1,"type":"invoke","f":"reserve","value":{}}"#,
            r#"{"index":1,"time_ms":20.0,"process":1,"type":"ok","f":"reserve","value":{}}"#,
            r#"{"index":2,"time_ms":1500.0,"process":"nemesis","type":"info","f":"start","value":{"fault":"redis-kill"}}"#,
            r#"{"index":3,"time_ms":1600.0,"process":1,"type":"info","f":"reserve","value":{}}"#,
            r#"{"index":4,"time_ms":2500.0,"process":"nemesis","type":"info","f":"stop","value":{"fault":"redis-kill"}}"#,
            r#"{"index":5,"time_ms":2600.0,"process":2,"type":"fail","f":"confirm","value":{}}"#,
            r#"{"index":6,"time_ms":3600.0,"process":12,"type":"ok","f":"get_ticket","value":{"phase":"resolve"}}"#,
        ]
        .join("\n");
        let t = timeline(&h);
        assert_eq!(t.counts, vec![[1, 0, 0], [0, 0, 1], [0, 1, 0]]);
        assert_eq!(t.windows, vec![("redis-kill".to_owned(), 1500.0, 2500.0)]);
        let s = svg(&t, "x");
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert!(s.contains("<title>redis-kill</title>"));
    }
}
