//! The worker types the benchmark runs. The bench binary is its own worker
//! program: `main` lists all of them in `looppool::worker_main!`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use looppool::{BoxError, InitContext, TaskContext, Worker};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// W1 and W2: emits `2 * x` for every task `x`.
#[derive(Debug)]
pub(crate) struct Echo;

impl Worker for Echo {
    const NAME: &'static str = "bench-echo";
    type Init = ();
    type Task = u64;
    type Output = u64;

    async fn init(_: (), _: InitContext<u64>) -> Result<Self, BoxError> {
        Ok(Echo)
    }

    async fn handle(self: Rc<Self>, x: u64, cx: TaskContext<u64>) -> Result<(), BoxError> {
        cx.emit(2 * x).await?;
        Ok(())
    }
}

/// W3: sleeps on the worker's loop for the task's number of milliseconds,
/// then emits it.
#[derive(Debug)]
pub(crate) struct Sleeper;

impl Worker for Sleeper {
    const NAME: &'static str = "bench-sleep";
    type Init = ();
    type Task = u64;
    type Output = u64;

    async fn init(_: (), _: InitContext<u64>) -> Result<Self, BoxError> {
        Ok(Sleeper)
    }

    async fn handle(self: Rc<Self>, ms: u64, cx: TaskContext<u64>) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        cx.emit(ms).await?;
        Ok(())
    }
}

/// A W4 task: busy CPU for `spin_us`, blocking the loop, then an async sleep.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct MixedTask {
    /// Microseconds of busy loop.
    pub(crate) spin_us: u32,
    /// Milliseconds of sleep on the loop afterwards.
    pub(crate) sleep_ms: u32,
}

/// W4: spins (like the Python peers' `perf_counter` loop), then sleeps,
/// then emits 1.
#[derive(Debug)]
pub(crate) struct Mixed;

impl Worker for Mixed {
    const NAME: &'static str = "bench-mixed";
    type Init = ();
    type Task = MixedTask;
    type Output = u64;

    async fn init(_: (), _: InitContext<u64>) -> Result<Self, BoxError> {
        Ok(Mixed)
    }

    async fn handle(self: Rc<Self>, task: MixedTask, cx: TaskContext<u64>) -> Result<(), BoxError> {
        spin(Duration::from_micros(task.spin_us.into()));
        // A zero sleep would still wait for the timer's next tick (a
        // millisecond): the control workloads' short calls have none.
        if task.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(task.sleep_ms.into())).await;
        }
        cx.emit(1).await?;
        Ok(())
    }
}

/// Busy-loops the CPU for `d`, reading the clock, without yielding.
pub(crate) fn spin(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// W5: echoes its bytes back. `ByteBuf` makes postcard encode them as one
/// byte string (a length and the bytes), not as a sequence of integers.
#[derive(Debug)]
pub(crate) struct Bytes;

impl Worker for Bytes {
    const NAME: &'static str = "bench-bytes";
    type Init = ();
    type Task = ByteBuf;
    type Output = ByteBuf;

    async fn init(_: (), _: InitContext<ByteBuf>) -> Result<Self, BoxError> {
        Ok(Bytes)
    }

    async fn handle(
        self: Rc<Self>,
        data: ByteBuf,
        cx: TaskContext<ByteBuf>,
    ) -> Result<(), BoxError> {
        cx.emit(data).await?;
        Ok(())
    }
}

/// W5-blob and W5-64MiB: echoes its blob back (the same memory file, when
/// it came as one).
#[derive(Debug)]
pub(crate) struct BlobEcho;

impl Worker for BlobEcho {
    const NAME: &'static str = "bench-blob";
    type Init = ();
    type Task = looppool::Blob;
    type Output = looppool::Blob;

    async fn init(_: (), _: InitContext<looppool::Blob>) -> Result<Self, BoxError> {
        Ok(BlobEcho)
    }

    async fn handle(
        self: Rc<Self>,
        blob: looppool::Blob,
        cx: TaskContext<looppool::Blob>,
    ) -> Result<(), BoxError> {
        cx.emit(blob).await?;
        Ok(())
    }
}
