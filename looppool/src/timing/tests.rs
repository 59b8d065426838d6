use std::time::Duration;

use super::*;

fn ms(n: u64) -> u64 {
    n * 1_000_000
}

#[test]
fn bounds_go_in_one_two_five_steps_from_a_microsecond_to_100_seconds() {
    assert_eq!(BOUNDS_NS[0], 1_000);
    assert_eq!(BOUNDS_NS[1], 2_000);
    assert_eq!(BOUNDS_NS[2], 5_000);
    assert_eq!(BOUNDS_NS[3], 10_000);
    assert_eq!(BOUNDS_NS[24], 100_000_000_000);
    assert!(BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn a_duration_goes_in_the_first_bucket_whose_bound_it_does_not_pass() {
    assert_eq!(bucket_of(0), 0);
    assert_eq!(bucket_of(1_000), 0, "bounds are inclusive");
    assert_eq!(bucket_of(1_001), 1);
    assert_eq!(bucket_of(ms(50) + 1), bucket_of(ms(100)));
    assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
}

#[test]
fn quantiles_fall_in_the_bucket_of_the_ranked_duration() {
    let h = AtomicHistogram::default();
    for _ in 0..99 {
        h.record(ms(3), 1);
    }
    h.record(ms(60), 1);
    let h = h.snapshot();
    assert_eq!(h.count(), 100);
    let p50 = h.quantile(0.5).unwrap();
    assert!(p50 > Duration::from_millis(2) && p50 <= Duration::from_millis(5));
    let max = h.quantile(1.0).unwrap();
    assert!(max > Duration::from_millis(50) && max <= Duration::from_millis(100));
    assert_eq!(
        h.mean(),
        Some(Duration::from_nanos((99 * ms(3) + ms(60)) / 100))
    );
    assert_eq!(Histogram::default().quantile(0.5), None);
}

#[test]
fn the_last_bucket_answers_with_its_lower_bound() {
    let h = AtomicHistogram::default();
    h.record(ms(500_000), 1);
    assert_eq!(h.snapshot().quantile(0.5), Some(Duration::from_secs(100)));
}

#[test]
fn weights_count_for_the_tasks_a_sample_stands_for() {
    let h = AtomicHistogram::default();
    h.record(ms(1), 64);
    let h = h.snapshot();
    assert_eq!(h.count(), 64);
    assert_eq!(h.sum(), Duration::from_millis(64));
}

#[test]
fn absurd_durations_saturate_and_never_panic() {
    let h = AtomicHistogram::default();
    h.record(u64::MAX, u32::MAX);
    h.record(u64::MAX, u32::MAX);
    let h = h.snapshot();
    assert_eq!(h.sum(), Duration::from_nanos(u64::MAX));
    assert_eq!(h.count(), 2 * u64::from(u32::MAX));
}

#[test]
fn merge_adds_and_since_subtracts() {
    let a = AtomicHistogram::default();
    a.record(ms(1), 1);
    let before = a.snapshot();
    a.record(ms(20), 2);
    let after = a.snapshot();
    let delta = after.since(&before);
    assert_eq!(delta.count(), 2);
    assert!(delta.quantile(0.0).unwrap() >= Duration::from_millis(10));
    let mut sum = before.clone();
    sum.merge(&delta);
    assert_eq!(sum, after);
}

#[test]
fn json_names_each_bucket_by_its_bound() {
    let a = AtomicHistogram::default();
    a.record(1_500, 3);
    a.record(ms(200_000), 1);
    let h = a.snapshot();
    let json = serde_json::to_string(&h).unwrap();
    assert_eq!(
        json,
        r#"{"count":4,"sum_ns":200000004500,"buckets":[[2000,3],[null,1]]}"#
    );
    let back: Histogram = serde_json::from_str(&json).unwrap();
    assert_eq!(back, h);
}

#[test]
fn an_unknown_bound_goes_to_the_bucket_it_falls_in() {
    let h: Histogram =
        serde_json::from_str(r#"{"count":1,"sum_ns":7,"buckets":[[3000,1]]}"#).unwrap();
    assert_eq!(
        h.buckets().nth(2),
        Some((Some(Duration::from_micros(5)), 1))
    );
}

/// Runs `tasks` tasks through `s` at `per_sec` a second (time in ns from
/// `start`), adjusting at every task; returns (timed, their weights' sum).
fn stream(s: &mut Sampler, start: u64, tasks: u64, per_sec: u64) -> (u64, u64) {
    let (mut timed, mut weights) = (0, 0);
    for i in 0..tasks {
        s.adjust(start + i * 1_000_000_000 / per_sec);
        if let Some(w) = s.hit() {
            timed += 1;
            weights += u64::from(w);
        }
    }
    (timed, weights)
}

#[test]
fn a_slow_stream_has_every_task_timed() {
    let mut s = Sampler::new(true, 1);
    let (timed, weights) = stream(&mut s, 0, 500, 100);
    assert_eq!((timed, weights), (500, 500));
}

#[test]
fn a_fast_stream_is_sampled_and_the_weights_estimate_its_tasks() {
    let mut s = Sampler::new(true, 2);
    // Ten million a second for a simulated second.
    let tasks = 10_000_000;
    let (timed, weights) = stream(&mut s, 0, tasks, tasks);
    assert_eq!(s.every(), 10_000);
    assert!(
        (1_000..12_000).contains(&timed),
        "about a thousand a second, and every task of the first millisecond: {timed}"
    );
    let error = (weights as f64 - tasks as f64).abs() / tasks as f64;
    assert!(error < 0.1, "weights {weights} for {tasks} tasks");
}

#[test]
fn a_stream_that_slows_down_is_timed_again_at_once() {
    let mut s = Sampler::new(true, 3);
    stream(&mut s, 0, 1_000_000, 10_000_000);
    assert!(s.every() > 1000);
    // A pause, then one task a second: the first window after it sees the
    // slow rate, and the next task is timed.
    let later = 10_000_000_000;
    s.adjust(later);
    assert_eq!(s.every(), 1);
    assert_eq!(s.hit(), Some(1));
    assert_eq!(s.hit(), Some(1));
}

#[test]
fn an_off_sampler_times_nothing() {
    let mut s = Sampler::new(false, 4);
    let (timed, _) = stream(&mut s, 0, 100_000, 1000);
    assert_eq!(timed, 0);
}
