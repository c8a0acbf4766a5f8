//! Smooth weighted round-robin, in nginx's order (`ngx_http_upstream_get_peer`), without a
//! lock on the pick.
//!
//! nginx adds every eligible peer's weight to its running `current`, picks the highest (the
//! first on ties) and subtracts the total from it: weights 5, 1, 1 give `a a b a c a a`. With
//! a fixed set of peers that sequence is periodic, one cycle being the sum of the weights, so
//! rproxy computes the cycle once and every pick is one atomic increment of a shared cursor:
//! the order is the same for the whole process, whatever thread picks. Servers marked `down`
//! (weight 0 here) are left out of the cycle, exactly as nginx skips them. When the scheduled
//! peer is unavailable at pick time (already tried, later unhealthy), that pick runs nginx's
//! algorithm over the available peers under a lock, so they share its turns by weight. A cycle
//! longer than `MAX_CYCLE` (huge weights) always uses that locked path.

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::{Balancer, PickContext};

const MAX_CYCLE: u64 = 1 << 16;

#[derive(Debug)]
pub struct RoundRobin {
    /// One full cycle of picks (peer indices), when it is short enough to keep.
    cycle: Vec<u32>,
    cursor: AtomicUsize,
    /// nginx's running weights, for pools whose cycle is too long to keep.
    peers: Mutex<Vec<Peer>>,
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    weight: i64,
    current: i64,
}

impl RoundRobin {
    /// Weights in server order; a weight of 0 (a `down` server) is never picked.
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        let peers: Vec<Peer> = weights
            .into_iter()
            .map(|w| Peer {
                weight: i64::from(w),
                current: 0,
            })
            .collect();
        let total: u64 = peers.iter().map(|p| p.weight as u64).sum();
        let mut cycle = Vec::new();
        if total <= MAX_CYCLE {
            let mut sim = peers.clone();
            for _ in 0..total {
                if let Some(i) = smooth_pick(&mut sim, &|_| true) {
                    cycle.push(i as u32);
                }
            }
        }
        RoundRobin {
            cycle,
            cursor: AtomicUsize::new(0),
            peers: Mutex::new(peers),
        }
    }
}

/// One step of nginx's smooth weighted round-robin over the eligible peers of positive weight.
fn smooth_pick(peers: &mut [Peer], eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut total = 0i64;
    for i in 0..peers.len() {
        if peers[i].weight == 0 || !eligible(i) {
            continue;
        }
        peers[i].current += peers[i].weight;
        total += peers[i].weight;
        if best.is_none_or(|b| peers[i].current > peers[b].current) {
            best = Some(i);
        }
    }
    let b = best?;
    peers[b].current -= total;
    Some(b)
}

impl Balancer for RoundRobin {
    fn pick(&self, _ctx: &PickContext<'_>, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.cycle.is_empty() {
            return smooth_pick(&mut self.peers.lock(), eligible);
        }
        let turn = self.cursor.fetch_add(1, Ordering::Relaxed) % self.cycle.len();
        let i = self.cycle[turn] as usize;
        if eligible(i) {
            return Some(i);
        }
        // The scheduled peer cannot take it: this pick runs nginx's algorithm over the peers
        // that can, so the others share its turns by weight instead of its neighbour taking
        // them all. Only requests meeting an unavailable peer take this lock.
        smooth_pick(&mut self.peers.lock(), eligible)
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

    fn sequence(rr: &RoundRobin, n: usize, eligible: &dyn Fn(usize) -> bool) -> String {
        (0..n)
            .map(|_| match rr.pick(&CTX, eligible) {
                Some(i) => char::from(b'a' + i as u8),
                None => '-',
            })
            .collect()
    }

    #[test]
    fn matches_nginx_examples() {
        let rr = RoundRobin::new([5, 1, 1]);
        assert_eq!(sequence(&rr, 14, &|_| true), "aabacaaaabacaa");
        let rr = RoundRobin::new([3, 2, 1]);
        assert_eq!(sequence(&rr, 12, &|_| true), "abacbaabacba");
    }

    #[test]
    fn down_servers_take_no_part() {
        // Server b is down (weight 0): the order is that of weights 2, 3, 1 alone.
        let rr = RoundRobin::new([2, 0, 3, 1]);
        assert_eq!(sequence(&rr, 6, &|_| true), "cacdac");
        let none = RoundRobin::new([1, 1]);
        assert_eq!(none.pick(&CTX, &|_| false), None);
        assert_eq!(RoundRobin::new([0, 0]).pick(&CTX, &|_| true), None);
    }

    #[test]
    fn an_unavailable_peers_turns_are_shared_by_weight() {
        let rr = RoundRobin::new([1, 1, 1, 2]);
        let mut counts = [0u32; 4];
        for _ in 0..1000 {
            counts[rr.pick(&CTX, &|i| i != 1).expect("a peer")] += 1;
        }
        assert_eq!(counts[1], 0);
        // Weights 1, 1, 2 among the rest: 250, 250, 500, within a few picks.
        for (got, want) in [(counts[0], 250), (counts[2], 250), (counts[3], 500)] {
            assert!(got.abs_diff(want) <= 10, "{counts:?}");
        }
    }

    #[test]
    fn spreads_exactly_by_weight_over_a_cycle() {
        let weights = [7u32, 3, 1, 4, 10];
        for rr in [RoundRobin::new(weights), long_cycle(weights)] {
            let total: u32 = weights.iter().sum();
            let mut counts = [0u32; 5];
            for _ in 0..total * 3 {
                counts[rr.pick(&CTX, &|_| true).expect("a peer")] += 1;
            }
            let expected: Vec<u32> = weights.iter().map(|w| w * 3).collect();
            assert_eq!(counts.to_vec(), expected);
        }
    }

    #[test]
    fn the_locked_fallback_gives_the_same_order() {
        let short = RoundRobin::new([5, 1, 1]);
        let long = long_cycle([5, 1, 1]);
        assert_eq!(
            sequence(&short, 21, &|_| true),
            sequence(&long, 21, &|_| true)
        );
    }

    /// A balancer forced onto the locked path, as a pool with huge weights would be.
    fn long_cycle<const N: usize>(weights: [u32; N]) -> RoundRobin {
        let mut rr = RoundRobin::new(weights);
        rr.cycle.clear();
        rr
    }
}
