//! A worker whose tasks and outputs hold [`looppool::Blob`]s, and the ways
//! it can lie about the descriptors its frames announce.

use std::rc::Rc;
use std::time::Duration;

use looppool::{Blob, BoxError, InitContext, TaskContext, Worker};
use serde::{Deserialize, Serialize};

use crate::sys;

/// What a [`Shm`] worker is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShmJob {
    /// Emit the blob back, as it is.
    Echo(Blob),
    /// Emit what arrived: its size, whether it is mapped from a memory file,
    /// and the sum of its bytes.
    Inspect(Blob),
    /// Sleep on the loop, then inspect the blob.
    InspectLater {
        /// The blob.
        blob: Blob,
        /// Milliseconds.
        ms: u64,
    },
    /// Emit a new blob of `len` bytes of `byte`, built in a memory file
    /// (`built`) or from a vector; if `emit` refuses it, fail with the
    /// refusal.
    Make {
        /// Its size.
        len: u64,
        /// Each of its bytes.
        byte: u8,
        /// Built with `Blob::build`, not from a `Vec`.
        built: bool,
    },
    /// Emit how many descriptors this process has open.
    CountFds,
    /// Break the protocol about blobs (see [`Lie`]).
    Lie(Lie),
}

/// How a misbehaving [`Shm`] worker lies about a frame's blobs: each writes
/// a frame that carries blobs by descriptor straight to its connection
/// (descriptor 3), around an output whose payload refers to blob 0, and
/// sends (or not) a descriptor on its blob socket (descriptor 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lie {
    /// Announces a blob of 4,096 bytes and sends no descriptor.
    NoDescriptor,
    /// Sends a memory file of the announced size that is not sealed.
    Unsealed,
    /// Sends a sealed memory file larger than announced.
    WrongSize,
    /// Sends a pipe instead of a memory file.
    Pipe,
    /// Sends the descriptor under a sequence number that is not the next.
    WrongSequence,
    /// Announces a blob (and sends it) that the output does not refer to.
    Unused,
    /// Announces blobs larger than the frame limit allows.
    TooLarge,
}

/// What a [`Shm`] worker emits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShmOut {
    /// A blob.
    Blob(Blob),
    /// What a task's blob was when it arrived.
    Seen {
        /// Its size.
        len: u64,
        /// Whether it is mapped from a memory file.
        shared: bool,
        /// The sum of its bytes.
        sum: u64,
    },
    /// A count of open descriptors.
    Fds(u64),
}

impl ShmOut {
    /// What `blob` is, as [`ShmOut::Seen`] tells it.
    pub fn seen(blob: &Blob) -> ShmOut {
        ShmOut::Seen {
            len: blob.len() as u64,
            shared: blob.is_shared(),
            sum: blob.iter().map(|&b| u64::from(b)).sum(),
        }
    }
}

/// A worker whose tasks and outputs hold blobs; see [`ShmJob`].
#[derive(Debug)]
pub struct Shm;

impl Worker for Shm {
    const NAME: &'static str = "shm";
    type Init = ();
    type Task = ShmJob;
    type Output = ShmOut;

    async fn init(_: (), _: InitContext<ShmOut>) -> Result<Self, BoxError> {
        Ok(Shm)
    }

    async fn handle(self: Rc<Self>, job: ShmJob, cx: TaskContext<ShmOut>) -> Result<(), BoxError> {
        match job {
            ShmJob::Echo(blob) => cx.emit(ShmOut::Blob(blob)).await?,
            ShmJob::Inspect(blob) => cx.emit(ShmOut::seen(&blob)).await?,
            ShmJob::InspectLater { blob, ms } => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                cx.emit(ShmOut::seen(&blob)).await?
            }
            ShmJob::Make { len, byte, built } => {
                let blob = if built {
                    let mut b = Blob::build(len as usize)?;
                    b.fill(byte);
                    b.freeze()?
                } else {
                    Blob::from(vec![byte; len as usize])
                };
                if let Err(e) = cx.emit(ShmOut::Blob(blob)).await {
                    return Err(format!("{:?}", e.kind()).into());
                }
            }
            ShmJob::CountFds => cx.emit(ShmOut::Fds(open_fds(std::process::id()))).await?,
            ShmJob::Lie(lie) => sys::lie_about_blobs(lie)?,
        }
        Ok(())
    }
}

/// How many descriptors process `pid` has open (`/proc/PID/fd`).
pub fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// A builder for a pool of [`Shm`]s run by the test worker program.
#[macro_export]
macro_rules! shm_pool {
    () => {
        looppool::Pool::<$crate::shm::Shm>::builder()
            .program(env!("CARGO_BIN_EXE_test-worker"))
            .name("shm")
    };
}
