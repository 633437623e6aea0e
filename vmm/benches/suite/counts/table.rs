//! The counts as tables: Markdown for `performance.md`, text for the terminal.

use super::*;

fn format_count(v: f64) -> String {
    if v.is_nan() {
        return "-".into();
    }
    if v != v.trunc() && v.abs() < 100.0 {
        return format!("{v:.2}");
    }
    // Formatting a rounded float prints its integer digits exactly.
    let s = format!("{:.0}", v.abs().round());
    let negative = v < 0.0;
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if negative {
        format!("-{out}")
    } else {
        out
    }
}

/// A byte count in binary units.
fn format_bytes(v: f64) -> String {
    if v <= 0.0 {
        return "0".into();
    }
    let (d, u) = [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (1024, "KiB")]
        .into_iter()
        .find(|(d, _)| v >= *d as f64)
        .unwrap_or((1, "B"));
    let x = v / d as f64;
    if x == x.trunc() {
        format!("{x:.0} {u}")
    } else {
        format!("{x:.1} {u}")
    }
}

fn cell(key: &str, v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if key.starts_with("bytes") => format_bytes(v),
        Some(v) => format_count(v),
    }
}

/// The counts as a Markdown table: one line per operation, then per unit for chains.
pub fn markdown(rows: &[CountRow]) -> String {
    let mut out = String::new();
    let _ = write!(out, "| operation | path |");
    for (_, h) in COLUMNS {
        let _ = write!(out, " {h} |");
    }
    let _ = writeln!(out);
    let _ = write!(out, "|---|---|");
    for _ in COLUMNS {
        let _ = write!(out, "--:|");
    }
    let _ = writeln!(out);
    for r in rows {
        let _ = write!(out, "| {} | {} |", r.label, r.path);
        for (k, _) in COLUMNS {
            let _ = write!(out, " {} |", cell(k, r.get(k)));
        }
        let _ = writeln!(out);
        if r.units > 1 && r.values.iter().any(Option::is_some) {
            let _ = write!(out, "| ↳ per {} | |", unit_name(r));
            for (k, _) in COLUMNS {
                let _ = write!(out, " {} |", cell(k, r.per_unit(k)));
            }
            let _ = writeln!(out);
        }
    }
    out
}

fn unit_name(r: &CountRow) -> &'static str {
    if r.path == "base" {
        "request"
    } else {
        "extent"
    }
}

/// The counts as printed: one block per operation.
pub fn text(rows: &[CountRow]) -> String {
    let mut out = String::new();
    let w = COLUMNS.iter().map(|c| c.1.len()).max().unwrap_or(10);
    for r in rows {
        let _ = writeln!(out, "{} [{}]", r.label, r.path);
        if r.values.iter().all(Option::is_none) {
            let _ = writeln!(out, "    not measured: {}", r.note);
            continue;
        }
        for (k, h) in COLUMNS {
            let per = if r.units > 1 {
                format!("  ({} per {})", cell(k, r.per_unit(k)), unit_name(r))
            } else {
                String::new()
            };
            let _ = writeln!(out, "    {h:<w$}  {:>16}{per}", cell(k, r.get(k)));
        }
    }
    out
}
