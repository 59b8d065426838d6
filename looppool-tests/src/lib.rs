//! Worker types shared by looppool's integration tests, and helpers.
//!
//! The worker program `test-worker` (in `src/bin`) runs them; the tests in
//! `tests/` start pools of it with `env!("CARGO_BIN_EXE_test-worker")`,
//! which is how users test their own workers under `cargo test`.

pub mod nats;
pub mod shm;
pub mod sys;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use looppool::{BoxError, InitContext, TaskContext, Worker};
use serde::{Deserialize, Serialize};

/// What a [`Probe`] worker is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Job {
    /// Emit twice the value.
    Double(u64),
    /// Emit `value` `times` times.
    Repeat {
        /// The value.
        value: u64,
        /// How many times.
        times: u32,
    },
    /// Emit nothing.
    Nothing,
    /// Return an error with this message.
    Fail(String),
    /// Panic with this message.
    Panic(String),
    /// Sleep on the loop, then emit `value`.
    Sleep {
        /// Milliseconds.
        ms: u64,
        /// The value to emit afterwards.
        value: u64,
    },
    /// Busy-loop the CPU (blocking the loop), then emit `value`.
    Spin {
        /// Milliseconds.
        ms: u64,
        /// The value to emit afterwards.
        value: u64,
    },
    /// Exit the process with this code.
    Exit(i32),
    /// Abort the process (as `panic = "abort"` would).
    Abort,
    /// Store a value in the worker's state.
    Set {
        /// Key.
        key: String,
        /// Value.
        value: u64,
    },
    /// Emit the stored value, or `u64::MAX` if there is none.
    Get {
        /// Key.
        key: String,
    },
    /// Emit the worker's index.
    WhoAmI,
    /// Emit the worker's process id.
    Pid,
    /// Keep this many bytes of (touched) memory for the rest of the worker's
    /// life, then emit the total held.
    Hold(u64),
    /// Allocate and touch memory without end, as a runaway task would: push
    /// 16 MiB vectors of nonzero bytes, yielding to the loop after each,
    /// until this many bytes are held (a cap, so that a test without a
    /// working limit cannot take the machine down); then emit the total
    /// held and free it.
    Hog(u64),
    /// Emit an output of this many bytes' worth (a vector), exercising frame limits.
    Big(u64),
    /// Log `message` at `level` (1 error … 5 trace) with a field
    /// `answer = 42`, inside a span `probe_task{job="log"}`; emit nothing.
    Log {
        /// 1 (error) to 5 (trace).
        level: u8,
        /// The message.
        message: String,
    },
    /// Log `message` at info, sleep `ms` on the loop, log it again, then
    /// emit `ms`: events from a first poll and from a later one.
    LogAround {
        /// Milliseconds between the two events.
        ms: u64,
        /// The message of both.
        message: String,
    },
    /// Log `count` events of `bytes` bytes each at info, all in one poll;
    /// then emit `count`.
    LogFlood {
        /// How many events.
        count: u32,
        /// Size of each message.
        bytes: u32,
    },
    /// Panic with this message in a background task (outside any handler);
    /// emit 0 at once.
    PanicInBackground(String),
    /// Write these bytes straight to the connection (fd 3), bypassing the
    /// runtime, then complete normally: a worker that breaks the protocol.
    WriteRaw(Vec<u8>),
    /// Write these bytes straight to the connection, block the loop for
    /// `linger_ms` (so that what the parent sends meanwhile stays unread),
    /// then exit with code 0: a frame cut short by a dying worker, say.
    WriteRawThenExit {
        /// The bytes.
        bytes: Vec<u8>,
        /// Milliseconds to block between the write and the exit.
        linger_ms: u64,
    },
    /// Emit `value`; then, on worker `hold_on` only, sleep a minute (so the
    /// task is still held when its worker is killed), elsewhere complete.
    EmitThenHoldOn {
        /// The worker index on which the task holds.
        hold_on: usize,
        /// The value emitted first.
        value: u64,
    },
    /// Write these chunks straight to the connection, one after another,
    /// blocking the loop `gap_ms` between two: a frame that arrives slowly.
    /// Then complete normally.
    WriteRawSlowly {
        /// The chunks.
        chunks: Vec<Vec<u8>>,
        /// Milliseconds between two chunks.
        gap_ms: u64,
    },
    /// `fork()` without exec: the forked copy keeps the connection (fd 3)
    /// open, sleeps `linger_ms` and `_exit`s; the worker emits its pid and
    /// carries on. A worker that then dies leaves its connection held open.
    Fork {
        /// How long the forked copy lives, in milliseconds.
        linger_ms: u64,
    },
    /// Start `sleep 1000` as a child process (left running, not waited for)
    /// and emit its pid.
    SpawnSleep,
    /// Emit `value`, sleep `ms` on the loop, then emit `value + 1`: a task
    /// whose start shows, and whose end shows whether it was cut short.
    Mark {
        /// The value emitted first.
        value: u64,
        /// Milliseconds to sleep between the two outputs.
        ms: u64,
    },
    /// Sleep `ms` on the loop unless cancelled; on the cancel, emit
    /// `value` (its cleanup) after `cleanup_ms`, and return.
    Cleanup {
        /// The value the cleanup emits.
        value: u64,
        /// Milliseconds to sleep when not cancelled.
        ms: u64,
        /// Milliseconds the cleanup takes.
        cleanup_ms: u64,
    },
    /// Record `seq` as the latest task of `key` in this worker process, and
    /// emit `2 * worker index + 1` when it is later than every task of the
    /// key seen before in this process (in order), `2 * worker index` when not.
    Keyed {
        /// The key.
        key: String,
        /// The task's place among its key's tasks.
        seq: u64,
    },
}

