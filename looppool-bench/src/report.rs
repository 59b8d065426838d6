//! Result rows: a readable table, or one JSON object per line.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::stats::Summary;

/// What a row's ratio (value / limit) must be for its target to be met.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// Higher is better: ratio ≥ this.
    AtLeast(f64),
    /// Lower is better: ratio ≤ this.
    AtMost(f64),
}

impl Target {
    fn met(self, ratio: f64) -> bool {
        match self {
            Target::AtLeast(t) => ratio >= t,
            Target::AtMost(t) => ratio <= t,
        }
    }

    fn text(self) -> String {
        match self {
            Target::AtLeast(t) => format!(">= {t}"),
            Target::AtMost(t) => format!("<= {t}"),
        }
    }
}

/// One measured figure: the median of its repetitions, and how it compares
/// with its limit.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    /// Which measurement (`W1`, `W2-p50`, `raw-echo-1pair`, ...).
    pub(crate) workload: String,
    /// The median over `runs` repetitions.
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
    /// The figure the value is compared with, in the same unit.
    pub(crate) limit: Option<f64>,
    /// What that figure is (another row's `workload`, or `ideal`).
    pub(crate) limit_of: Option<String>,
    /// `value / limit`.
    pub(crate) ratio: Option<f64>,
    /// The ratio's target, as text (`>= 0.15`, `<= 2`).
    pub(crate) target: Option<String>,
    /// Whether the target is met; null for a row without a target.
    pub(crate) target_met: Option<bool>,
    pub(crate) runs: usize,
    pub(crate) min: f64,
    pub(crate) max: f64,
    /// Anything else worth keeping (diagnostics, parameters).
    #[serde(flatten)]
    pub(crate) extra: Map<String, Value>,
}

impl Row {
    /// A row with no limit.
    pub(crate) fn new(workload: impl Into<String>, s: Summary, unit: &'static str) -> Row {
        Row {
            workload: workload.into(),
            value: s.median,
            unit,
            limit: None,
            limit_of: None,
            ratio: None,
            target: None,
            target_met: None,
            runs: s.runs,
            min: s.min,
            max: s.max,
            extra: Map::new(),
        }
    }

    /// Compares with `limit` (named `of`), without a target.
    pub(crate) fn vs(mut self, of: impl Into<String>, limit: f64) -> Row {
        self.limit = Some(limit);
        self.limit_of = Some(of.into());
        self.ratio = Some(self.value / limit);
        self
    }

    /// Compares with `limit` (named `of`) and judges the ratio by `target`.
    pub(crate) fn target(self, of: impl Into<String>, limit: f64, target: Target) -> Row {
        let mut row = self.vs(of, limit);
        let ratio = row.ratio.unwrap_or(f64::NAN);
        row.target = Some(target.text());
        row.target_met = Some(target.met(ratio));
        row
    }

    /// Adds a diagnostic field.
    pub(crate) fn with(mut self, key: &str, value: impl Into<Value>) -> Row {
        self.extra.insert(key.into(), value.into());
        self
    }
}

/// A number in a few significant digits, with a unit-free suffix for big ones.
pub(crate) fn num(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "-".into()
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), num)
}

/// The rows as a table for people.
pub(crate) fn table(rows: &[Row]) -> String {
    let head = [
        "workload", "value", "unit", "min-max", "limit", "limit of", "ratio", "target", "met",
    ];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.workload.clone(),
                num(r.value),
                r.unit.into(),
                if r.runs > 1 {
                    format!("{}-{} (n={})", num(r.min), num(r.max), r.runs)
                } else {
                    "-".into()
                },
                opt(r.limit),
                r.limit_of.clone().unwrap_or_else(|| "-".into()),
                r.ratio.map_or_else(|| "-".into(), |x| format!("{x:.3}")),
                r.target.clone().unwrap_or_else(|| "-".into()),
                match r.target_met {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in row.iter().zip(width).enumerate() {
            // Text left, numbers right.
            if matches!(i, 0 | 2 | 5 | 7) {
                s.push_str(&format!("{c:<w$}  "));
            } else {
                s.push_str(&format!("{c:>w$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(&head.map(String::from));
    out.push_str(&line(&width.map(|w| "-".repeat(w))));
    for row in &cells {
        out.push_str(&line(row));
    }
    out
}

/// One row as a JSON line.
pub(crate) fn json_line(row: &Row) -> String {
    serde_json::to_string(row).expect("rows serialize")
}

/// Prints a timestamped progress line on stderr (the rows go to stdout).
pub(crate) fn progress(what: &str) {
    eprintln!("[{}] {what}", crate::sys::utc_now());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(v: f64) -> Summary {
        Summary::of(&[v])
    }

    #[test]
    fn targets_judge_the_ratio() {
        let fast =
            Row::new("W1", summary(15.0), "tasks/s").target("raw", 100.0, Target::AtLeast(0.15));
        assert_eq!(fast.ratio, Some(0.15));
        assert_eq!(fast.target_met, Some(true));
        let slow = Row::new("W2", summary(50.0), "us").target("raw", 20.0, Target::AtMost(2.0));
        assert_eq!(slow.target_met, Some(false));
    }

    #[test]
    fn json_rows_carry_the_required_fields() {
        let row = Row::new("W3", summary(0.51), "s")
            .target("ideal", 0.5, Target::AtMost(1.05))
            .with("n", 20_000);
        let v: Value = serde_json::from_str(&json_line(&row)).unwrap();
        for key in ["workload", "value", "unit", "limit", "ratio", "target_met"] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        assert_eq!(v["target_met"], Value::Bool(true));
        assert_eq!(v["n"], 20_000);
        let info: Value =
            serde_json::from_str(&json_line(&Row::new("rss", summary(1.0), "MiB"))).unwrap();
        assert!(info["target_met"].is_null() && info["limit"].is_null());
    }

    #[test]
    fn the_table_lines_up() {
        let rows = [
            Row::new("raw-echo-1pair", summary(8.5e7), "frames/s"),
            Row::new("W1", summary(1.2e7), "tasks/s").target(
                "raw-echo-1pair",
                8.5e7,
                Target::AtLeast(0.15),
            ),
        ];
        let t = table(&rows);
        let widths: Vec<usize> = t.lines().take(2).map(|l| l.chars().count()).collect();
        assert_eq!(widths[0], widths[1], "{t}");
        assert!(t.contains("NO"));
    }
}
