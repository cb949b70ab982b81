//! The run's PNG: answers/s by outcome, p99 latency and available stock per
//! bucket over the wave and the sold-out phase.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::sale::StockPoint;
use crate::stats::Bucket;

/// Register a TTF for labels; false (and a chart without text) if unreadable.
pub fn load_font(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
}

const SERIES: [(&str, RGBColor); 7] = [
    ("held_201", RGBColor(0x1b, 0x9e, 0x77)),
    ("sold_out_409", RGBColor(0xd9, 0x5f, 0x02)),
    ("rate_limited_429", RGBColor(0x75, 0x70, 0xb3)),
    ("replayed_200", RGBColor(0xe7, 0x29, 0x8a)),
    ("unavailable_503", RGBColor(0xe6, 0xab, 0x02)),
    ("timeout", RGBColor(0x66, 0x66, 0x66)),
    ("purchase_limit_409", RGBColor(0xa6, 0x76, 0x1d)),
];

/// `buckets` start at their `start_ms`; `marks` are (t in s, label) lines, e.g.
/// the start of the sold-out phase.
pub fn draw(
    path: &Path,
    title: &str,
    buckets: &[Bucket],
    stock: &[StockPoint],
    marks: &[(f64, &str)],
    text: bool,
) -> anyhow::Result<()> {
    let e = |e: &dyn std::fmt::Display| anyhow!("chart: {e}");
    let root = BitMapBackend::new(path, (1200, 960)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = if text {
        root.titled(title, ("sans-serif", 22)).map_err(|x| e(&x))?
    } else {
        root
    };
    let panels = root.split_evenly((3, 1));
    let secs = |ms: u64| ms as f64 / 1000.0;
    let x_max = buckets
        .last()
        .map_or(1.0, |b| secs(b.start_ms) + 0.1)
        .max(0.1);
    let (label_x, label_y) = if text { (35, 70) } else { (0, 0) };

    // 1. Answers per second by outcome.
    let y_max = buckets.iter().map(|b| b.total_per_sec).fold(1.0, f64::max) * 1.1;
    let mut c = ChartBuilder::on(&panels[0])
        .margin(12)
        .x_label_area_size(label_x)
        .y_label_area_size(label_y)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|x| e(&x))?;
    let mut mesh = c.configure_mesh();
    if text {
        mesh.x_desc("seconds since T0")
            .y_desc("answers/s (100 ms buckets)");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|x| e(&x))?;
    for (label, color) in SERIES {
        if !buckets
            .iter()
            .any(|b| b.per_sec.get(label).copied().unwrap_or(0.0) > 0.0)
        {
            continue;
        }
        let pts = buckets.iter().map(|b| {
            (
                secs(b.start_ms),
                b.per_sec.get(label).copied().unwrap_or(0.0),
            )
        });
        let s = c
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|x| e(&x))?;
        if text {
            s.label(label).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
    }
    for &(t, label) in marks {
        c.draw_series(LineSeries::new(
            [(t, 0.0), (t, y_max)],
            BLACK.stroke_width(1),
        ))
        .map_err(|x| e(&x))?;
        if text {
            c.draw_series(std::iter::once(Text::new(
                format!(" {label}"),
                (t, y_max * 0.97),
                ("sans-serif", 14),
            )))
            .map_err(|x| e(&x))?;
        }
    }
    if text {
        c.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|x| e(&x))?;
    }

    // 2. p99 latency of the answers in each bucket.
    let p_max = buckets.iter().map(|b| b.p99_ms).fold(1.0, f64::max) * 1.1;
    let mut c = ChartBuilder::on(&panels[1])
        .margin(12)
        .x_label_area_size(label_x)
        .y_label_area_size(label_y)
        .build_cartesian_2d(0.0..x_max, 0.0..p_max)
        .map_err(|x| e(&x))?;
    let mut mesh = c.configure_mesh();
    if text {
        mesh.x_desc("seconds since T0").y_desc("p99 latency, ms");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|x| e(&x))?;
    // One line per run of buckets with answers, so idle gaps stay gaps.
    for run in buckets
        .split(|b| b.total_per_sec == 0.0)
        .filter(|r| !r.is_empty())
    {
        let pts = run.iter().map(|b| (secs(b.start_ms), b.p99_ms));
        c.draw_series(LineSeries::new(pts, RED.stroke_width(2)))
            .map_err(|x| e(&x))?;
    }

    // 3. Available stock as the monitor saw it.
    let s_max = stock
        .iter()
        .map(|p| p.available.max(p.held) as f64)
        .fold(1.0, f64::max)
        * 1.1;
    let mut c = ChartBuilder::on(&panels[2])
        .margin(12)
        .x_label_area_size(label_x)
        .y_label_area_size(label_y)
        .build_cartesian_2d(0.0..x_max, 0.0..s_max)
        .map_err(|x| e(&x))?;
    let mut mesh = c.configure_mesh();
    if text {
        mesh.x_desc("seconds since T0")
            .y_desc("units (GET /v1/skus)");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|x| e(&x))?;
    for (label, color, f) in [
        (
            "available",
            BLUE,
            (|p: &StockPoint| p.available) as fn(&StockPoint) -> i64,
        ),
        ("held", GREEN, |p: &StockPoint| p.held),
    ] {
        let pts = stock
            .iter()
            .filter(|p| p.t_ms / 1000.0 <= x_max)
            .map(|p| (p.t_ms / 1000.0, f(p) as f64));
        let s = c
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|x| e(&x))?;
        if text {
            s.label(label).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
    }
    if text {
        c.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
