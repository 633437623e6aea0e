//! The report's chart, as a hand-written SVG: hot-add and release latency against extent size,
//! and the per-extent cost against the number of extents present (log-log, min-max bars).

use super::report::Report;
use std::fmt::Write as _;

/// One point: x, median, min, max, extrapolated.
type Point = (f64, f64, f64, f64, bool);

struct Series {
    name: String,
    color: &'static str,
    points: Vec<Point>,
}

struct Panel<'a> {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    title: &'a str,
    xlabel: &'a str,
    xticks: Vec<(f64, String)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn draw(out: &mut String, p: &Panel<'_>, series: &[Series]) {
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().flat_map(|q| [q.2, q.3]))
        .filter(|v| *v > 0.0 && v.is_finite())
        .collect();
    let (lo, hi) = if ys.is_empty() {
        (-6.0, 1.0)
    } else {
        let lo = ys.iter().copied().fold(f64::INFINITY, f64::min).log10().floor();
        let hi = ys
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
            .log10()
            .ceil();
        (lo, if hi > lo { hi } else { lo + 1.0 })
    };
    let xs: Vec<f64> = p.xticks.iter().map(|t| t.0.log10()).collect();
    let (xlo, xhi) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let pad = 0.06 * (xhi - xlo).max(1e-9);
    let px = |x: f64| p.x + (x.log10() - xlo + pad) / (xhi - xlo + 2.0 * pad) * p.w;
    let py = |y: f64| p.y + p.h - (y.log10() - lo) / (hi - lo) * p.h;
    let _ = writeln!(
        out,
        r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#444"/>"##,
        p.x, p.y, p.w, p.h
    );
    let _ = writeln!(
        out,
        r##"<text x="{:.1}" y="{:.1}" font-size="14" text-anchor="middle" font-weight="bold">{}</text>"##,
        p.x + p.w / 2.0,
        p.y - 10.0,
        esc(p.title)
    );
    let mut d = lo;
    while d <= hi + 1e-9 {
        let y = p.y + p.h - (d - lo) / (hi - lo) * p.h;
        let label = match d {
            d if d <= -6.0 => format!("{:.0} µs", 10f64.powf(d + 6.0)),
            d if d < -3.0 => format!("{:.0} µs", 10f64.powf(d + 6.0)),
            d if d < 0.0 => format!("{:.0} ms", 10f64.powf(d + 3.0)),
            d => format!("{:.0} s", 10f64.powf(d)),
        };
        let _ = writeln!(
            out,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{label}</text>"##,
            p.x,
            p.x + p.w,
            p.x - 5.0,
            y + 4.0
        );
        d += 1.0;
    }
    for (v, label) in &p.xticks {
        let x = px(*v);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            p.y,
            p.y + p.h,
            p.y + p.h + 15.0,
            esc(label)
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"##,
        p.x + p.w / 2.0,
        p.y + p.h + 32.0,
        esc(p.xlabel)
    );
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = s.points.iter().map(|q| (px(q.0), py(q.1))).collect();
        if pts.len() > 1 {
            let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                out,
                r##"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"##,
                path.join(" "),
                s.color
            );
        }
        for q in &s.points {
            let (x, y) = (px(q.0), py(q.1));
            if q.3 > q.2 {
                let _ = writeln!(
                    out,
                    r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{}"/>"##,
                    py(q.2),
                    py(q.3),
                    s.color
                );
            }
            let fill = if q.4 { "white" } else { s.color };
            let _ = writeln!(
                out,
                r##"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{fill}" stroke="{}" stroke-width="2"/>"##,
                s.color
            );
        }
        let ly = p.y + 16.0 + 16.0 * i as f64;
        let _ = writeln!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="12" height="4" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"##,
            p.x + 10.0,
            ly - 4.0,
            s.color,
            p.x + 27.0,
            ly,
            esc(&s.name)
        );
    }
}

fn series(report: &Report, name: &str, color: &'static str, ids: &[(f64, String)]) -> Series {
    let points = ids
        .iter()
        .filter_map(|(x, id)| {
            let r = report.get(id)?;
            let s = r.stat.as_ref()?;
            (s.median > 0.0).then_some((*x, s.median, s.min, s.max, r.estimated))
        })
        .collect();
    Series {
        name: name.into(),
        color,
        points,
    }
}

/// The chart of `report` as an SVG document.
pub fn svg(report: &Report, sizes: &[(u64, &str)], levels: &[u64]) -> String {
    let mut out = String::new();
    let (w, h) = (1000.0, 440.0);
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif">"##
    );
    let _ = writeln!(out, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let xt: Vec<(f64, String)> = sizes.iter().map(|(s, l)| (*s as f64, (*l).to_string())).collect();
    let ids = |prefix: &str| -> Vec<(f64, String)> {
        sizes
            .iter()
            .map(|(s, l)| (*s as f64, format!("{prefix}.{l}")))
            .collect()
    };
    let left = [
        series(report, "(a) tagged hot-add", "#1f77b4", &ids("hotadd.tagged")),
        series(report, "(b) base virtio-mem plug", "#d62728", &ids("hotadd.base")),
        series(
            report,
            "(c) floor: mmap + memslot",
            "#2ca02c",
            &ids("hotadd.floor"),
        ),
        series(report, "tagged release", "#9467bd", &ids("release.tagged")),
    ];
    draw(
        &mut out,
        &Panel {
            x: 80.0,
            y: 40.0,
            w: 480.0,
            h: 340.0,
            title: "Hot-add and release latency vs extent size",
            xlabel: "extent size (hollow: extrapolated)",
            xticks: xt,
        },
        &left,
    );
    let lt: Vec<(f64, String)> = levels.iter().map(|n| (*n as f64, n.to_string())).collect();
    let lids: Vec<(f64, String)> = levels
        .iter()
        .map(|n| (*n as f64, format!("scale.present.{n}")))
        .collect();
    let right = [series(report, "one more 2 MiB extent", "#1f77b4", &lids)];
    draw(
        &mut out,
        &Panel {
            x: 660.0,
            y: 40.0,
            w: 300.0,
            h: 340.0,
            title: "Per-extent hot-add cost vs extents present",
            xlabel: "extents present",
            xticks: lt,
        },
        &right,
    );
    out.push_str("</svg>\n");
    out
}
