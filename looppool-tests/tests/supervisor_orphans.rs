//! Workers never outlive their parent, however it dies.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use looppool_tests::process_gone;

#[test]
fn sigkilled_parent_takes_its_workers_down_within_a_second() {
    for round in 0..20 {
        let mut parent = Command::new(env!("CARGO_BIN_EXE_orphan-parent"))
            .arg(env!("CARGO_BIN_EXE_test-worker"))
            .arg("3")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(parent.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pids: Vec<u32> = line
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
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
