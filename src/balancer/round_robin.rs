//! Smooth weighted round-robin, exactly as nginx's `ngx_http_upstream_get_peer` does it.
//!
//! Each pick adds every eligible peer's weight to its running `current` weight, chooses the
//! peer with the highest `current` (the first one on ties) and subtracts the total from it.
//! Weights 5, 1, 1 give `a a b a c a a`; the order is spread out rather than bursty. Peers that
//! are not eligible (down, already tried) take no part in that round, as in nginx. One lock per
//! pool keeps the order global across worker threads, like nginx's shared-zone lock.

use std::sync::{Mutex, MutexGuard};

use super::{Balancer, PickContext};

#[derive(Debug)]
pub struct RoundRobin {
    peers: Mutex<Vec<Peer>>,
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    weight: i64,
    current: i64,
}

impl RoundRobin {
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        let peers = weights
            .into_iter()
            .map(|w| Peer {
                weight: i64::from(w),
                current: 0,
            })
            .collect();
        RoundRobin {
            peers: Mutex::new(peers),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Peer>> {
        // Nothing inside the lock can panic half-way, so a poisoned lock still holds valid state.
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, _ctx: &PickContext<'_>, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut peers = self.lock();
        let mut best: Option<usize> = None;
        let mut total = 0i64;
        for i in 0..peers.len() {
            if !eligible(i) {
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
    fn ineligible_peers_take_no_part() {
        let rr = RoundRobin::new([2, 5, 3, 1]);
        // Peer b is down: the order is that of weights 2, 3, 1 alone.
        assert_eq!(sequence(&rr, 6, &|i| i != 1), "cacdac");
        let none = RoundRobin::new([1, 1]);
        assert_eq!(none.pick(&CTX, &|_| false), None);
    }

    #[test]
    fn spreads_exactly_by_weight_over_a_cycle() {
        let weights = [7u32, 3, 1, 4, 10];
        let rr = RoundRobin::new(weights);
        let total: u32 = weights.iter().sum();
        let mut counts = [0u32; 5];
        for _ in 0..total * 3 {
            counts[rr.pick(&CTX, &|_| true).expect("a peer")] += 1;
        }
        let expected: Vec<u32> = weights.iter().map(|w| w * 3).collect();
        assert_eq!(counts.to_vec(), expected);
    }
}
