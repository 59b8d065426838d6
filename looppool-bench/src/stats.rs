//! Medians and percentiles, computed the way the Python peers compute them.

/// The median of `values` (the mean of the middle two for an even count);
/// NaN for none.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile `p` (0–100) of already sorted values, as the
/// peers' `common.percentile` does; NaN for none.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// Latency figures of one series of round trips, in microseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Latency {
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) mean_us: f64,
    pub(crate) max_us: f64,
}

impl Latency {
    /// Summarises round-trip times given in nanoseconds.
    pub(crate) fn from_nanos(samples: &[u64]) -> Latency {
        let mut us: Vec<f64> = samples.iter().map(|&ns| ns as f64 / 1e3).collect();
        us.sort_by(f64::total_cmp);
        Latency {
            p50_us: percentile(&us, 50.0),
            p99_us: percentile(&us, 99.0),
            mean_us: us.iter().sum::<f64>() / us.len().max(1) as f64,
            max_us: us.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// The median of a series of repetitions, and its spread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Summary {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) runs: usize,
}

impl Summary {
    /// Summarises the values of `runs` repetitions.
    pub(crate) fn of(values: &[f64]) -> Summary {
        Summary {
            median: median(values),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            runs: values.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn nearest_rank_percentiles_match_the_peers() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        // ceil(0.99 * 5000) = 4950
        let w: Vec<f64> = (1..=5000).map(f64::from).collect();
        assert_eq!(percentile(&w, 99.0), 4950.0);
    }

    #[test]
    fn latency_is_reported_in_microseconds() {
        let l = Latency::from_nanos(&[1_000, 3_000, 2_000]);
        assert_eq!(l.p50_us, 2.0);
        assert_eq!(l.max_us, 3.0);
        assert_eq!(l.mean_us, 2.0);
    }

    #[test]
    fn summary_keeps_the_spread() {
        let s = Summary::of(&[5.0, 1.0, 3.0]);
        assert_eq!((s.median, s.min, s.max, s.runs), (3.0, 1.0, 5.0, 3));
    }
}