impl Job {
    /// A task that outlives any test: it sleeps a minute on the worker's
    /// loop (then emits `value`), so it is still held when the test kills
    /// or stops its worker.
    pub fn hold(value: u64) -> Job {
        Job::Sleep { ms: 60_000, value }
    }
}

/// When set in a worker's environment, [`Probe`]'s initialiser fails with
/// its value (the `probe-broken-init` program sets it).
pub const FAIL_INIT_ENV: &str = "PROBE_FAIL_INIT";

/// The init payload of a [`Probe`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeInit {
    /// Make the initialiser fail on this worker index.
    pub fail_on: Option<usize>,
    /// Emit this many unsolicited outputs from background work after init.
    pub unsolicited: u64,
    /// Added to every `Double` result, to check the init payload arrives.
    pub offset: u64,
    /// Make the initialiser fail while this file exists.
    pub fail_if_exists: Option<std::path::PathBuf>,
}

/// A worker that does whatever its task says; see [`Job`].
#[derive(Debug)]
pub struct Probe {
    index: usize,
    offset: u64,
    state: RefCell<HashMap<String, u64>>,
    held: RefCell<Vec<Vec<u8>>>,
    shutdown_marker: Option<std::path::PathBuf>,
}

impl Worker for Probe {
    const NAME: &'static str = "probe";
    type Init = ProbeInit;
    type Task = Job;
    type Output = u64;

