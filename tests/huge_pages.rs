//! rproxy runs without transparent huge pages: the kernel's khugepaged would otherwise fill
//! the 2 MB regions of its sparse heap (a few live pages each once idle connections have
//! freed their buffers) into whole huge pages, and its resident memory would grow while it is
//! idle (see `without_huge_pages` in src/main.rs and mimalloc's `no_thp` in Cargo.toml). The
//! facts are read from /proc: the process's THP switch, and that nothing of its memory asks
//! for huge pages (madvise(MADV_HUGEPAGE) shows as the `hg` flag in smaps).

mod common;

use common::*;

#[tokio::test]
async fn rproxy_runs_with_transparent_huge_pages_off() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start(&format!(
        "[log]\naccess = \"off\"\n[listeners.web]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\
         [upstreams.app]\nservers = [\"{}\"]\n",
        backend.addr
    ));
    // Served once, so the allocator has reserved and used its memory.
    let answer = raw_exchange(proxy.addr(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.pid()))
        .expect("read /proc status");
    // The line exists from Linux 6.0 (prctl(PR_SET_THP_DISABLE) itself from 3.15).
    if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }

    let smaps =
        std::fs::read_to_string(format!("/proc/{}/smaps", proxy.pid())).expect("read /proc smaps");
    let advised: Vec<&str> = smaps
        .lines()
        .filter(|l| l.starts_with("VmFlags:") && l.split_whitespace().any(|f| f == "hg"))
        .collect();
    assert!(
        advised.is_empty(),
        "memory madvised for huge pages: {advised:?}"
    );
}
