//! Resource hygiene over long runs: thousands of worker restarts (crashes,
//! kills and protocol violations) and hundreds of failed starts leave the
//! parent with the descriptors, child processes and memory it had before,
//! and no zombie, even when a start is abandoned while its worker is being
//! forked.
//!
//! Both tests count this process's descriptors and children, so they run
//! one at a time (and this file holds no other test).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use looppool::{CallError, LossCause, Pool, RestartPolicy, WorkerEvent};
use looppool_tests::{children, eventually, open_fds, probe_pool, resident_bytes, Job, Probe};
use tokio::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Restarts in the long run: 1,000 per worker. Measured on a two-core
/// machine with a debug build: about 5 ms each, 10 s in all (the test
/// prints its figures; 8,000 took 34 s, with resident memory flat after
/// the first few hundred).
const RESTARTS: usize = 2_000;

/// Restarts before the baseline is taken: allocator arenas and buffers
/// reach their working size within the first few hundred.
const WARM_UP: usize = 200;

/// Waits until this process has exactly `fds` descriptors and exactly the
/// pool's live workers as children; fails with what is left otherwise.
async fn settles(fds: usize, pids: &[u32]) {
    let clean = eventually(Duration::from_secs(20), || {
        let kids = children();
        open_fds() == fds
            && kids.len() == pids.len()
            && kids
                .iter()
                .all(|(pid, state)| pids.contains(pid) && *state != 'Z')
    })
    .await;
    assert!(
        clean,
        "{} descriptors (expected {fds}): {:?}; children {:?} (expected {pids:?})",
        open_fds(),
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .collect::<Vec<_>>(),
        children()
    );
}

/// The descriptors this process holds that match `pick`, by what
/// `/proc/self/fd` says they are (`socket:[inode]`, say), once per
/// descriptor.
fn descriptors(pick: impl Fn(&str) -> bool) -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter(|l| pick(l))
        .collect()
}

/// The sockets this process holds, once per descriptor.
fn sockets() -> Vec<String> {
    descriptors(|l| l.starts_with("socket:"))
}

/// The pidfds this process holds (the pool watches each local worker's
/// process through one).
fn pidfds() -> Vec<String> {
    descriptors(|l| l.contains("pidfd"))
}

/// Ends worker `w`'s current process in one of four ways, through a call
/// that must be lost: an exit, a SIGKILL, garbage on the wire, or a frame
/// cut short by an exit.
async fn end_worker(pool: &Pool<Probe>, w: usize, how: usize) -> LossCause {
    let call = match how % 4 {
        0 => pool.call_to(w, Job::Exit(3)).await,
        1 => {
            let killer = async {
                while pool.in_flight()[w] == 0 {
                    tokio::task::yield_now().await;
                }
                pool.kill_worker(w);
            };
            let sleep = Job::hold(0);
            tokio::join!(pool.call_to(w, sleep), killer).0
        }
        2 => {
            pool.call_to(w, Job::WriteRaw(vec![3, 0, 0, 0, 0x7e, 0, 0]))
                .await
        }
        _ => {
            let mut cut = 9u32.to_le_bytes().to_vec();
            cut.push(0x84);
            pool.call_to(
                w,
                Job::WriteRawThenExit {
                    bytes: cut,
                    linger_ms: 0,
                },
            )
            .await
        }
    };
    match call {
        Err(CallError::WorkerLost(lost)) => lost.cause,
        other => panic!("worker {w}, way {how}: expected a lost worker, got {other:?}"),
    }
}

