//! Reading the nginx recordings in `tests/conformance/` for the balancer unit tests.

/// One recorded upstream: the `server` lines (address, weight, down) and the recorded rows.
pub(super) struct Recording {
    pub(super) servers: Vec<(String, u32, bool)>,
    pub(super) rows: Vec<(String, String)>,
}

pub(super) fn recording(text: &str) -> Recording {
    let mut servers = Vec::new();
    let mut rows = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# server ") {
            let mut parts = rest.split_whitespace();
            let addr = parts.next().unwrap_or_default().to_string();
            let (mut weight, mut down) = (1, false);
            for p in parts {
                if let Some(w) = p.strip_prefix("weight=") {
                    weight = w.parse().unwrap_or(1);
                } else if p == "down" {
                    down = true;
                }
            }
            servers.push((addr, weight, down));
        } else if !line.starts_with('#')
            && !line.ends_with(",backend")
            && let Some((k, v)) = line.split_once(',')
        {
            rows.push((k.to_string(), v.to_string()));
        }
    }
    Recording { servers, rows }
}