    async fn init(init: ProbeInit, cx: InitContext<u64>) -> Result<Self, BoxError> {
        if let Some(why) = std::env::var_os(FAIL_INIT_ENV) {
            return Err(why.to_string_lossy().into_owned().into());
        }
        if init.fail_on == Some(cx.worker_index()) {
            return Err(format!("refusing to start worker {}", cx.worker_index()).into());
        }
        if let Some(path) = &init.fail_if_exists {
            if path.exists() {
                return Err(format!("{} exists", path.display()).into());
            }
        }
        if init.unsolicited > 0 {
            let emitter = cx.emitter();
            let n = init.unsolicited;
            tokio::task::spawn_local(async move {
                for i in 0..n {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    if emitter.emit(1_000_000 + i).await.is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Probe {
            index: cx.worker_index(),
            offset: init.offset,
            state: RefCell::new(HashMap::new()),
            held: RefCell::new(Vec::new()),
            shutdown_marker: std::env::var_os("PROBE_SHUTDOWN_MARKER").map(Into::into),
        })
    }

    async fn handle(self: Rc<Self>, job: Job, cx: TaskContext<u64>) -> Result<(), BoxError> {
        match job {
            Job::Double(x) => cx.emit(2 * x + self.offset).await?,
            Job::Repeat { value, times } => {
                for _ in 0..times {
                    cx.emit(value).await?;
                }
            }
            Job::Nothing => {}
            Job::Fail(message) => return Err(message.into()),
            Job::Panic(message) => panic!("{message}"),
            Job::Sleep { ms, value } => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                cx.emit(value).await?;
            }
            Job::LogAround { ms, message } => {
                tracing::info!(poll = "first", "{message}");
                tokio::time::sleep(Duration::from_millis(ms)).await;
                tracing::info!(poll = "later", "{message}");
                cx.emit(ms).await?;
            }
            Job::Spin { ms, value } => {
                let until = Instant::now() + Duration::from_millis(ms);
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                cx.emit(value).await?;
            }
            Job::Mark { value, ms } => {
                cx.emit(value).await?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                cx.emit(value + 1).await?;
            }
            Job::Cleanup {
                value,
                ms,
                cleanup_ms,
            } => {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    () = cx.cancelled() => {
                        tokio::time::sleep(Duration::from_millis(cleanup_ms)).await;
                        cx.emit(value).await?;
                    }
                }
            }
            Job::Keyed { key, seq } => {
                let key = format!("keyed:{key}");
                let last = self.state.borrow_mut().insert(key, seq);
                let in_order = last.is_none_or(|last| last < seq);
                cx.emit(2 * self.index as u64 + u64::from(in_order)).await?;
            }
            Job::Exit(code) => std::process::exit(code),
            Job::Abort => std::process::abort(),
            Job::Set { key, value } => {
                self.state.borrow_mut().insert(key, value);
            }
            Job::Get { key } => {
                let value = self.state.borrow().get(&key).copied().unwrap_or(u64::MAX);
                cx.emit(value).await?;
            }
            Job::WhoAmI => cx.emit(self.index as u64).await?,
            Job::Pid => cx.emit(u64::from(std::process::id())).await?,
            Job::Hold(bytes) => {
                let total = {
                    let mut held = self.held.borrow_mut();
                    held.push(vec![1u8; bytes as usize]);
                    held.iter().map(|b| b.len() as u64).sum()
                };
                cx.emit(total).await?;
            }
            Job::Hog(cap) => {
                const CHUNK: usize = 16 << 20;
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                let mut total = 0u64;
                while total < cap {
                    hoard.push(vec![0xa5; CHUNK]);
                    total += CHUNK as u64;
                    tokio::task::yield_now().await;
                }
                cx.emit(total).await?;
            }
            Job::Big(bytes) => {
                // A u64 output cannot be big; report the size we were asked for.
                let payload = vec![0u8; bytes as usize];
                cx.emit(payload.len() as u64).await?;
            }
            Job::Log { level, message } => {
                let span = tracing::info_span!("probe_task", job = "log");
                let _entered = span.enter();
                match level {
                    1 => tracing::error!(answer = 42, "{message}"),
                    2 => tracing::warn!(answer = 42, "{message}"),
                    3 => tracing::info!(answer = 42, "{message}"),
                    4 => tracing::debug!(answer = 42, "{message}"),
                    _ => tracing::trace!(answer = 42, "{message}"),
                }
            }
            Job::LogFlood { count, bytes } => {
                let message = "x".repeat(bytes as usize);
                for i in 0..count {
                    tracing::info!(i, "{message}");
                }
                cx.emit(count.into()).await?;
            }
            Job::PanicInBackground(message) => {
                tokio::task::spawn_local(async move {
                    tokio::task::yield_now().await;
                    panic!("{message}");
                });
                cx.emit(0).await?;
            }
            Job::WriteRaw(bytes) => sys::write_connection(&bytes)?,
            Job::WriteRawSlowly { chunks, gap_ms } => {
                for (i, chunk) in chunks.iter().enumerate() {
                    if i > 0 {
                        std::thread::sleep(Duration::from_millis(gap_ms));
                    }
                    sys::write_connection(chunk)?;
                }
            }
            Job::WriteRawThenExit { bytes, linger_ms } => {
                sys::write_connection(&bytes)?;
                std::thread::sleep(Duration::from_millis(linger_ms));
                std::process::exit(0);
            }
            Job::EmitThenHoldOn { hold_on, value } => {
                cx.emit(value).await?;
                if cx.worker_index() == hold_on {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            }
            Job::Fork { linger_ms } => {
                let pid = sys::fork_holding_connection(Duration::from_millis(linger_ms))?;
                cx.emit(u64::from(pid)).await?;
            }
            Job::SpawnSleep => {
                let child = std::process::Command::new("sleep")
                    .arg("1000")
                    .stdin(std::process::Stdio::null())
                    .spawn()?;
                cx.emit(u64::from(child.id())).await?;
            }
        }
        Ok(())
    }

    async fn shutdown(self: Rc<Self>) {
        if let Some(path) = &self.shutdown_marker {
            let _ = std::fs::write(path.join(format!("worker-{}", self.index)), b"bye");
        }
    }
}

/// What a [`Blob`] worker is asked to do: byte payloads, to exercise the
/// frame limit in both directions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BlobJob {
    /// Emit the bytes back.
    Echo(serde_bytes::ByteBuf),
    /// Emit the number of bytes received, as 8 little-endian bytes.
    Len(serde_bytes::ByteBuf),
    /// Emit an output of this many bytes. If it is refused, fail the task
    /// with the refusal and the size of the value `emit` gave back.
    Make(u64),
}

/// A worker whose tasks and outputs are byte vectors; see [`BlobJob`].
///
/// Its init value is a number of outputs to emit from the initialiser
/// (`[0]`, `[1]`, ...), which then waits a little, as an initialiser that
/// announces itself and goes on setting up would.
#[derive(Debug)]
pub struct Blob;

impl Worker for Blob {
    const NAME: &'static str = "blob";
    type Init = u8;
    type Task = BlobJob;
    type Output = serde_bytes::ByteBuf;