#[tokio::test]
async fn thousands_of_restarts_leak_no_descriptors_processes_or_memory() {
    let _one = ONE_AT_A_TIME.lock().await;
    // The runtime's own sockets (tokio's signal driver holds a pair).
    let runtime_sockets = sockets();
    let started = Arc::new(AtomicUsize::new(0));
    let counter = started.clone();
    let (pool, _outputs) = probe_pool!()
        .workers(2)
        .restart_policy(
            RestartPolicy::intensity(u32::MAX, Duration::from_secs(1))
                .with_backoff(Duration::ZERO, Duration::ZERO),
        )
        .on_event(move |e| {
            if matches!(e, WorkerEvent::Started { .. }) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
        .start()
        .await
        .unwrap();

    // Warm up, so that what is allocated once (threads, buffers, the
    // allocator's arenas) is in the baseline.
    for how in 0..WARM_UP {
        end_worker(&pool, how % 2, how / 2).await;
    }
    for w in 0..2 {
        assert_eq!(pool.call_to(w, Job::WhoAmI).await.unwrap(), w as u64);
    }
    let pids: Vec<u32> = pool.pids().into_iter().flatten().collect();
    settles(open_fds(), &pids).await;
    let fds = open_fds();
    let rss = resident_bytes();
    let before = started.load(Ordering::Relaxed);

    let clock = Instant::now();
    let per_worker = RESTARTS / 2;
    let runs = (0..2).map(|w| {
        let pool = pool.clone();
        async move {
            let mut causes = [0usize; 2];
            for i in 0..per_worker {
                match end_worker(&pool, w, i).await {
                    LossCause::Protocol(_) => causes[1] += 1,
                    LossCause::Crashed => causes[0] += 1,
                    other => panic!("unexpected cause {other:?}"),
                }
            }
            causes
        }
    });
    let causes = futures_join(runs.collect()).await;
    let elapsed = clock.elapsed();
    for w in 0..2 {
        assert_eq!(pool.call_to(w, Job::WhoAmI).await.unwrap(), w as u64);
    }
    let restarted = started.load(Ordering::Relaxed) - before;
    eprintln!(
        "{restarted} restarts in {elapsed:.1?} ({:.1} ms each); causes per worker \
         [crashed, protocol]: {causes:?}; resident memory {} -> {} KiB",
        elapsed.as_secs_f64() * 1e3 / restarted as f64,
        rss / 1024,
        resident_bytes() / 1024
    );
    assert_eq!(restarted, RESTARTS);
    for c in &causes {
        assert_eq!(c[1], per_worker / 2, "half the ends are protocol losses");
    }

    // Back to the baseline: the same number of descriptors, only the two
    // live workers as children, no zombie; memory did not grow with the
    // restarts (a leak of 512 bytes per restart would show as 1 MiB).
    let pids: Vec<u32> = pool.pids().into_iter().flatten().collect();
    assert_eq!(pids.len(), 2);
    settles(fds, &pids).await;
    let grown = resident_bytes().saturating_sub(rss);
    assert!(
        grown < 1 << 20,
        "resident memory grew by {} KiB over {RESTARTS} restarts",
        grown / 1024
    );

    // Shutting down closes the workers' connections (one or two
    // descriptors each, as the transport sees fit) and the pidfds their
    // processes are watched through, and nothing else.
    let sockets = sockets()
        .iter()
        .filter(|s| !runtime_sockets.contains(s))
        .count();
    assert!(sockets >= 2, "the two workers' connections are sockets");
    let pidfds = pidfds().len();
    assert_eq!(
        pidfds,
        2,
        "one pidfd per worker: {:?}",
        descriptors(|_| true)
    );
    pool.shutdown().await;
    settles(fds - sockets - pidfds, &[]).await;
}

#[tokio::test]
async fn hundreds_of_failed_starts_leak_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let program = env!("CARGO_BIN_EXE_bad-handshake");
    let attempt = |i: usize| async move {
        let args: &[&str] = match i % 3 {
            0 => &["wrong-magic"],
            1 => &["exit"],
            _ => &["silent"],
        };
        Pool::<Probe>::builder()
            .init_default()
            .program(program)
            .args(args)
            .workers(2)
            .start_timeout(Duration::from_millis(20))
            .start()
            .await
            .map(|_| ())
            .unwrap_err()
    };
    for i in 0..6 {
        attempt(i).await;
    }
    settles(open_fds(), &[]).await;
    let fds = open_fds();
    let rss = resident_bytes();
    for i in 0..300 {
        let err = attempt(i).await;
        assert!(err.worker().is_some(), "{err}");
    }
    settles(fds, &[]).await;
    // Starts whose deadline passes while the worker is being forked (the
    // spawn runs on a thread of its own, which finishes it regardless): the
    // child the abandoned spawn made is killed and reaped, not left asleep
    // or a zombie, and it never gets a descriptor opened since under the
    // number its connection had.
    for timeout_us in (0..200).map(|i| 20 + 10 * (i % 100)) {
        let err = Pool::<Probe>::builder()
            .init_default()
            .program(program)
            .args(["silent"])
            .workers(1)
            .start_timeout(Duration::from_micros(timeout_us))
            .start()
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(err.worker().is_some(), "{err}");
    }
    settles(fds, &[]).await;
    let grown = resident_bytes().saturating_sub(rss);
    assert!(
        grown < 2 << 20,
        "resident memory grew by {} KiB",
        grown / 1024
    );
}

/// Runs the futures concurrently on this task and collects their results.
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, fut) in out.iter_mut().zip(set.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}
