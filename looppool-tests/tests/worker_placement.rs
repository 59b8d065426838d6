//! `PoolBuilder::worker_cpus`: workers, and the workers that replace them,
//! run only on the CPUs given; a set the kernel cannot honour is refused
//! before any worker starts.

use std::time::Duration;

use looppool::StartError;
use looppool_tests::{eventually, probe_pool, sys, Job};

/// The CPUs this process may run on, from its `Cpus_allowed_list`
/// ("0-3,6", say).
fn allowed_cpus() -> Vec<usize> {
    let list = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:").map(str::to_owned))
        .unwrap();
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

/// The `Cpus_allowed_list` line of process `pid`'s status, e.g. "1" or "0-3".
fn cpus_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_their_replacements_run_only_on_the_cpus_given() {
    let allowed = allowed_cpus();
    let cpu = *allowed.last().unwrap();
    let (pool, _outputs) = probe_pool!()
        .workers(2)
        .worker_cpus([cpu])
        .start()
        .await
        .unwrap();
    let pids: Vec<u32> = pool.pids().into_iter().flatten().collect();
    assert_eq!(pids.len(), 2);
    for &pid in &pids {
        assert_eq!(cpus_of(pid), cpu.to_string(), "worker {pid}");
    }
    // This process keeps every CPU it had.
    assert_eq!(allowed_cpus(), allowed);
    for x in 0..100 {
        assert_eq!(pool.call(Job::Double(x)).await.unwrap(), 2 * x);
    }
    sys::signal(pids[0], libc::SIGKILL);
    let replaced = eventually(
        Duration::from_secs(10),
        || matches!(pool.pids()[0], Some(p) if p != pids[0]),
    )
    .await;
    assert!(replaced, "worker 0 was not replaced");
    let new_pid = pool.pids()[0].unwrap();
    assert_eq!(cpus_of(new_pid), cpu.to_string(), "replacement {new_pid}");
    assert_eq!(pool.call(Job::Double(21)).await.unwrap(), 42);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_set_the_kernel_cannot_honour_is_refused_before_any_worker_starts() {
    let mut sets: Vec<(Vec<usize>, &str)> =
        vec![(vec![], "no CPU"), (vec![4096], "past the kernel's limit")];
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let last_online: usize = online
        .trim()
        .rsplit(['-', ','])
        .next()
        .unwrap()
        .parse()
        .unwrap();
    if last_online + 1 < 1024 {
        sets.push((vec![last_online + 1], "no CPU that is online"));
    }
    for (cpus, why) in sets {
        let err = probe_pool!()
            .workers(1)
            .worker_cpus(cpus.clone())
            .start()
            .await
            .map(|_| ())
            .unwrap_err();
        let StartError::Config(e) = &err else {
            panic!("worker_cpus({cpus:?}): {err:?}, not a configuration error");
        };
        let message = e.to_string();
        assert!(
            message.contains("worker_cpus") && message.contains(why),
            "worker_cpus({cpus:?}): {message}"
        );
    }
}
