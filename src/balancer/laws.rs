//! Property tests: the laws every policy keeps, over generated pools, loads and keys.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use proptest::prelude::*;

use super::{
    Balancer, ConsistentHash, IpHash, KeyHash, LeastConn, Loads, PickContext, RandomTwo, RoundRobin,
};

fn loads(values: &[u64]) -> Loads {
    values
        .iter()
        .map(|&v| Arc::new(AtomicU64::new(v)))
        .collect()
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("10.0.0.{i}:3000")).collect()
}

/// Every policy over the same pool.
fn policies(weights: &[u32], load: &[u64]) -> Vec<(&'static str, Box<dyn Balancer>)> {
    let n = names(weights.len());
    vec![
        (
            "round_robin",
            Box::new(RoundRobin::new(weights.iter().copied())),
        ),
        (
            "least_conn",
            Box::new(LeastConn::new(weights.to_vec(), loads(load))),
        ),
        (
            "random_two",
            Box::new(RandomTwo::new(weights.to_vec(), loads(load))),
        ),
        ("ip_hash", Box::new(IpHash::new(weights.iter().copied()))),
        ("hash", Box::new(KeyHash::new(weights.iter().copied()))),
        (
            "consistent",
            Box::new(ConsistentHash::new(
                n.iter().map(String::as_str).zip(weights.iter().copied()),
            )),
        ),
        (
            "bounded",
            Box::new(
                ConsistentHash::new(n.iter().map(String::as_str).zip(weights.iter().copied()))
                    .with_balance_factor(1.25, weights.to_vec(), loads(load)),
            ),
        ),
    ]
}

fn pool() -> impl Strategy<Value = (Vec<u32>, Vec<u64>, Vec<bool>)> {
    (1usize..12).prop_flat_map(|n| {
        (
            proptest::collection::vec(1u32..6, n),
            proptest::collection::vec(0u64..8, n),
            proptest::collection::vec(any::<bool>(), n),
        )
    })
}

proptest! {
    #[test]
    fn no_pick_outside_the_candidates(
        (weights, load, allowed) in pool(),
        key in proptest::collection::vec(any::<u8>(), 0..32),
        ip in any::<u32>(),
    ) {
        let ctx = PickContext { client_ip: IpAddr::V4(Ipv4Addr::from(ip)), key: &key };
        let any_allowed = allowed.iter().any(|&a| a);
        for (name, policy) in policies(&weights, &load) {
            for _ in 0..3 {
                let picked = policy.pick(&ctx, &|i| allowed[i]);
                match picked {
                    Some(i) => prop_assert!(allowed[i], "{} picked {} outside {:?}", name, i, allowed),
                    None => prop_assert!(!any_allowed, "{} found nothing among {:?}", name, allowed),
                }
            }
        }
    }

    #[test]
    fn least_conn_never_picks_a_strictly_busier_backend((weights, load, allowed) in pool()) {
        let policy = LeastConn::new(weights.clone(), loads(&load));
        if let Some(p) = policy.pick(&PickContext { client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST), key: b"" }, &|i| allowed[i]) {
            for j in (0..weights.len()).filter(|&j| allowed[j]) {
                let busier = u128::from(load[p]) * u128::from(weights[j])
                    > u128::from(load[j]) * u128::from(weights[p]);
                prop_assert!(!busier, "picked {} over lighter {}", p, j);
            }
        }
    }

    #[test]
    fn a_hash_maps_a_key_to_the_same_backend_every_time(
        (weights, _load, _allowed) in pool(),
        key in proptest::collection::vec(any::<u8>(), 1..32),
        ip in any::<u32>(),
    ) {
        let n = names(weights.len());
        let ctx = PickContext { client_ip: IpAddr::V4(Ipv4Addr::from(ip)), key: &key };
        let hashes: Vec<Box<dyn Balancer>> = vec![
            Box::new(IpHash::new(weights.iter().copied())),
            Box::new(KeyHash::new(weights.iter().copied())),
            Box::new(ConsistentHash::new(n.iter().map(String::as_str).zip(weights.iter().copied()))),
        ];
        for policy in &hashes {
            let first = policy.pick(&ctx, &|_| true);
            prop_assert!(first.is_some());
            for _ in 0..5 {
                prop_assert_eq!(policy.pick(&ctx, &|_| true), first);
            }
        }
        // A second instance built from the same list agrees.
        let again = ConsistentHash::new(n.iter().map(String::as_str).zip(weights.iter().copied()));
        prop_assert_eq!(again.pick(&ctx, &|_| true), hashes[2].pick(&ctx, &|_| true));
    }
}
