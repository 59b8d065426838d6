//! Workers never outlive their parent, however it dies.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use looppool_tests::process_gone;

/// Starts the orphan-parent program with `args`; returns it, the worker
/// pids it printed, and the line they came on.
fn start_parent(args: &[&str]) -> (std::process::Child, Vec<u32>, String) {
    let mut parent = Command::new(env!("CARGO_BIN_EXE_orphan-parent"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(parent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pids = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    (parent, pids, line)
}

#[test]
fn sigkilled_parent_takes_its_workers_down_within_a_second() {
    for round in 0..20 {
        let (mut parent, pids, line) = start_parent(&[env!("CARGO_BIN_EXE_test-worker"), "3"]);
        assert_eq!(pids.len(), 3, "round {round}: {line:?}");
        assert!(pids.iter().all(|&p| !process_gone(p)));

        parent.kill().unwrap(); // SIGKILL
        let killed = Instant::now();
        parent.wait().unwrap();
        while !pids.iter().all(|&p| process_gone(p)) {
            assert!(
                killed.elapsed() < Duration::from_secs(1),
                "round {round}: workers {pids:?} outlived their parent"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
fn through_a_broker_local_workers_die_with_the_parent_and_remote_ones_soon_after() {
    let Some(server) = looppool_tests::nats::NatsServer::start() else {
        return;
    };
    let worker = env!("CARGO_BIN_EXE_test-worker");
    let mut remote =
        looppool_tests::nats::remote_worker(worker, &server.url, "orphans", "probe", None);
    let (mut parent, pids, line) = start_parent(&[worker, "3", &server.url]);
    assert_eq!(pids.len(), 3, "{line:?}");
    assert_eq!(pids[2], remote.id(), "the remote worker joined as worker 2");

    parent.kill().unwrap(); // SIGKILL: no goodbye reaches anyone
    let killed = Instant::now();
    parent.wait().unwrap();
    // Local workers receive the parent-death signal.
    while !pids[..2].iter().all(|&p| process_gone(p)) {
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "local workers {pids:?} outlived their parent"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // The remote one notices the parent's heartbeats stopped (1 s of silence).
    loop {
        if let Some(status) = remote.try_wait().unwrap() {
            assert!(!status.success(), "{status:?}");
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "the remote worker outlived its parent by 3 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
