//! plot.svg: the run on one page, hand-written SVG (no plotting crate).
//! One panel per client op with its ok / fail / info completions per second,
//! one per SKU with the units certainly held, sold and both (holds.rs)
//! against the stock, and every nemesis window (start..stop per fault)
//! shaded and labelled.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::final_state::Final;
use crate::history::{History, Kind};
use crate::holds;

const W: f64 = 1000.0;
const LEFT: f64 = 120.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const PANEL: f64 = 80.0;
const GAP: f64 = 18.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Nemesis windows: (fault, start ms, stop ms), a start without a stop open to the end.
pub fn windows(h: &History, end_ms: f64) -> Vec<(String, f64, f64)> {
    let mut open: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut out = Vec::new();
    for l in h.lines.iter().filter(|l| l.is_nemesis()) {
        let fault = l.value_str("fault").unwrap_or("fault").to_string();
        match l.f.as_str() {
            "start" => open.entry(fault).or_default().push(l.time_ms),
            "stop" => {
                let start = open
                    .get_mut(&fault)
                    .and_then(|v| (!v.is_empty()).then(|| v.remove(0)));
                if let Some(s) = start {
                    out.push((fault, s, l.time_ms));
                }
            }
            _ => {}
        }
    }
    for (fault, starts) in open {
        out.extend(starts.into_iter().map(|s| (fault.clone(), s, end_ms)));
    }
    out.sort_by(|a, b| a.1.total_cmp(&b.1));
    out
}

fn polyline(out: &mut String, pts: &[(f64, f64)], color: &str, dash: bool) {
    if pts.is_empty() {
        return;
    }
    let d: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = writeln!(
        out,
        r#"<polyline fill="none" stroke="{color}" stroke-width="1.5"{} points="{}"/>"#,
        if dash {
            r#" stroke-dasharray="4 3""#
        } else {
            ""
        },
        d.join(" ")
    );
}

