//! `least_conn` and `random_two`: pick by how busy each backend is right now.
//!
//! Load is the backend's in-flight requests (assigned and not finished, counted once for the
//! whole process by an RAII guard), relative to its weight: `a` is less loaded than `b` when
//! `a.in_flight * b.weight < b.in_flight * a.weight`.
//!
//! `least_conn` (nginx's `ngx_http_upstream_get_least_conn_peer`) scans every candidate and
//! breaks ties by smooth weighted round-robin among the tied ones; at idle every backend ties,
//! so it balances like round-robin. `random_two` (power of two choices) draws two distinct
//! backends by weight and takes the less loaded: no full scan, for large pools.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Balancer, PickContext, RoundRobin};

/// In-flight counters, shared with the backends' live state.
pub type Loads = Vec<Arc<AtomicU64>>;

fn lighter(loads: &Loads, weights: &[u64], a: usize, b: usize) -> std::cmp::Ordering {
    let la = u128::from(loads[a].load(Ordering::Relaxed)) * u128::from(weights[b]);
    let lb = u128::from(loads[b].load(Ordering::Relaxed)) * u128::from(weights[a]);
    la.cmp(&lb)
}

#[derive(Debug)]
pub struct LeastConn {
    weights: Vec<u64>,
    loads: Loads,
    ties: RoundRobin,
}

impl LeastConn {
    /// Weights (0 for `down`) and the in-flight counters, in server order.
    pub fn new(weights: Vec<u32>, loads: Loads) -> Self {
        LeastConn {
            ties: RoundRobin::new(weights.iter().copied()),
            weights: weights.into_iter().map(u64::from).collect(),
            loads,
        }
    }
}

impl Balancer for LeastConn {
    fn pick(&self, ctx: &PickContext<'_>, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut tied = false;
        for i in 0..self.weights.len() {
            if self.weights[i] == 0 || !eligible(i) {
                continue;
            }
            match best {
                None => best = Some(i),
                Some(b) => match lighter(&self.loads, &self.weights, i, b) {
                    std::cmp::Ordering::Less => {
                        best = Some(i);
                        tied = false;
                    }
                    std::cmp::Ordering::Equal => tied = true,
                    std::cmp::Ordering::Greater => {}
                },
            }
        }
        let best = best?;
        if !tied {
            return Some(best);
        }
        let tie = |i: usize| {
            eligible(i) && lighter(&self.loads, &self.weights, i, best) == std::cmp::Ordering::Equal
        };
        // Loads may have moved since the scan; the scan's winner stands if no tie is left.
        self.ties.pick(ctx, &tie).or(Some(best))
    }
}

#[derive(Debug)]
pub struct RandomTwo {
    weights: Vec<u64>,
    /// Running sums of the weights, for drawing by weight.
    cumulative: Vec<u64>,
    loads: Loads,
}

impl RandomTwo {
    pub fn new(weights: Vec<u32>, loads: Loads) -> Self {
        let weights: Vec<u64> = weights.into_iter().map(u64::from).collect();
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, w| {
                *sum += w;
                Some(*sum)
            })
            .collect();
        RandomTwo {
            weights,
            cumulative,
            loads,
        }
    }

    fn draw(&self) -> Option<usize> {
        let total = *self.cumulative.last()?;
        if total == 0 {
            return None;
        }
        let r = fastrand::u64(..total);
        Some(self.cumulative.partition_point(|&c| c <= r))
    }
}

/// Draws per pick before falling back to a scan (many unavailable backends).
const DRAWS: usize = 8;

impl Balancer for RandomTwo {
    fn pick(&self, _ctx: &PickContext<'_>, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut first: Option<usize> = None;
        for _ in 0..DRAWS {
            let i = self.draw()?;
            if !eligible(i) || first == Some(i) {
                continue;
            }
            match first {
                None => first = Some(i),
                Some(a) => {
                    return Some(match lighter(&self.loads, &self.weights, i, a) {
                        std::cmp::Ordering::Less => i,
                        _ => a,
                    });
                }
            }
        }
        // Few candidates left: scan them all for the least loaded.
        (0..self.weights.len())
            .filter(|&i| self.weights[i] > 0 && eligible(i))
            .min_by(|&a, &b| lighter(&self.loads, &self.weights, a, b))
            .or(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    const CTX: PickContext<'static> = PickContext {
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        key: b"",
    };

    fn loads(values: &[u64]) -> Loads {
        values
            .iter()
            .map(|&v| Arc::new(AtomicU64::new(v)))
            .collect()
    }

    #[test]
    fn least_conn_picks_the_least_loaded_relative_to_weight() {
        // in-flight 4, 1, 3 with weights 1, 1, 5: ratios 4, 1, 0.6 -> c.
        let l = LeastConn::new(vec![1, 1, 5], loads(&[4, 1, 3]));
        assert_eq!(l.pick(&CTX, &|_| true), Some(2));
        assert_eq!(l.pick(&CTX, &|i| i != 2), Some(1));
        assert_eq!(l.pick(&CTX, &|_| false), None);
    }

    #[test]
    fn least_conn_breaks_ties_by_weighted_round_robin() {
        let l = LeastConn::new(vec![5, 1, 1], loads(&[0, 0, 0]));
        let order: String = (0..7)
            .map(|_| char::from(b'a' + l.pick(&CTX, &|_| true).expect("pick") as u8))
            .collect();
        assert_eq!(order, "aabacaa");
        // Only a and c tie at the minimum: b is never chosen.
        let l = LeastConn::new(vec![1, 1, 1], loads(&[2, 3, 2]));
        for _ in 0..10 {
            assert_ne!(l.pick(&CTX, &|_| true), Some(1));
        }
    }

    #[test]
    fn random_two_never_picks_the_busiest_when_another_is_available() {
        let r = RandomTwo::new(vec![1, 1, 1, 1], loads(&[0, 9, 0, 0]));
        for _ in 0..1000 {
            assert_ne!(r.pick(&CTX, &|_| true), Some(1));
        }
        // Two backends: always the lighter.
        let r = RandomTwo::new(vec![1, 1], loads(&[3, 1]));
        for _ in 0..100 {
            assert_eq!(r.pick(&CTX, &|_| true), Some(1));
        }
        // With one available, that one; with none, none.
        assert_eq!(r.pick(&CTX, &|i| i == 0), Some(0));
        assert_eq!(r.pick(&CTX, &|_| false), None);
    }

    #[test]
    fn random_two_spreads_by_weight_at_idle() {
        let r = RandomTwo::new(vec![3, 1], loads(&[0, 0]));
        let picks = (0..4000)
            .filter(|_| r.pick(&CTX, &|_| true) == Some(0))
            .count();
        // Equal loads: the first drawn wins, so shares follow the weights (3:1).
        assert!((2700..=3300).contains(&picks), "{picks}");
    }
}
