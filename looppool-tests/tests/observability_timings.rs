//! Where time goes: the queue-wait, run-time and output-wait histograms of
//! real worker processes, per worker and pool-wide, through `stats()` and
//! Prometheus, against real sleeps and a crash.

use std::time::Duration;

use looppool::{Histogram, Output, PoolStats};
use looppool_tests::{eventually, next_output, probe_pool, Job};

/// The count of `h`'s buckets that lie wholly above `low` and at or below
/// `high` (the unbounded last bucket counts as above any bound).
fn within(h: &Histogram, low: Duration, high: Duration) -> u64 {
    let mut previous = Duration::ZERO;
    let mut n = 0;
    for (bound, count) in h.buckets() {
        let above = previous >= low;
        let below = bound.is_some_and(|b| b <= high);
        if above && below {
            n += count;
        }
        previous = bound.unwrap_or(Duration::MAX);
    }
    n
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Waits until the pool has completed `n` tasks (its reader has seen them).
async fn until_done(pool: &looppool::Pool<looppool_tests::Probe>, n: u64) -> PoolStats {
    let done = eventually(Duration::from_secs(20), || pool.stats().done >= n).await;
    assert!(done, "{:?}", pool.stats());
    pool.stats()
}

#[tokio::test]
async fn a_handler_that_sleeps_50_ms_lands_in_the_bucket_above_50_ms() {
    let (pool, mut outputs) = probe_pool!().workers(2).start().await.unwrap();
    // Sent at once, so they sleep side by side: each runs about 50 ms, and
    // none waits for another.
    for i in 0..10 {
        let job = Job::Sleep { ms: 50, value: i };
        pool.submit_to(0, job).await.unwrap();
    }
    for _ in 0..10 {
        next_output(&mut outputs).await;
    }
    let stats = until_done(&pool, 10).await;
    let (w0, w1) = (&stats.workers[0], &stats.workers[1]);
    println!("worker 0: {w0:?}");
    // A pool this quiet times every task.
    assert_eq!(w0.run_time.count(), 10, "{:?}", w0.run_time);
    assert_eq!(within(&w0.run_time, ms(50), ms(100)), 10, "{w0:?}");
    let p50 = w0.run_time.quantile(0.5).unwrap();
    assert!(p50 > ms(50) && p50 <= ms(100), "{p50:?}");
    // Their stay beyond the run: far below the run itself.
    assert_eq!(w0.queue_wait.count(), 10);
    assert_eq!(within(&w0.queue_wait, Duration::ZERO, ms(50)), 10, "{w0:?}");
    // Worker 1 ran nothing; the pool's figures are worker 0's.
    assert!(w1.run_time.is_empty() && w1.queue_wait.is_empty());
    assert_eq!(stats.run_time, w0.run_time);
    assert_eq!(stats.queue_wait, w0.queue_wait);
    pool.shutdown().await;
}

#[tokio::test]
async fn tasks_behind_a_blocked_loop_show_queue_wait() {
    let (pool, mut outputs) = probe_pool!().workers(1).start().await.unwrap();
    // The worker runs them one after the other (each blocks its loop): the
    // third waits about 120 ms before it starts, the fourth about 180 ms.
    for i in 0..4 {
        let job = Job::Spin { ms: 60, value: i };
        pool.submit_to(0, job).await.unwrap();
    }
    for _ in 0..4 {
        next_output(&mut outputs).await;
    }
    let stats = until_done(&pool, 4).await;
    let w = &stats.workers[0];
    println!("{w:?}");
    assert_eq!(w.run_time.count(), 4);
    assert_eq!(within(&w.run_time, ms(50), Duration::MAX), 4, "{w:?}");
    assert_eq!(w.queue_wait.count(), 4);
    assert!(
        within(&w.queue_wait, ms(100), Duration::MAX) >= 2,
        "two waited behind two or three others: {:?}",
        w.queue_wait
    );
    pool.shutdown().await;
}

#[tokio::test]
async fn a_consumer_that_reads_late_shows_output_wait() {
    let (pool, mut outputs) = probe_pool!().workers(2).start().await.unwrap();
    for i in 0..3 {
        pool.submit_to(1, Job::Double(i)).await.unwrap();
    }
    // The parent holds the three outputs; the consumer takes them 300 ms
    // later.
    until_done(&pool, 3).await;
    tokio::time::sleep(ms(300)).await;
    for _ in 0..3 {
        assert!(matches!(
            next_output(&mut outputs).await,
            Output::Value { .. }
        ));
    }
    let stats = pool.stats();
    let w1 = &stats.workers[1];
    println!("{w1:?}");
    assert_eq!(w1.output_wait.count(), 3);
    assert_eq!(within(&w1.output_wait, ms(200), ms(1000)), 3, "{w1:?}");
    assert!(stats.workers[0].output_wait.is_empty());
    assert_eq!(stats.output_wait, w1.output_wait);
    // The tasks themselves did not wait.
    assert_eq!(within(&w1.run_time, Duration::ZERO, ms(50)), 3, "{w1:?}");
    pool.shutdown().await;
}

#[tokio::test]
async fn a_worker_that_dies_mid_task_leaves_the_histograms_whole() {
    let (pool, mut outputs) = probe_pool!().workers(1).start().await.unwrap();
    let pid = pool.pids()[0].unwrap();
    for i in 0..3 {
        pool.call(Job::Double(i)).await.unwrap();
        tokio::time::sleep(ms(5)).await;
    }
    // A task that sleeps for a minute is held when the worker exits.
    pool.submit(Job::hold(0)).await.unwrap();
    tokio::time::sleep(ms(50)).await;
    pool.submit(Job::Exit(3)).await.unwrap();
    for _ in 0..2 {
        assert!(matches!(
            next_output(&mut outputs).await,
            Output::Lost { .. }
        ));
    }
    let replaced = eventually(Duration::from_secs(20), || {
        pool.pids()[0].is_some_and(|p| p != pid)
    })
    .await;
    assert!(replaced);
    for i in 0..3 {
        pool.call(Job::Double(i)).await.unwrap();
        tokio::time::sleep(ms(5)).await;
    }
    let stats = pool.stats();
    let w = &stats.workers[0];
    println!("{w:?}");
    assert_eq!(stats.lost, 2);
    // The six tasks that completed, none of the lost ones: nothing ran or
    // waited for seconds.
    assert_eq!(w.run_time.count(), 6, "{:?}", w.run_time);
    assert_eq!(within(&w.run_time, Duration::ZERO, ms(100)), 6);
    assert_eq!(w.queue_wait.count(), 6);
    assert_eq!(within(&w.queue_wait, Duration::ZERO, ms(1000)), 6);
    assert!(w.run_time.sum() < ms(600), "{:?}", w.run_time.sum());
    pool.shutdown().await;
}

#[tokio::test]
async fn prometheus_shows_the_histograms_per_worker_and_for_the_pool() {
    let (pool, mut outputs) = probe_pool!()
        .workers(2)
        .name("timed")
        .start()
        .await
        .unwrap();
    for i in 0..4 {
        let job = Job::Sleep { ms: 50, value: i };
        pool.submit_to(1, job).await.unwrap();
    }
    for _ in 0..4 {
        next_output(&mut outputs).await;
    }
    until_done(&pool, 4).await;
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(pool.prometheus_collector()));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .rsplit_once(' ')
            .unwrap()
            .1
            .to_owned()
    };
    let bucket = |worker: &str, le: &str| {
        line(&format!(
            "looppool_worker_run_time_seconds_bucket{{le=\"{le}\",pool=\"timed\",worker=\"{worker}\"}}"
        ))
    };
    assert_eq!(bucket("1", "0.05"), "0", "{text}");
    assert_eq!(bucket("1", "0.1"), "4", "{text}");
    assert_eq!(bucket("1", "+Inf"), "4");
    assert_eq!(bucket("0", "+Inf"), "0");
    assert_eq!(
        line("looppool_run_time_seconds_count{pool=\"timed\"}"),
        "4",
        "{text}"
    );
    let sum: f64 = line("looppool_run_time_seconds_sum{pool=\"timed\"}")
        .parse()
        .unwrap();
    assert!((0.2..0.4).contains(&sum), "{sum}");
    assert!(text.contains("# TYPE looppool_worker_queue_wait_seconds histogram"));
    assert!(text.contains("looppool_output_wait_seconds_count{pool=\"timed\"} 4"));
    pool.shutdown().await;
}

