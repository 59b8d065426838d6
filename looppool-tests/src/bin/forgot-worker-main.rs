//! A program that forgot `looppool::worker_main!`: each worker the pool
//! starts runs this `main` again. It must not start a pool of its own.
//!
//! A guard of its own caps the recursion should that regress: each run
//! counts its depth in `FORGOT_DEPTH` and stops at depth 2 with exit code
//! 42; each run that reaches `main` appends its pid and depth to the file
//! `FORGOT_LOG` names, so a test can count them.

use looppool::{BoxError, InitContext, Pool, TaskContext, Worker};
use std::io::Write;
use std::rc::Rc;

struct Doubler;

impl Worker for Doubler {
    const NAME: &'static str = "doubler";
    type Init = ();
    type Task = u64;
    type Output = u64;

    async fn init(_: (), _: InitContext<u64>) -> Result<Self, BoxError> {
        Ok(Doubler)
    }

    async fn handle(self: Rc<Self>, x: u64, cx: TaskContext<u64>) -> Result<(), BoxError> {
        cx.emit(2 * x).await?;
        Ok(())
    }
}

fn main() {
    // No looppool::worker_main!(Doubler) here: that is the mistake.
    let depth: u32 = std::env::var("FORGOT_DEPTH")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    if let Some(log) = std::env::var_os("FORGOT_LOG") {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the log file opens");
        writeln!(file, "{} {depth}", std::process::id()).expect("the log is written");
    }
    if depth >= 2 {
        eprintln!("forgot-worker-main: nested at depth {depth}, stopping the recursion");
        std::process::exit(42);
    }
    // Set before any thread exists; the workers inherit it.
    std::env::set_var("FORGOT_DEPTH", (depth + 1).to_string());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        match Pool::<Doubler>::builder().workers(2).start().await {
            Ok((pool, _outputs)) => {
                println!("started a pool at depth {depth}");
                pool.shutdown().await;
            }
            Err(e) => {
                eprintln!("forgot-worker-main (depth {depth}): start failed: {e}");
                std::process::exit(1);
            }
        }
    });
}
