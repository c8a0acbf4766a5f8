//! `ip_hash`, exactly as nginx's `ngx_http_upstream_get_ip_hash_peer` computes it: the first
//! three octets of an IPv4 client address (all sixteen of IPv6) are hashed (`h = (h * 113 + b)
//! % 6271` from 89), the hash picks a server by weight, and an unavailable pick rehashes, up to
//! 20 times, before falling back to round-robin. The same client therefore lands on the same
//! backend that nginx would choose for the same server list, and on the same one in every
//! rproxy instance and after every restart.

use std::net::IpAddr;

use super::{Balancer, PickContext, RoundRobin};

#[derive(Debug)]
pub struct IpHash {
    list: WeightedList,
}

impl IpHash {
    /// The weights of all servers in configuration order, `down` ones included (nginx counts
    /// them in the hash and skips them when picked).
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        IpHash {
            list: WeightedList::new(weights),
        }
    }
}

/// Servers picked by a hash walked over their weights, as nginx's `ip_hash` and `hash` do,
/// with round-robin as the fallback when rehashing finds nothing.
#[derive(Debug)]
pub(super) struct WeightedList {
    weights: Vec<u64>,
    total: u64,
    pub(super) fallback: RoundRobin,
}

impl WeightedList {
    pub(super) fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        let weights: Vec<u32> = weights.into_iter().collect();
        WeightedList {
            total: weights.iter().map(|&w| u64::from(w)).sum(),
            fallback: RoundRobin::new(weights.iter().copied()),
            weights: weights.into_iter().map(u64::from).collect(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// nginx's walk: `w = hash % total`, then subtract weights until `w` fits.
    pub(super) fn by_weight(&self, hash: u64) -> usize {
        let mut w = hash % self.total;
        let mut p = 0;
        while p + 1 < self.weights.len() && w >= self.weights[p] {
            w -= self.weights[p];
            p += 1;
        }
        p
    }
}

/// nginx gives up rehashing after this many unavailable picks.
pub(super) const MAX_TRIES: usize = 20;

impl Balancer for IpHash {
    fn pick(&self, ctx: &PickContext<'_>, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.list.is_empty() {
            return None;
        }
        let (v4, v6);
        let addr: &[u8] = match ctx.client_ip {
            IpAddr::V4(a) => {
                v4 = a.octets();
                &v4[..3]
            }
            IpAddr::V6(a) => {
                v6 = a.octets();
                &v6
            }
        };
        let mut hash: u64 = 89;
        for _ in 0..=MAX_TRIES {
            for &b in addr {
                hash = (hash * 113 + u64::from(b)) % 6271;
            }
            let p = self.list.by_weight(hash);
            if eligible(p) {
                return Some(p);
            }
        }
        self.list.fallback.pick(ctx, eligible)
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance_tests::recording;
    use super::*;

    fn replay(text: &str) {
        let rec = recording(text);
        let b = IpHash::new(rec.servers.iter().map(|s| s.1));
        let down: Vec<bool> = rec.servers.iter().map(|s| s.2).collect();
        assert!(!rec.rows.is_empty());
        for (client, expected) in &rec.rows {
            let ip: IpAddr = client.parse().expect("client address");
            let ctx = PickContext {
                client_ip: ip,
                key: b"",
            };
            let picked = b.pick(&ctx, &|i| !down[i]).expect("a pick");
            assert_eq!(&rec.servers[picked].0, expected, "client {client}");
        }
    }

    #[test]
    fn matches_nginx_three_servers() {
        replay(include_str!("../../tests/conformance/ip_hash_3.csv"));
    }

    #[test]
    fn matches_nginx_weighted() {
        replay(include_str!(
            "../../tests/conformance/ip_hash_weighted_5_1_1.csv"
        ));
    }

    #[test]
    fn matches_nginx_with_a_down_server() {
        replay(include_str!(
            "../../tests/conformance/ip_hash_with_down.csv"
        ));
    }
}
