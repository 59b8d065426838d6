//! The live view: refreshes every interval, and turns keys into requests
//! on the focused pool's socket (on a thread of their own, so that a long
//! rolling restart does not freeze the view).

use std::sync::mpsc;
use std::time::Instant;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::DefaultTerminal;
use serde_json::{json, Value};

use crate::args::Top;
use crate::client::{Client, ACTION_TIMEOUT};
use crate::model::PoolView;
use crate::pools;
use crate::view::{self, Focus};

/// Runs the live view until `q` (or Esc, or Ctrl-C).
///
/// # Errors
/// When no pool can be found, or the terminal fails.
pub(crate) fn run(top: &Top) -> Result<(), String> {
    let pools = pools::find(top)?;
    // Raw mode and the alternate screen, restored on return and on panic.
    let mut terminal = ratatui::try_init().map_err(|e| e.to_string())?;
    let result = live(&mut terminal, top, pools);
    ratatui::restore();
    result
}

/// What a key asks for.
enum Act {
    Quit,
    Send(Value, String),
    Nothing,
}

fn live(terminal: &mut DefaultTerminal, top: &Top, mut pools: Vec<PoolView>) -> Result<(), String> {
    let (done_tx, done_rx) = mpsc::channel::<String>();
    let mut focus = Focus {
        keys: true,
        ..Focus::default()
    };
    let mut next_refresh = Instant::now();
    loop {
        if Instant::now() >= next_refresh {
            if top.socket.is_none() {
                // Pools that started or ended since.
                if let Ok(found) = pools::find(top) {
                    pools = pools::merge(pools, found);
                }
            }
            for pool in &mut pools {
                pool.refresh();
            }
            next_refresh = Instant::now() + top.interval;
        }
        while let Ok(outcome) = done_rx.try_recv() {
            focus.status = outcome;
        }
        clamp(&mut focus, &pools);
        terminal
            .draw(|frame| view::draw(frame, &pools, &focus))
            .map_err(|e| e.to_string())?;
        let wait = next_refresh.saturating_duration_since(Instant::now());
        if !event::poll(wait).map_err(|e| e.to_string())? {
            continue;
        }
        let Event::Key(key) = event::read().map_err(|e| e.to_string())? else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        match act(key.code, key.modifiers, &mut focus, &pools) {
            Act::Quit => return Ok(()),
            Act::Nothing => {}
            Act::Send(request, what) => {
                let path = pools[focus.pool].path.clone();
                focus.status = format!("{what}…");
                let done = done_tx.clone();
                std::thread::spawn(move || {
                    let outcome = Client::connect(&path)
                        .map_err(|e| e.to_string())
                        .and_then(|mut c| c.ask(&request, ACTION_TIMEOUT));
                    let _ = done.send(match outcome {
                        Ok(_) => format!("{what}: done"),
                        Err(e) => format!("{what}: {e}"),
                    });
                });
                // Show the effect soon.
                next_refresh = Instant::now();
            }
        }
    }
}

/// Keeps the focus on an existing pool and worker.
fn clamp(focus: &mut Focus, pools: &[PoolView]) {
    focus.pool = focus.pool.min(pools.len().saturating_sub(1));
    let workers = pools
        .get(focus.pool)
        .and_then(|p| p.last.as_ref())
        .map_or(0, |(_, s)| s.workers.len());
    focus.worker = focus.worker.min(workers.saturating_sub(1));
}

/// What `code` does.
fn act(
    code: KeyCode,
    modifiers: event::KeyModifiers,
    focus: &mut Focus,
    pools: &[PoolView],
) -> Act {
    let Some(pool) = pools.get(focus.pool) else {
        return match code {
            KeyCode::Char('q') | KeyCode::Esc => Act::Quit,
            _ => Act::Nothing,
        };
    };
    let workers = pool.last.as_ref().map_or(0, |(_, s)| s.workers.len());
    let name = pool.name().to_owned();
    match code {
        KeyCode::Char('q') | KeyCode::Esc => Act::Quit,
        KeyCode::Char('c') if modifiers.contains(event::KeyModifiers::CONTROL) => Act::Quit,
        KeyCode::Tab => {
            focus.pool = (focus.pool + 1) % pools.len();
            focus.worker = 0;
            Act::Nothing
        }
        KeyCode::Up => {
            focus.worker = focus.worker.saturating_sub(1);
            Act::Nothing
        }
        KeyCode::Down => {
            focus.worker += 1;
            Act::Nothing
        }
        KeyCode::Char('r') if workers > 0 => Act::Send(
            json!({"op": "recycle", "worker": focus.worker}),
            format!("recycle worker {} of {name}", focus.worker),
        ),
        KeyCode::Char('R') => Act::Send(
            json!({"op": "rolling_restart"}),
            format!("rolling restart of {name}"),
        ),
        KeyCode::Char('+') if workers > 0 => Act::Send(
            json!({"op": "resize", "workers": workers + 1}),
            format!("resize {name} to {}", workers + 1),
        ),
        KeyCode::Char('-') if workers > 1 => Act::Send(
            json!({"op": "resize", "workers": workers - 1}),
            format!("resize {name} to {}", workers - 1),
        ),
        _ => Act::Nothing,
    }
}
