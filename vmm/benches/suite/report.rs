//! Rows of the benchmark's report: statistics, targets, the printed table and the JSON form.

use serde_json::{json, Value};
use std::fmt::Write as _;

/// Median, minimum and maximum of repeated runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Stat {
    /// Median.
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// The samples in the order they were taken (empty for derived values such as ratios).
    pub samples: Vec<f64>,
}

impl Stat {
    /// Statistics of `samples` (at least one).
    pub fn of(samples: &[f64]) -> Stat {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => s[n / 2],
            _ => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        };
        Stat {
            median,
            min: s.first().copied().unwrap_or(f64::NAN),
            max: s.last().copied().unwrap_or(f64::NAN),
            samples: samples.to_vec(),
        }
    }

    /// A single derived value (a ratio or an estimate).
    pub fn derived(v: f64) -> Stat {
        Stat {
            median: v,
            min: v,
            max: v,
            samples: Vec::new(),
        }
    }
}

/// What a row's numbers are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Seconds (printed in µs, ms or s).
    Secs,
    /// Extents per second.
    PerSec,
    /// Bytes per second (printed in MB/s).
    BytesPerSec,
    /// Bytes.
    Bytes,
    /// A count.
    Count,
    /// A dimensionless ratio.
    Ratio,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Secs => "s",
            Unit::PerSec => "1/s",
            Unit::BytesPerSec => "B/s",
            Unit::Bytes => "B",
            Unit::Count => "count",
            Unit::Ratio => "ratio",
        }
    }

    /// `v` formatted for the table.
    pub fn fmt(self, v: f64) -> String {
        if v.is_nan() {
            return "-".into();
        }
        match self {
            Unit::Secs if v < 1e-3 => format!("{:.0} µs", v * 1e6),
            Unit::Secs if v < 1.0 => format!("{:.2} ms", v * 1e3),
            Unit::Secs => format!("{v:.2} s"),
            Unit::PerSec => format!("{v:.0} /s"),
            Unit::BytesPerSec if v < 1e7 => format!("{:.2} MB/s", v / 1e6),
            Unit::BytesPerSec => format!("{:.0} MB/s", v / 1e6),
            Unit::Bytes => format!("{v:.0} B"),
            Unit::Count if v != v.trunc() && v.abs() < 100.0 => format!("{v:.2}"),
            Unit::Count => format!("{v:.0}"),
            Unit::Ratio if v < 10.0 => format!("{v:.2}"),
            Unit::Ratio => format!("{v:.0}"),
        }
    }
}

/// Verdict of a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Meets its target.
    Pass,
    /// Misses its target.
    Miss,
    /// No target: context for other rows.
    Info,
    /// Not measured in this run; the reason says why.
    NotRun(String),
}

/// One line of the report.
#[derive(Clone, Debug)]
pub struct Row {
    /// Stable key (JSON, chart, CI check).
    pub id: String,
    /// What was measured.
    pub label: String,
    /// Unit of the numbers.
    pub unit: Unit,
    /// The numbers, if measured.
    pub stat: Option<Stat>,
    /// The target, as text (e.g. "<= 3").
    pub target: String,
    /// The verdict.
    pub status: Status,
    /// The value is extrapolated from a partial run, not measured whole.
    pub estimated: bool,
    /// How it was measured, or why it was not.
    pub note: String,
}

/// A target a value is held to.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// No target.
    None,
    /// At most this.
    AtMost(f64),
    /// At least this.
    AtLeast(f64),
    /// Exactly this.
    Exactly(f64),
}

impl Target {
    fn text(self, unit: Unit) -> String {
        match self {
            Target::None => String::new(),
            Target::AtMost(v) => format!("<= {}", unit.fmt(v)),
            Target::AtLeast(v) => format!(">= {}", unit.fmt(v)),
            Target::Exactly(v) => format!("= {}", unit.fmt(v)),
        }
    }

    fn judge(self, v: f64) -> Status {
        match self {
            Target::None => Status::Info,
            Target::AtMost(t) if v <= t => Status::Pass,
            Target::AtLeast(t) if v >= t => Status::Pass,
            Target::Exactly(t) if v == t => Status::Pass,
            _ => Status::Miss,
        }
    }
}

/// The whole report.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// `full` or `quick`.
    pub mode: String,
    /// The machine, as `key: value` pairs.
    pub machine: Vec<(String, String)>,
    /// Rows in measurement order.
    pub rows: Vec<Row>,
    /// Wall time of the run, seconds.
    pub wall_secs: f64,
    /// Sample sizes and other parameters worth stating.
    pub params: Vec<(String, String)>,
    /// The hardware-independent counts, per operation.
    pub counts: Vec<super::counts::CountRow>,
    /// How the counts (in particular the host instructions) were taken.
    pub counts_note: String,
}