#[tokio::test]
async fn without_timings_the_histograms_stay_empty() {
    let (pool, mut outputs) = probe_pool!()
        .workers(1)
        .no_task_timings()
        .start()
        .await
        .unwrap();
    for i in 0..5 {
        pool.submit(Job::Double(i)).await.unwrap();
    }
    for _ in 0..5 {
        next_output(&mut outputs).await;
    }
    let stats = until_done(&pool, 5).await;
    assert!(stats.run_time.is_empty() && stats.queue_wait.is_empty());
    assert!(stats.output_wait.is_empty());
    pool.shutdown().await;
}

#[tokio::test]
async fn a_loop_held_by_a_handler_reports_its_lag() {
    let (pool, mut outputs) = probe_pool!()
        .workers(2)
        .report_interval(ms(300))
        .start()
        .await
        .unwrap();
    // Worker 0's loop is held for 250 ms at a time; worker 1's is idle.
    for i in 0..6 {
        let job = Job::Spin { ms: 250, value: i };
        pool.submit_to(0, job).await.unwrap();
    }
    let lagged = eventually(Duration::from_secs(20), || {
        let stats = pool.stats();
        stats.workers[0]
            .last_report
            .as_ref()
            .is_some_and(|r| r.loop_lag_max >= ms(150))
    })
    .await;
    let stats = pool.stats();
    println!("{:?}", stats.workers[0].last_report);
    assert!(lagged);
    let idle = stats.workers[1].last_report.as_ref().expect("a report");
    println!("{idle:?}");
    assert!(idle.loop_lag_max < ms(50), "{idle:?}");
    assert!(idle.loop_lag_mean <= idle.loop_lag_max);
    for _ in 0..6 {
        next_output(&mut outputs).await;
    }
    pool.shutdown().await;
}
