//! The machine's own limits, with the pool's framing (a 4-byte little-endian
//! length, then the body) but no pool: plain threads and blocking sockets.
//!
//! The bench binary re-executes itself as the far end. A child started with
//! [`CHILD_ENV`] set echoes whatever arrives on its standard input (the
//! socket) back, in reads and writes of 64 KiB, until the stream ends.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::stats::Latency;

/// Set in the environment of a raw echo child.
pub(crate) const CHILD_ENV: &str = "LOOPPOOL_BENCH_RAW_CHILD";

/// Read and write size of every raw loop.
const BUF: usize = 64 * 1024;

/// Echoes and exits if this process is a raw child; returns otherwise.
/// Called at the top of `main`, before any runtime exists.
pub(crate) fn child_main_if_requested() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let code = match echo_stdin() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("looppool-bench raw child: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn echo_stdin() -> io::Result<()> {
    let mut sock = UnixStream::from(io::stdin().as_fd().try_clone_to_owned()?);
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match sock.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sock.write_all(&buf[..n])?;
    }
}

/// A raw echo child and the parent's end of its socketpair.
struct Peer {
    child: Child,
    sock: UnixStream,
}

impl Peer {
    fn spawn() -> io::Result<Peer> {
        let (ours, theirs) = UnixStream::pair()?;
        let mut cmd = Command::new("/proc/self/exe");
        cmd.env(CHILD_ENV, "1")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null());
        let child = cmd.spawn()?;
        // The command holds the child's end: drop it so only the child has it.
        drop(cmd);
        Ok(Peer { child, sock: ours })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // The child exits at the end of its input.
        let _ = self.sock.shutdown(Shutdown::Both);
        let _ = self.child.wait();
    }
}

/// Counts whole frames in a byte stream fed in arbitrary pieces.
#[derive(Debug, Default)]
struct FrameCounter {
    header: [u8; 4],
    have: usize,
    /// Body bytes of the current frame still to come.
    skip: usize,
    in_body: bool,
    frames: u64,
}

impl FrameCounter {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.in_body {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                if self.skip == 0 {
                    self.in_body = false;
                    self.frames += 1;
                }
                continue;
            }
            let n = (4 - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 4 {
                self.have = 0;
                self.skip = u32::from_le_bytes(self.header) as usize;
                if self.skip == 0 {
                    self.frames += 1;
                } else {
                    self.in_body = true;
                }
            }
        }
    }
}

/// A frame: the length prefix and a body of `body` bytes.
fn frame(body: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(4 + body);
    f.extend_from_slice(&(body as u32).to_le_bytes());
    f.extend((0..body).map(|i| i as u8));
    f
}

/// Streams `frames` frames of `body` bytes through each of `pairs` echo
/// children at once (a writer and a reader thread per pair), and returns the
/// time from the first write to the last frame read back.
fn pipelined(pairs: usize, body: usize, frames: u64) -> io::Result<Duration> {
    let one = frame(body);
    // As many whole frames as fit in one 64 KiB write (at least one).
    let per_chunk = (BUF / one.len()).max(1);
    let chunk: Vec<u8> = one.repeat(per_chunk);
    let chunk = Arc::new(chunk);
    let peers = (0..pairs)
        .map(|_| Peer::spawn())
        .collect::<io::Result<Vec<_>>>()?;
    let start_line = Arc::new(Barrier::new(2 * pairs + 1));
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for peer in &peers {
        let mut w = peer.sock.try_clone()?;
        let (chunk, go) = (chunk.clone(), start_line.clone());
        let frame_len = one.len();
        writers.push(std::thread::spawn(move || -> io::Result<()> {
            go.wait();
            let mut left = frames;
            while left >= per_chunk as u64 {
                w.write_all(&chunk)?;
                left -= per_chunk as u64;
            }
            w.write_all(&chunk[..left as usize * frame_len])?;
            w.shutdown(Shutdown::Write)
        }));
        let mut r = peer.sock.try_clone()?;
        let go = start_line.clone();
        readers.push(std::thread::spawn(move || -> io::Result<Instant> {
            let mut buf = vec![0u8; BUF];
            let mut counter = FrameCounter::default();
            go.wait();
            while counter.frames < frames {
                match r.read(&mut buf)? {
                    0 => return Err(io::Error::other("echo child ended early")),
                    n => counter.feed(&buf[..n]),
                }
            }
            Ok(Instant::now())
        }));
    }
    start_line.wait();
    let start = Instant::now();
    let mut end = start;
    for w in writers {
        w.join().expect("writer thread")?;
    }
    for r in readers {
        end = end.max(r.join().expect("reader thread")?);
    }
    drop(peers);
    Ok(end - start)
}

/// Pipelined echo of 20-byte frames (4 + 16 B) over `pairs` socketpairs:
/// frames per second, all pairs together.
pub(crate) fn echo_frames_per_sec(pairs: usize, frames_per_pair: u64) -> io::Result<f64> {
    let took = pipelined(pairs, 16, frames_per_pair)?;
    Ok((pairs as u64 * frames_per_pair) as f64 / took.as_secs_f64())
}

/// Echo of `n` frames of 1 MiB over one socketpair: payload megabytes
/// (10^6 B) per second in each direction.
pub(crate) fn bulk_mb_per_sec(n: u64) -> io::Result<f64> {
    bulk_mb_per_sec_of(n, 1 << 20)
}

/// Echo of `n` frames of `len` bytes over one socketpair, as
/// [`bulk_mb_per_sec`].
pub(crate) fn bulk_mb_per_sec_of(n: u64, len: usize) -> io::Result<f64> {
    let took = pipelined(1, len, n)?;
    Ok((n as usize * len) as f64 / took.as_secs_f64() / 1e6)
}

/// Blocking ping-pong of one 20-byte frame (4 + 16 B) with one child:
/// `reps` series of `n` round trips, each after `warmup` uncounted ones.
pub(crate) fn ping_pong(reps: usize, warmup: usize, n: usize) -> io::Result<Vec<Latency>> {
    let mut peer = Peer::spawn()?;
    let out = frame(16);
    let mut back = vec![0u8; out.len()];
    let mut series = Vec::with_capacity(reps);
    for _ in 0..reps {
        let mut samples = Vec::with_capacity(n);
        for i in 0..warmup + n {
            let t = Instant::now();
            peer.sock.write_all(&out)?;
            peer.sock.read_exact(&mut back)?;
            if i >= warmup {
                samples.push(t.elapsed().as_nanos() as u64);
            }
        }
        debug_assert_eq!(back, out);
        series.push(Latency::from_nanos(&samples));
    }
    Ok(series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_counted_across_any_split() {
        let mut stream = Vec::new();
        for body in [0usize, 1, 16, 300, 5] {
            stream.extend(frame(body));
        }
        for piece in [1, 2, 3, 7, 64, stream.len()] {
            let mut c = FrameCounter::default();
            for part in stream.chunks(piece) {
                c.feed(part);
            }
            assert_eq!(c.frames, 5, "pieces of {piece}");
            assert!(!c.in_body && c.have == 0);
        }
    }
}