    async fn init(announce: u8, cx: InitContext<serde_bytes::ByteBuf>) -> Result<Self, BoxError> {
        if announce > 0 {
            let emitter = cx.emitter();
            for i in 0..announce {
                emitter
                    .emit(serde_bytes::ByteBuf::from(vec![i]))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Blob)
    }

    async fn handle(
        self: Rc<Self>,
        job: BlobJob,
        cx: TaskContext<serde_bytes::ByteBuf>,
    ) -> Result<(), BoxError> {
        use serde_bytes::ByteBuf;
        match job {
            BlobJob::Echo(bytes) => cx.emit(bytes).await?,
            BlobJob::Len(bytes) => {
                let len = bytes.len() as u64;
                cx.emit(ByteBuf::from(len.to_le_bytes().to_vec())).await?;
            }
            BlobJob::Make(n) => {
                if let Err(e) = cx.emit(ByteBuf::from(vec![0x5a; n as usize])).await {
                    let kind = e.kind().clone();
                    let back = e.into_inner();
                    return Err(format!("{kind:?}: given back {} bytes", back.len()).into());
                }
            }
        }
        Ok(())
    }
}

/// A value whose `Serialize` panics, after writing part of its encoding,
/// when `panic` is set: a serializer bug, on either side of the wire. It
/// deserializes as it serializes otherwise, as the pair `(value, panic)`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "(u64, bool)")]
pub struct Fragile {
    /// The value.
    pub value: u64,
    /// Panic when serialized.
    pub panic: bool,
}

impl From<(u64, bool)> for Fragile {
    fn from((value, panic): (u64, bool)) -> Self {
        Fragile { value, panic }
    }
}

impl Serialize for Fragile {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.value)?;
        if self.panic {
            panic!("Fragile({}) refuses to be serialized", self.value);
        }
        t.serialize_element(&self.panic)?;
        t.end()
    }
}

/// What a [`Brittle`] worker is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BrittleJob {
    /// Emit the value back (one with `panic` set panics in the parent's
    /// `submit`, before it is sent).
    Echo(Fragile),
    /// Emit `Fragile { value, panic: true }`: its serialization panics in
    /// the worker, inside `emit`.
    EmitPanicking(u64),
}

/// A worker whose task and output types can panic when serialized; see
/// [`BrittleJob`].
#[derive(Debug)]
pub struct Brittle;

impl Worker for Brittle {
    const NAME: &'static str = "brittle";
    type Init = ();
    type Task = BrittleJob;
    type Output = Fragile;

    async fn init(_: (), _: InitContext<Fragile>) -> Result<Self, BoxError> {
        Ok(Brittle)
    }

    async fn handle(
        self: Rc<Self>,
        job: BrittleJob,
        cx: TaskContext<Fragile>,
    ) -> Result<(), BoxError> {
        match job {
            BrittleJob::Echo(value) => cx.emit(value).await?,
            BrittleJob::EmitPanicking(value) => cx.emit(Fragile { value, panic: true }).await?,
        }
        Ok(())
    }
}

/// A builder for a pool of [`Brittle`]s run by the test worker program.
#[macro_export]
macro_rules! brittle_pool {
    () => {
        looppool::Pool::<$crate::Brittle>::builder()
            .program(env!("CARGO_BIN_EXE_test-worker"))
            .name("brittle")
    };
}

/// A builder for a pool of [`Probe`]s run by the test worker program.
///
/// A macro, because `CARGO_BIN_EXE_*` is defined only while compiling the
/// integration tests.
#[macro_export]
macro_rules! probe_pool {
    () => {
        looppool::Pool::<$crate::Probe>::builder()
            .program(env!("CARGO_BIN_EXE_test-worker"))
            .name("probe")
            .init_default()
    };
}

