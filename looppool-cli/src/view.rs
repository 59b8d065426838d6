//! Drawing the pools: per pool a block with its totals, a sparkline of its
//! throughput and a row per worker; keys and the last action's outcome at
//! the bottom.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Sparkline, Table, TableState};
use ratatui::Frame;

use std::time::Duration;

use looppool::Histogram;

use crate::model::{PoolView, Times};

/// What the keys act on, and what the last action said.
#[derive(Debug, Default)]
pub(crate) struct Focus {
    /// The pool the keys act on (index into the list).
    pub(crate) pool: usize,
    /// Its worker (row) the keys act on.
    pub(crate) worker: usize,
    /// The line under the pools: the last action's outcome.
    pub(crate) status: String,
    /// Whether to show the key line (not in `--once` frames).
    pub(crate) keys: bool,
}

/// The keys of the live view, as shown.
pub(crate) const KEYS: &str =
    "q quit  tab pool  ↑↓ worker  r recycle worker  R rolling restart  + - resize";

/// Rows a pool takes: borders, totals, times, sparkline, header, workers,
/// error.
pub(crate) fn pool_height(pool: &PoolView) -> u16 {
    let workers = pool.last.as_ref().map_or(0, |(_, s)| s.workers.len());
    (2 + 1 + 1 + 2 + 1 + workers + usize::from(pool.error.is_some())) as u16
}

/// Draws every pool, then the status and key lines.
pub(crate) fn draw(frame: &mut Frame<'_>, pools: &[PoolView], focus: &Focus) {
    let mut constraints: Vec<Constraint> = pools
        .iter()
        .map(|p| Constraint::Length(pool_height(p)))
        .collect();
    if pools.is_empty() {
        constraints.push(Constraint::Length(1));
    }
    constraints.push(Constraint::Min(0));
    constraints.push(Constraint::Length(u16::from(!focus.status.is_empty())));
    constraints.push(Constraint::Length(u16::from(focus.keys)));
    let areas = Layout::vertical(constraints).split(frame.area());
    for (i, pool) in pools.iter().enumerate() {
        let selected = (i == focus.pool).then_some(focus.worker);
        draw_pool(frame, areas[i], pool, selected);
    }
    if pools.is_empty() {
        frame.render_widget(Paragraph::new("no pools found"), areas[0]);
    }
    let n = areas.len();
    frame.render_widget(Paragraph::new(focus.status.as_str()), areas[n - 2]);
    if focus.keys {
        frame.render_widget(Paragraph::new(KEYS), areas[n - 1]);
    }
}

/// One pool's block; `selected` is the worker row to highlight, if the
/// keys act on this pool.
fn draw_pool(frame: &mut Frame<'_>, area: Rect, pool: &PoolView, selected: Option<usize>) {
    let title = match &pool.last {
        Some((_, s)) => format!(
            " {} · pid {} · {} · {} of max {} workers ",
            s.pool,
            s.pid,
            s.state,
            s.workers.len(),
            s.max_workers
        ),
        None => format!(" {} ", pool.name()),
    };
    let mut block = Block::default().borders(Borders::ALL).title(title);
    if selected.is_some() {
        block = block.title_style(Style::default().add_modifier(Modifier::BOLD));
    }
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [totals, times, spark, table, error] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(2),
        Constraint::Min(0),
        Constraint::Length(u16::from(pool.error.is_some())),
    ])
    .areas(inner);
    if let Some(e) = &pool.error {
        frame.render_widget(Paragraph::new(format!("error: {e}")), error);
    }
    let Some((_, s)) = &pool.last else {
        return;
    };
    let rate = pool.rate.map_or("-".into(), |r| format!("{r:.0}"));
    let line = format!(
        "in flight {}  done {} ({rate}/s)  failed {}  lost {}  restarts {}  blocked {}",
        s.in_flight, s.done, s.failed, s.lost, s.restarts, s.blocked
    );
    frame.render_widget(Paragraph::new(line), totals);
    frame.render_widget(Paragraph::new(times_line(pool.times.as_ref())), times);
    let history: Vec<u64> = pool.history.iter().copied().collect();
    // The newest samples, right-aligned as in `top`'s graphs.
    let start = history.len().saturating_sub(usize::from(spark.width));
    frame.render_widget(Sparkline::default().data(&history[start..]), spark);
    draw_workers(frame, table, pool, selected);
}