pub fn svg(h: &History, fin: &Final) -> String {
    let last_ms = h.lines.last().map_or(0.0, |l| l.time_ms).max(0.0);
    let seconds = ((last_ms / 1000.0).floor() as usize + 1).min(1_000_000);
    // the time axis covers whole seconds, so every per-second bucket has its place
    let end_ms = seconds as f64 * 1000.0;
    // op -> kind -> per-second counts
    let mut counts: BTreeMap<&str, [Vec<u64>; 3]> = BTreeMap::new();
    for (_, l) in h.completions() {
        let slot = match l.kind {
            Kind::Ok => 0,
            Kind::Fail => 1,
            _ => 2,
        };
        let sec = ((l.time_ms / 1000.0).floor().max(0.0) as usize).min(seconds - 1);
        let c = counts
            .entry(l.f.as_str())
            .or_insert_with(|| std::array::from_fn(|_| vec![0; seconds]));
        c[slot][sec] += 1;
    }
    let units = unit_panels(h, fin, end_ms);
    let panels = counts.len() + units.len();
    let height = TOP + panels as f64 * (PANEL + GAP) + 40.0;
    let x = |ms: f64| LEFT + (ms / end_ms).clamp(0.0, 1.0) * (W - LEFT - RIGHT);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height:.0}" viewBox="0 0 {W} {height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r##"<text x="8" y="14" font-size="13">flashgate fault run</text><text x="150" y="14"><tspan fill="#2a2">ok</tspan> · <tspan fill="#e80">fail</tspan> · <tspan fill="#d22">info</tspan> completions per second; units certainly <tspan fill="#27c">held</tspan>, <tspan fill="#82c">sold</tspan> and <tspan fill="#222">both</tspan> against the stock (dashed); faults shaded</text>"##
    );
    // nemesis windows behind everything
    let bottom = TOP + panels as f64 * (PANEL + GAP);
    for (n, (fault, s, e)) in windows(h, end_ms).iter().enumerate() {
        let (x0, x1) = (x(*s), x(*e).max(x(*s) + 1.0));
        let _ = writeln!(
            out,
            r##"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="#999" fill-opacity="0.18"><title>{} {:.0}..{:.0} ms</title></rect>"##,
            x1 - x0,
            bottom - TOP,
            esc(fault),
            s,
            e
        );
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" fill="#555">{}</text>"##,
            x0 + 2.0,
            TOP - 4.0 - (n % 2) as f64 * 11.0,
            esc(fault)
        );
    }
    let axis = |out: &mut String, top: f64, label: &str, max: f64| {
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{top:.1}" width="{:.1}" height="{PANEL}" fill="none" stroke="#ccc"/>"##,
            W - LEFT - RIGHT
        );
        let _ = writeln!(
            out,
            r#"<text x="8" y="{:.1}">{}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{max:.0}</text>"#,
            top + PANEL / 2.0,
            esc(label),
            LEFT - 4.0,
            top + 10.0
        );
    };
    let colors = ["#2a2", "#e80", "#d22"];
    for (p, (op, series)) in counts.iter().enumerate() {
        let top = TOP + p as f64 * (PANEL + GAP);
        let max = series
            .iter()
            .flat_map(|s| s.iter())
            .copied()
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        axis(&mut out, top, &format!("{op} /s"), max);
        for (k, s) in series.iter().enumerate() {
            let pts: Vec<(f64, f64)> = s
                .iter()
                .enumerate()
                .map(|(sec, &c)| {
                    (
                        x(sec as f64 * 1000.0 + 500.0),
                        top + PANEL - c as f64 / max * PANEL,
                    )
                })
                .collect();
            if s.iter().any(|&c| c > 0) {
                polyline(&mut out, &pts, colors[k], false);
            }
        }
    }
    // units held and sold over time, as step lines, one panel per SKU
    for (n, u) in units.iter().enumerate() {
        let top = TOP + (counts.len() + n) as f64 * (PANEL + GAP);
        let max = u
            .taken
            .iter()
            .map(|p| p.1)
            .chain([u.stock, 1])
            .max()
            .unwrap_or(1) as f64;
        axis(&mut out, top, &u.label, max);
        let y = |v: i64| top + PANEL - v as f64 / max * PANEL;
        if u.stock > 0 {
            polyline(
                &mut out,
                &[(x(0.0), y(u.stock)), (x(end_ms), y(u.stock))],
                "#555",
                true,
            );
        }
        for (pts, color) in [(&u.held, "#27c"), (&u.sold, "#82c"), (&u.taken, "#222")] {
            let p: Vec<(f64, f64)> = pts.iter().map(|&(t, v)| (x(t), y(v))).collect();
            polyline(&mut out, &p, color, false);
        }
    }
    // time axis
    let base = bottom + 4.0;
    let step = (seconds / 10).max(1);
    for sec in (0..=seconds).step_by(step) {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{sec} s</text>"#,
            x(sec as f64 * 1000.0),
            base + 10.0
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Past this many SKUs the units are drawn summed over all of them.
const MAX_SKU_PANELS: usize = 6;

struct Units {
    label: String,
    stock: i64,
    /// Step points (time ms, units).
    held: Vec<(f64, i64)>,
    sold: Vec<(f64, i64)>,
    /// held + sold: what no_oversell holds against the stock
    taken: Vec<(f64, i64)>,
}

fn unit_panels(h: &History, fin: &Final, end_ms: f64) -> Vec<Units> {
    let spans = holds::spans(h, fin);
    let mut skus: BTreeMap<&str, i64> = fin
        .skus
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.initial.unwrap_or(0)))
        .collect();
    for s in &spans {
        skus.entry(s.sku.as_str()).or_insert(0);
    }
    let all = skus.len() > MAX_SKU_PANELS;
    let groups: Vec<(String, i64, Vec<&str>)> = if all {
        vec![(
            "units (all SKUs)".into(),
            skus.values().sum(),
            skus.keys().copied().collect(),
        )]
    } else {
        skus.iter()
            .map(|(k, &stock)| (format!("units {k}"), stock, vec![*k]))
            .collect()
    };
    groups
        .into_iter()
        .map(|(label, stock, members)| {
            let mut held: Vec<(f64, i64)> = Vec::new();
            let mut sold: Vec<(f64, i64)> = Vec::new();
            for s in spans.iter().filter(|s| members.contains(&s.sku.as_str())) {
                let held_end = s.sold_from.map_or(s.held_until, |(t, _)| t).max(s.start);
                if held_end > s.start {
                    held.push((s.start, s.qty));
                    held.push((held_end, -s.qty));
                }
                if let Some((t, _)) = s.sold_from {
                    sold.push((t, s.qty));
                }
            }
            let taken = held.iter().chain(sold.iter()).copied().collect();
            Units {
                label,
                stock,
                held: steps(held, end_ms),
                sold: steps(sold, end_ms),
                taken: steps(taken, end_ms),
            }
        })
        .collect()
}

/// A step line through the running sum of (time, change) events.
fn steps(mut ev: Vec<(f64, i64)>, end_ms: f64) -> Vec<(f64, i64)> {
    ev.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut v = 0i64;
    let mut pts = vec![(0.0, 0i64)];
    for (t, d) in ev {
        pts.push((t, v));
        v += d;
        pts.push((t, v));
    }
    pts.push((end_ms, v));
    pts
}
