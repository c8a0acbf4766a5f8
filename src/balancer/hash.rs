//! `hash KEY` and `hash KEY consistent`, computed exactly as nginx does, so the same key goes to
//! the same backend as with nginx for the same server list, in every rproxy instance.
//!
//! Plain (`ngx_http_upstream_get_hash_peer`, Cache::Memcached compatible): `crc32(key) >> 16 &
//! 0x7fff` picks a server by weight; an unavailable pick rehashes with the try number in front
//! of the key, up to 20 times, then round-robin takes over.
//!
//! Consistent (`ngx_http_upstream_init_chash`, ketama): every server puts `160 * weight` points
//! on a ring, chained CRC32s of `host \0 port` and the previous point; a key goes to the first
//! point at or after `crc32(key)`, and on to the next points while that server is unavailable.
//! Removing one server of N moves only the keys that were on it. An empty key falls back to
//! round-robin in both, as in nginx.

use std::sync::atomic::Ordering;

use super::ip_hash::{MAX_TRIES, WeightedList};
use super::least_conn::Loads;
use super::{Balancer, PickContext, RoundRobin};

#[derive(Debug)]
pub struct KeyHash {
    list: WeightedList,
}

impl KeyHash {
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        KeyHash {
            list: WeightedList::new(weights),
        }
    }
}

impl Balancer for KeyHash {
    fn pick(&self, ctx: &PickContext<'_>, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.list.is_empty() {
            return None;
        }
        if !ctx.key.is_empty() {
            let mut acc: u64 = 0;
            for rehash in 0..=MAX_TRIES {
                let mut crc = crc32fast::Hasher::new();
                if rehash > 0 {
                    crc.update(decimal(rehash, &mut [0u8; 20]));
                }
                crc.update(ctx.key);
                acc += u64::from((crc.finalize() >> 16) & 0x7fff);
                let p = self.list.by_weight(acc);
                if eligible(p) {
                    return Some(p);
                }
            }
        }
        self.list.fallback.pick(ctx, eligible)
    }
}

/// `n` in decimal, written into `buf` (a pick does not allocate).
fn decimal(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[derive(Debug)]
pub struct ConsistentHash {
    /// Ring points sorted by hash: (hash, server group).
    points: Vec<(u32, usize)>,
    /// Backends of each server line (a name may resolve to several addresses).
    groups: Vec<Vec<usize>>,
    fallback: RoundRobin,
    bounded: Option<BoundedLoads>,
}

/// Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam): a backend takes
/// a request only while its in-flight count stays within `factor` times its weighted share of
/// all in-flight requests; a key whose backend is full walks on along the ring. A hot key
/// spills over to the next backends instead of overloading one. nginx has no equivalent.
#[derive(Debug)]
struct BoundedLoads {
    factor: f64,
    weights: Vec<u64>,
    total_weight: u64,
    loads: Loads,
}

impl BoundedLoads {
    /// In-flight requests over the eligible backends: summed once per pick.
    fn in_flight(&self, eligible: &dyn Fn(usize) -> bool) -> u64 {
        (0..self.loads.len())
            .filter(|&j| eligible(j))
            .map(|j| self.loads[j].load(Ordering::Relaxed))
            .sum()
    }

    fn has_room(&self, i: usize, in_flight: u64) -> bool {
        let share = self.weights[i] as f64 / self.total_weight.max(1) as f64;
        let capacity = (self.factor * (in_flight + 1) as f64 * share).ceil() as u64;
        self.loads[i].load(Ordering::Relaxed) < capacity.max(1)
    }
}

impl ConsistentHash {
    /// `servers`: each backend's server string as written (`host:port`) and weight, in order.
    pub fn new<'a>(servers: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        let servers: Vec<(&str, u32)> = servers.into_iter().collect();
        let mut groups: Vec<(String, u32, Vec<usize>)> = Vec::new();
        for (i, (written, weight)) in servers.iter().enumerate() {
            match groups.iter_mut().find(|g| g.0 == *written) {
                Some(g) => g.2.push(i),
                None => groups.push(((*written).to_string(), *weight, vec![i])),
            }
        }
        let mut points = Vec::new();
        for (g, (written, weight, members)) in groups.iter().enumerate() {
            // nginx gives each peer (address) its points; a name's addresses share a server
            // string, so their points coincide and collapse into one set.
            let _ = members;
            let (host, port) = split_host_port(written);
            let mut base = crc32fast::Hasher::new();
            base.update(host.as_bytes());
            base.update(b"\0");
            base.update(port.as_bytes());
            let mut prev: u32 = 0;
            for _ in 0..(u64::from(*weight) * 160) {
                let mut h = base.clone();
                h.update(&prev.to_le_bytes());
                let hash = h.finalize();
                points.push((hash, g));
                prev = hash;
            }
        }
        // As nginx: sort by hash (stable, so equal hashes keep the earlier server) and keep
        // one point per hash value.
        points.sort_by_key(|p| p.0);
        points.dedup_by_key(|p| p.0);
        ConsistentHash {
            points,
            groups: groups.into_iter().map(|g| g.2).collect(),
            fallback: RoundRobin::new(servers.iter().map(|s| s.1)),
            bounded: None,
        }
    }

    /// Bounds every backend to `factor` (> 1) times its share of the load.
    pub fn with_balance_factor(mut self, factor: f64, weights: Vec<u32>, loads: Loads) -> Self {
        let weights: Vec<u64> = weights.into_iter().map(u64::from).collect();
        self.bounded = Some(BoundedLoads {
            factor,
            total_weight: weights.iter().sum(),
            weights,
            loads,
        });
        self
    }
}