/// The table of workers.
fn draw_workers(frame: &mut Frame<'_>, area: Rect, pool: &PoolView, selected: Option<usize>) {
    let Some((_, s)) = &pool.last else {
        return;
    };
    let header = Row::new([
        "W", "PID", "STATE", "INFL", "DONE/S", "DONE", "FAIL", "LOST", "RST", "CPU%", "RSS",
        "LOOP%", "LAG", "QW99", "RUN99", "OW99", "REPORT",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = s.workers.iter().enumerate().map(|(i, w)| {
        let rate = pool.worker_rates.get(i).copied().flatten();
        let times = pool.worker_times.get(i).and_then(Option::as_ref);
        let q = |pick: fn(&Times) -> &Histogram, q: f64| quantile(times.map(pick), q);
        Row::new([
            w.index.to_string(),
            w.pid.map_or("-".into(), |p| p.to_string()),
            w.state.as_str().to_owned(),
            w.in_flight.to_string(),
            rate.map_or("-".into(), |r| format!("{r:.0}")),
            w.done.to_string(),
            w.failed.to_string(),
            w.lost.to_string(),
            w.restarts.to_string(),
            w.cpu_percent.map_or("-".into(), |c| format!("{c:.1}")),
            w.rss_bytes.map_or("-".into(), mebibytes),
            w.loop_busy_percent
                .map_or("-".into(), |b| format!("{b:.1}")),
            w.loop_lag_ms
                .map_or("-".into(), |ms| short(Duration::from_secs_f64(ms / 1e3))),
            q(|t| &t.queue_wait, 0.99),
            q(|t| &t.run_time, 0.99),
            q(|t| &t.output_wait, 0.99),
            w.report_age_ms
                .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
        ])
    });
    let widths = [3, 7, 9, 5, 7, 8, 5, 5, 4, 6, 7, 6, 6, 6, 6, 6, 6].map(Constraint::Length);
    let table = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(selected);
    frame.render_stateful_widget(table, area, &mut state);
}

/// The pool's times line: p50 and p99 of each figure over the last
/// interval.
fn times_line(times: Option<&Times>) -> String {
    let pair =
        |h: Option<&Histogram>| format!("p50 {} p99 {}", quantile(h, 0.5), quantile(h, 0.99));
    format!(
        "queue wait {}  run {}  output wait {}",
        pair(times.map(|t| &t.queue_wait)),
        pair(times.map(|t| &t.run_time)),
        pair(times.map(|t| &t.output_wait)),
    )
}

/// Quantile `q` of `h`, as a short duration; `-` when nothing was timed.
fn quantile(h: Option<&Histogram>, q: f64) -> String {
    h.and_then(|h| h.quantile(q)).map_or("-".into(), short)
}

/// A duration in at most 5 characters: `480ns`, `35µs`, `3.4ms`, `51ms`,
/// `1.2s`, `120s`.
pub(crate) fn short(d: Duration) -> String {
    let ns = d.as_nanos();
    let f = d.as_secs_f64();
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.0}µs", f * 1e6)
    } else if ns < 10_000_000 {
        format!("{:.1}ms", f * 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.0}ms", f * 1e3)
    } else if ns < 100_000_000_000 {
        format!("{f:.1}s")
    } else {
        format!("{f:.0}s")
    }
}

/// `bytes` in MiB, as `top` shows memory.
fn mebibytes(bytes: u64) -> String {
    format!("{:.1}M", bytes as f64 / (1024.0 * 1024.0))
}

/// The lines of a drawn buffer, trailing blanks removed.
pub(crate) fn buffer_text(buffer: &ratatui::buffer::Buffer) -> String {
    let width = usize::from(buffer.area.width);
    let mut text = String::new();
    for row in buffer.content.chunks(width.max(1)) {
        let line: String = row.iter().map(|c| c.symbol()).collect();
        text.push_str(line.trim_end());
        text.push('\n');
    }
    while text.ends_with("\n\n") {
        text.pop();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fit_in_five_characters() {
        let cases = [
            (Duration::from_nanos(480), "480ns"),
            (Duration::from_micros(35), "35µs"),
            (Duration::from_micros(3_400), "3.4ms"),
            (Duration::from_millis(51), "51ms"),
            (Duration::from_millis(1_200), "1.2s"),
            (Duration::from_secs(120), "120s"),
        ];
        for (d, text) in cases {
            assert_eq!(short(d), text);
        }
    }
}