/// A builder for a pool of [`Blob`]s run by the test worker program.
#[macro_export]
macro_rules! blob_pool {
    () => {
        looppool::Pool::<$crate::Blob>::builder()
            .program(env!("CARGO_BIN_EXE_test-worker"))
            .name("blob")
            .init_default()
    };
}

/// The state of process `pid` from `/proc/<pid>/stat` (`'R'`, `'S'`, `'Z'`,
/// ...), or `None` when no such process exists.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses.
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
}

/// True when `pid` no longer runs (gone, or a zombie waiting for its reaper).
pub fn process_gone(pid: u32) -> bool {
    matches!(process_state(pid), None | Some('Z') | Some('X'))
}

/// Polls `condition` every few milliseconds until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Records a pool's lifecycle events, for assertions.
pub type Events = std::sync::Arc<std::sync::Mutex<Vec<looppool::WorkerEvent>>>;

/// An event log and the hook that fills it (for `PoolBuilder::on_event`).
pub fn recorder() -> (
    Events,
    impl Fn(&looppool::WorkerEvent) + Send + Sync + 'static,
) {
    let events: Events = Default::default();
    let sink = events.clone();
    (events, move |e: &looppool::WorkerEvent| {
        sink.lock().unwrap().push(e.clone())
    })
}

/// The `Crashed` events in `events`: workers the pool declared lost.
pub fn crashes(events: &Events) -> Vec<looppool::WorkerEvent> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, looppool::WorkerEvent::Crashed { .. }))
        .cloned()
        .collect()
}

/// The next output-stream item, failing the test if none comes within 20 s
/// or the stream ends.
pub async fn next_output<O>(outputs: &mut looppool::Outputs<O>) -> looppool::Output<O> {
    tokio::time::timeout(Duration::from_secs(20), outputs.next())
        .await
        .expect("an output within 20 s")
        .expect("the output stream goes on")
}

/// The next `n` output-stream items, failing the test if the stream ends
/// first or `within` passes without an item.
pub async fn take<O>(
    outputs: &mut looppool::Outputs<O>,
    n: usize,
    within: Duration,
) -> Vec<looppool::Output<O>> {
    let mut items = Vec::with_capacity(n);
    while items.len() < n {
        match tokio::time::timeout(within, outputs.next()).await {
            Ok(Some(item)) => items.push(item),
            Ok(None) => panic!("stream ended after {} of {n} items", items.len()),
            Err(_) => panic!("timed out after {} of {n} items", items.len()),
        }
    }
    items
}

/// Open file descriptors of this process (entries of `/proc/self/fd`).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// This process's children: `(pid, state)` for every process whose parent
/// is this one (`'Z'` is a zombie nobody reaped).
pub fn children() -> Vec<(u32, char)> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the name in parentheses: state, then the parent's pid.
        let mut rest = stat.rsplit_once(") ")?.1.split(' ');
        let state = rest.next()?.chars().next()?;
        let ppid: u32 = rest.next()?.parse().ok()?;
        (ppid == me).then_some((pid, state))
    })
    .collect()
}

/// This process's resident memory in bytes (VmRSS).
pub fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Submits `jobs` to `pool` in order from a task of their own, so that the
/// test can consume outputs meanwhile; the task panics if a submit fails.
pub fn submit_all<I>(pool: &looppool::Pool<Probe>, jobs: I) -> tokio::task::JoinHandle<()>
where
    I: IntoIterator<Item = Job> + Send + 'static,
    I::IntoIter: Send,
{
    let pool = pool.clone();
    tokio::spawn(async move {
        for job in jobs {
            pool.submit(job).await.unwrap();
        }
    })
}

/// `err` and each of its sources, joined with `": "`, as `anyhow`'s
/// `{:#}` prints a chain: what a report shows of a looppool error.
pub fn report(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A small xorshift generator: enough randomness for chaos tests' timing
/// and choices, seeded by the test.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Asserts that `pool` is whole again after chaos: every worker has a
/// process (within 10 s), each answers a call as itself, and the pool has
/// not failed.
pub async fn assert_whole(pool: &looppool::Pool<Probe>) {
    assert!(
        eventually(Duration::from_secs(10), || pool
            .pids()
            .iter()
            .all(Option::is_some))
        .await,
        "full size again"
    );
    for w in 0..pool.workers() {
        assert_eq!(pool.call_to(w, Job::WhoAmI).await.unwrap(), w as u64);
    }
    assert!(pool.failure().is_none());
}