/// nginx's split: the port is the digits after the last `:`; without one, all is host.
fn split_host_port(server: &str) -> (&str, &str) {
    match server.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (host, port)
        }
        _ => (server, ""),
    }
}

impl Balancer for ConsistentHash {
    fn pick(&self, ctx: &PickContext<'_>, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        if ctx.key.is_empty() || self.groups.len() < 2 {
            return self.fallback.pick(ctx, eligible);
        }
        let hash = crc32fast::hash(ctx.key);
        let start = self.points.partition_point(|p| p.0 < hash);
        let walk = |accept: &dyn Fn(usize) -> bool| {
            let n = self.points.len();
            (0..n).find_map(|step| {
                let group = self.points[(start + step) % n].1;
                self.groups[group].iter().copied().find(|&b| accept(b))
            })
        };
        if let Some(bounded) = &self.bounded
            && let in_flight = bounded.in_flight(eligible)
            && let Some(b) = walk(&|b| eligible(b) && bounded.has_room(b, in_flight))
        {
            return Some(b);
        }
        walk(eligible)
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance_tests::recording;
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn ctx(key: &[u8]) -> PickContext<'_> {
        PickContext {
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            key,
        }
    }

    fn replay(text: &str, consistent: bool) -> usize {
        let rec = recording(text);
        let b: Box<dyn Balancer> = if consistent {
            Box::new(ConsistentHash::new(
                rec.servers.iter().map(|s| (s.0.as_str(), s.1)),
            ))
        } else {
            Box::new(KeyHash::new(rec.servers.iter().map(|s| s.1)))
        };
        let down: Vec<bool> = rec.servers.iter().map(|s| s.2).collect();
        for (key, expected) in &rec.rows {
            let picked = b.pick(&ctx(key.as_bytes()), &|i| !down[i]).expect("a pick");
            assert_eq!(&rec.servers[picked].0, expected, "key {key}");
        }
        rec.rows.len()
    }

    #[test]
    fn decimal_digits() {
        for n in [0usize, 7, 10, 20, 12345, usize::MAX] {
            assert_eq!(decimal(n, &mut [0u8; 20]), n.to_string().as_bytes());
        }
    }

    #[test]
    fn matches_nginx_plain_hash() {
        assert!(
            replay(
                include_str!("../../tests/conformance/hash_uri_plain_5.csv"),
                false
            ) > 100
        );
    }

    #[test]
    fn matches_nginx_consistent_hash() {
        assert!(
            replay(
                include_str!("../../tests/conformance/hash_uri_consistent_9.csv"),
                true
            ) > 100
        );
        replay(
            include_str!("../../tests/conformance/hash_uri_consistent_weighted.csv"),
            true,
        );
        replay(
            include_str!("../../tests/conformance/hash_uri_consistent_8_after_removal.csv"),
            true,
        );
    }

    #[test]
    fn removing_one_server_moves_only_its_keys() {
        let nine = recording(include_str!(
            "../../tests/conformance/hash_uri_consistent_9.csv"
        ));
        let eight = recording(include_str!(
            "../../tests/conformance/hash_uri_consistent_8_after_removal.csv"
        ));
        let before = ConsistentHash::new(nine.servers.iter().map(|s| (s.0.as_str(), s.1)));
        let after = ConsistentHash::new(eight.servers.iter().map(|s| (s.0.as_str(), s.1)));
        let mut moved = 0;
        for i in 0..10_000 {
            let key = format!("/k/{i}");
            let a = &nine.servers[before.pick(&ctx(key.as_bytes()), &|_| true).expect("pick")].0;
            let b = &eight.servers[after.pick(&ctx(key.as_bytes()), &|_| true).expect("pick")].0;
            if a != b {
                assert_eq!(a, "127.0.0.1:21004", "only keys of the removed server move");
                moved += 1;
            }
        }
        // About 1/9 of the keys were on the removed server.
        assert!((700..=1600).contains(&moved), "{moved} keys moved");
    }

    #[test]
    fn a_full_backend_passes_the_key_on_along_the_ring() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicU64;
        let servers = [("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 1)];
        let loads: Loads = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let ring =
            ConsistentHash::new(servers).with_balance_factor(1.25, vec![1, 1, 1], loads.clone());
        let home = ring.pick(&ctx(b"hot"), &|_| true).expect("pick");
        // The home backend holds 6 requests, the others none: capacity is
        // ceil(1.25 * 7 / 3) = 3, so the hot key moves on, to the same next backend each time.
        loads[home].store(6, Ordering::Relaxed);
        let next = ring.pick(&ctx(b"hot"), &|_| true).expect("pick");
        assert_ne!(next, home);
        assert_eq!(ring.pick(&ctx(b"hot"), &|_| true), Some(next));
        // Idle again, the key returns home.
        loads[home].store(0, Ordering::Relaxed);
        assert_eq!(ring.pick(&ctx(b"hot"), &|_| true), Some(home));
    }

    #[test]
    fn the_same_key_always_maps_to_the_same_backend() {
        let b = ConsistentHash::new([("10.0.0.1:80", 1), ("10.0.0.2:80", 2), ("10.0.0.3:80", 1)]);
        for i in 0..1000 {
            let key = format!("user-{i}");
            let first = b.pick(&ctx(key.as_bytes()), &|_| true);
            assert_eq!(b.pick(&ctx(key.as_bytes()), &|_| true), first);
        }
    }
}
