//! `looppool top`: a live view of the looppool pools of the current user,
//! read from (and acting through) their control sockets; see the crate's
//! README.

use std::process::ExitCode;

use ratatui::backend::TestBackend;
use ratatui::Terminal;

mod app;
mod args;
mod client;
mod model;
mod pools;
mod procfs;
mod view;

fn main() -> ExitCode {
    let top = match args::parse(std::env::args().skip(1)) {
        Ok(top) => top,
        Err(message) if message == args::USAGE => {
            println!("{message}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("looppool: {message}");
            return ExitCode::from(2);
        }
    };
    let result = if top.json {
        json(&top)
    } else if top.once {
        once(&top)
    } else {
        app::run(&top)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("looppool top: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--json`: each pool's snapshot as one JSON line, as its socket gave it.
fn json(top: &args::Top) -> Result<(), String> {
    let mut failed = None;
    for pool in pools::find(top)? {
        let snapshot = client::Client::connect(&pool.path)
            .map_err(|e| format!("{}: {e}", pool.path.display()))
            .and_then(|mut c| c.snapshot());
        match snapshot {
            Ok(snapshot) => {
                let line = serde_json::to_string(&snapshot).map_err(|e| e.to_string())?;
                println!("{line}");
            }
            Err(e) => {
                eprintln!("looppool top: {e}");
                failed = Some(e);
            }
        }
    }
    failed.map_or(Ok(()), |e| Err(format!("not every pool answered ({e})")))
}

/// `--once`: one frame, as text, with rates over one interval.
fn once(top: &args::Top) -> Result<(), String> {
    let mut pools = pools::find(top)?;
    for pool in &mut pools {
        pool.refresh();
    }
    std::thread::sleep(top.interval);
    for pool in &mut pools {
        pool.refresh();
    }
    let height: u16 = pools.iter().map(view::pool_height).sum::<u16>() + 1;
    let mut terminal =
        Terminal::new(TestBackend::new(top.width, height.max(2))).map_err(|e| e.to_string())?;
    let focus = view::Focus::default();
    let focus = view::Focus {
        // No row highlighted in a printed frame.
        pool: usize::MAX,
        ..focus
    };
    terminal
        .draw(|frame| view::draw(frame, &pools, &focus))
        .map_err(|e| e.to_string())?;
    print!("{}", view::buffer_text(terminal.backend().buffer()));
    Ok(())
}
