//! `rproxy ctl status`: `/api/upstreams` as a table, one line per server, columns padded to
//! their widest cell.

use serde_json::Value;

const HEADER: [&str; 7] = [
    "UPSTREAM",
    "SERVER",
    "STATE",
    "HEALTH",
    "WEIGHT",
    "IN-FLIGHT",
    "OVERRIDE",
];

/// The table, or `None` when `body` is not the API's list of upstreams.
pub(super) fn render(body: &[u8]) -> Option<String> {
    let json: Value = serde_json::from_slice(body).ok()?;
    let mut rows = vec![HEADER.map(str::to_string)];
    for upstream in json["upstreams"].as_array()? {
        let name = upstream["name"].as_str().unwrap_or("?");
        for server in upstream["servers"].as_array().into_iter().flatten() {
            let weight = &server["weight"];
            let (configured, effective) =
                (weight["configured"].as_u64(), weight["effective"].as_u64());
            let weight = match (configured, effective) {
                (Some(c), Some(e)) if c != e => format!("{e} (file {c})"),
                (_, Some(e)) => e.to_string(),
                _ => "?".to_string(),
            };
            let over = &server["override"];
            let override_text = if over.is_null() {
                "-".to_string()
            } else {
                let by = over["by"].as_str().unwrap_or("?");
                match over["since_unix"].as_u64() {
                    Some(since) => {
                        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(since);
                        format!("by {by} at {}", humantime::format_rfc3339_seconds(at))
                    }
                    None => format!("by {by}"),
                }
            };
            rows.push([
                name.to_string(),
                text(&server["addr"]),
                text(&server["admin_state"]),
                text(&server["health"]),
                weight,
                server["in_flight"]
                    .as_u64()
                    .map_or_else(|| "?".to_string(), |n| n.to_string()),
                override_text,
            ]);
        }
    }
    let widths: Vec<usize> = (0..HEADER.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let lines: Vec<String> = rows
        .iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect();
    Some(lines.join("\n"))
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("?").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_server_with_overrides_shown() {
        let body = br#"{"upstreams":[{"name":"app","servers":[
            {"addr":"127.0.0.1:3001","admin_state":"draining","health":"up","in_flight":2,
             "weight":{"configured":1,"effective":1},
             "override":{"state":"draining","by":"127.0.0.1:50000","since_unix":1700000000}},
            {"addr":"127.0.0.1:3002","admin_state":"active","health":"unhealthy","in_flight":0,
             "weight":{"configured":1,"effective":5},"override":null}]}]}"#;
        let table = render(body).expect("a table");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("UPSTREAM  SERVER"));
        assert!(lines[1].contains("draining"), "{}", lines[1]);
        assert!(
            lines[1].ends_with("by 127.0.0.1:50000 at 2023-11-14T22:13:20Z"),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains("5 (file 1)") && lines[2].ends_with('-'));
        assert_eq!(render(b"not json"), None);
        assert_eq!(render(b"{}"), None);
    }
}
