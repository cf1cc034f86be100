//! A log-linear histogram in the manner of HDR histograms: 32 linear buckets per power of
//! two, so any recorded value is known to within 1/32 (about 3 %), over the whole `u64` range,
//! in a fixed 15 KiB.

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    count: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            count: 0,
            max: 0,
        }
    }
}

fn index(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let shift = exponent - SUB_BITS;
    ((u64::from(shift) + 1) * SUB + ((value >> shift) - SUB)) as usize
}

/// The highest value that falls in bucket `index`.
fn highest_in(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index;
    }
    let shift = index / SUB - 1;
    let mantissa = index % SUB + SUB;
    let next = u128::from(mantissa + 1) << shift;
    u64::try_from(next - 1).unwrap_or(u64::MAX)
}

impl Histogram {
    pub(crate) fn record(&mut self, value: u64) {
        self.counts[index(value)] += 1;
        self.count += 1;
        self.max = self.max.max(value);
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// The value below which a fraction `q` of recordings fall, rounded up to its bucket's
    /// highest value (never above the true maximum); 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return highest_in(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_that_contains_it_within_three_percent() {
        for value in [
            0,
            1,
            31,
            32,
            33,
            63,
            64,
            65,
            1000,
            123_456,
            9_999_999,
            u64::MAX / 3,
            u64::MAX,
        ] {
            let i = index(value);
            assert!(i < BUCKETS, "{value}");
            assert!(highest_in(i) >= value, "{value}");
            let low = if i == 0 { 0 } else { highest_in(i - 1) + 1 };
            assert!(low <= value, "{value}");
            assert!(
                (highest_in(i) - low) as f64 <= value as f64 / 31.0 + 1.0,
                "{value}"
            );
        }
    }

    #[test]
    fn quantiles_of_a_uniform_range_are_close() {
        let mut histogram = Histogram::default();
        for value in 1..=10_000 {
            histogram.record(value);
        }
        let p50 = histogram.quantile(0.5);
        let p99 = histogram.quantile(0.99);
        assert!((4900..=5200).contains(&p50), "{p50}");
        assert!((9800..=10_000).contains(&p99), "{p99}");
        assert_eq!(histogram.quantile(1.0), 10_000);
        assert_eq!(histogram.max(), 10_000);
        assert_eq!(histogram.count(), 10_000);
    }

    #[test]
    fn an_empty_histogram_reports_zero() {
        assert_eq!(Histogram::default().quantile(0.99), 0);
    }
}