impl Report {
    /// Adds a measured row, judged against `target` on its median.
    pub fn add(&mut self, id: &str, label: &str, unit: Unit, stat: Stat, target: Target, note: &str) {
        let status = target.judge(stat.median);
        self.rows.push(Row {
            id: id.into(),
            label: label.into(),
            unit,
            target: target.text(unit),
            status,
            stat: Some(stat),
            estimated: false,
            note: note.into(),
        });
    }

    /// Adds a row whose value is extrapolated from a partial run.
    pub fn add_estimate(&mut self, id: &str, label: &str, unit: Unit, v: f64, target: Target, note: &str) {
        self.add(id, label, unit, Stat::derived(v), target, note);
        if let Some(r) = self.rows.last_mut() {
            r.estimated = true;
        }
    }

    /// Adds a row that was not measured in this run.
    pub fn not_run(&mut self, id: &str, label: &str, unit: Unit, target: Target, why: &str) {
        self.rows.push(Row {
            id: id.into(),
            label: label.into(),
            unit,
            stat: None,
            target: target.text(unit),
            status: Status::NotRun(why.into()),
            estimated: false,
            note: why.into(),
        });
    }

    /// The row with key `id`.
    pub fn get(&self, id: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.id == id)
    }

    /// Median of row `id`, if measured.
    pub fn median(&self, id: &str) -> Option<f64> {
        self.get(id).and_then(|r| r.stat.as_ref()).map(|s| s.median)
    }

    /// The table as printed.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let w = self
            .rows
            .iter()
            .map(|r| r.label.chars().count())
            .max()
            .unwrap_or(10)
            .max(10);
        let _ = writeln!(
            out,
            "{:<w$}  {:>12}  {:>12}  {:>12}  {:>3}  {:>12}  status",
            "measurement", "median", "min", "max", "n", "target"
        );
        let _ = writeln!(out, "{}", "-".repeat(w + 80));
        for r in &self.rows {
            let (med, min, max, n) = match &r.stat {
                Some(s) if s.samples.is_empty() => {
                    (r.unit.fmt(s.median), String::new(), String::new(), String::new())
                }
                Some(s) => (
                    r.unit.fmt(s.median),
                    r.unit.fmt(s.min),
                    r.unit.fmt(s.max),
                    s.samples.len().to_string(),
                ),
                None => ("-".into(), String::new(), String::new(), String::new()),
            };
            let status = match (&r.status, r.estimated) {
                (Status::Pass, false) => "PASS".to_string(),
                (Status::Miss, false) => "MISS".to_string(),
                (Status::Pass, true) => "PASS (est.)".to_string(),
                (Status::Miss, true) => "MISS (est.)".to_string(),
                (Status::Info, false) => String::new(),
                (Status::Info, true) => "(est.)".to_string(),
                (Status::NotRun(_), _) => "NOT RUN".to_string(),
            };
            let _ = writeln!(
                out,
                "{:<w$}  {:>12}  {:>12}  {:>12}  {:>3}  {:>12}  {}",
                r.label, med, min, max, n, r.target, status
            );
        }
        out
    }

    /// Notes of rows that missed, were estimated or were not run, one per line.
    pub fn notes(&self) -> String {
        let mut out = String::new();
        for r in &self.rows {
            let flag = matches!(r.status, Status::Miss | Status::NotRun(_)) || r.estimated;
            if flag && !r.note.is_empty() {
                let _ = writeln!(out, "- {}: {}", r.label, r.note);
            }
        }
        out
    }

    /// The raw numbers as JSON.
    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let (status, why) = match &r.status {
                    Status::Pass => ("pass", None),
                    Status::Miss => ("miss", None),
                    Status::Info => ("info", None),
                    Status::NotRun(w) => ("not-run", Some(w.clone())),
                };
                json!({
                    "id": r.id,
                    "label": r.label,
                    "unit": r.unit.name(),
                    "median": r.stat.as_ref().map(|s| s.median),
                    "min": r.stat.as_ref().map(|s| s.min),
                    "max": r.stat.as_ref().map(|s| s.max),
                    "samples": r.stat.as_ref().map(|s| s.samples.clone()),
                    "target": r.target,
                    "status": status,
                    "estimated": r.estimated,
                    "not_run_reason": why,
                    "note": r.note,
                })
            })
            .collect();
        let kv = |v: &[(String, String)]| -> Value {
            Value::Object(
                v.iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            )
        };
        json!({
            "counts_columns": super::counts::COLUMNS.iter().map(|c| c.0).collect::<Vec<_>>(),
            "counts_note": self.counts_note,
            "counts": self.counts,
            "mode": self.mode,
            "wall_seconds": self.wall_secs,
            "machine": kv(&self.machine),
            "parameters": kv(&self.params),
            "rows": rows,
        })
    }
}
