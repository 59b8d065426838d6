//! Graceful shutdown on Ctrl-C: a pool of 4 workers serves a stream of tasks
//! until the parent gets SIGINT or SIGTERM, then drains and exits 0.
//!
//! Each worker runs in a process group of its own, so a Ctrl-C in a
//! terminal, which reaches the foreground process group, reaches only the
//! parent (and workers ignore SIGINT and SIGTERM anyway, by default): it
//! stops the parent's producer; the parent then drains the pool by message
//! and every accepted task completes.
//!
//! ```sh
//! cargo run --release --example ctrl_c     # then press Ctrl-C
//! ```
//!
//! While it runs, `looppool top` shows its pool, live, through the pool's
//! control socket: `cargo run -p looppool-cli -- top ctrl-c` in another
//! terminal.

use std::rc::Rc;
use std::time::Duration;

use looppool::{BoxError, InitContext, Output, Pool, TaskContext, Worker};
use tokio::signal::unix::{signal, SignalKind};

/// Waits a little (IO-bound work), then answers.
struct Sleeper;

impl Worker for Sleeper {
    const NAME: &'static str = "sleeper";
    type Init = ();
    type Task = u64;
    type Output = u64;

    async fn init(_: (), _cx: InitContext<u64>) -> Result<Self, BoxError> {
        Ok(Sleeper)
    }

    async fn handle(self: Rc<Self>, n: u64, cx: TaskContext<u64>) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        cx.emit(n).await?;
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    looppool::worker_main!(Sleeper);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let (pool, mut outputs) = Pool::<Sleeper>::builder().workers(4).name("ctrl-c").start().await?;
        println!("pool ready: {} workers, pids {:?}", pool.workers(), pool.pids());
        if let Some(socket) = pool.control_socket() {
            println!("looppool top --socket {}", socket.display());
        }

        // The consumer counts outputs until the stream ends after shutdown.
        let consumer = tokio::spawn(async move {
            let (mut done, mut other) = (0u64, 0u64);
            while let Some(item) = outputs.next().await {
                match item {
                    Output::Value { .. } => done += 1,
                    _ => other += 1,
                }
            }
            (done, other)
        });

        let mut sent = 0u64;
        let signal_name = loop {
            tokio::select! {
                _ = interrupt.recv() => break "SIGINT",
                _ = terminate.recv() => break "SIGTERM",
                result = pool.submit(sent) => {
                    result?;
                    sent += 1;
                }
            }
        };
        let report = pool.shutdown().await;
        let (done, other) = consumer.await?;
        println!(
            "drained after {signal_name}: {sent} tasks sent, {done} completed, {other} failed or lost, drained: {}",
            report.drained
        );
        if done + other != sent {
            return Err(format!("{} tasks unaccounted for", sent - done - other).into());
        }
        Ok(())
    })
}
