//! A real DNS server for the tests of `resolve = true`: dnsmasq (Debian `dnsmasq-base`) on a
//! free loopback port, answering from a hosts file of its own (re-read on SIGHUP) and SRV
//! records given on its command line, with a TTL of 1 s. Skipped, saying so, when dnsmasq is
//! not installed, except under CI (`CI` set), where that fails the test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Backend;

pub struct Dnsmasq {
    child: Child,
    pub addr: SocketAddr,
    hosts: PathBuf,
    _dir: tempfile::TempDir,
}

/// The dnsmasq binary, if installed.
fn binary() -> Option<PathBuf> {
    let known = PathBuf::from("/usr/sbin/dnsmasq");
    if known.exists() {
        return Some(known);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("dnsmasq"))
            .find(|p| p.exists())
    })
}

impl Dnsmasq {
    /// dnsmasq answering `hosts` (hosts-file lines) and the `srv` records (dnsmasq's
    /// `--srv-host` values: `_http._tcp.app.test,a.test,8080,0,10`). `None` (the caller
    /// skips) when dnsmasq is not installed, outside CI.
    pub fn start(hosts: &str, srv: &[&str]) -> Option<Dnsmasq> {
        let Some(bin) = binary() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "dnsmasq is required under CI (apt-get install dnsmasq-base)"
            );
            eprintln!("skipped: dnsmasq is not installed (apt-get install dnsmasq-base)");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let hosts_path = dir.path().join("hosts");
        std::fs::write(&hosts_path, hosts).expect("write hosts");
        // A port free a moment ago may be taken by the time dnsmasq binds it: try again.
        for _ in 0..20 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .expect("a free UDP port")
                .port();
            let mut cmd = Command::new(&bin);
            cmd.arg("--keep-in-foreground")
                .arg(format!("--port={port}"))
                .arg("--listen-address=127.0.0.1")
                .arg("--bind-interfaces")
                .arg("--no-resolv")
                .arg("--no-hosts")
                .arg(format!("--addn-hosts={}", hosts_path.display()))
                .arg("--local=/test/")
                .arg("--local-ttl=1")
                .arg("--user=root")
                .arg(format!("--pid-file={}", dir.path().join("pid").display()));
            for record in srv {
                cmd.arg(format!("--srv-host={record}"));
            }
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn dnsmasq");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            // Up once it accepts on its TCP port too; gone if the port was taken.
            let start = Instant::now();
            let up = loop {
                if std::net::TcpStream::connect(addr).is_ok() {
                    break true;
                }
                if child.try_wait().expect("try_wait").is_some()
                    || start.elapsed() > Duration::from_secs(5)
                {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            if up {
                return Some(Dnsmasq {
                    child,
                    addr,
                    hosts: hosts_path,
                    _dir: dir,
                });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dnsmasq did not start on any port");
    }

    /// Replaces the hosts file and makes dnsmasq read it again (SIGHUP).
    pub fn set_hosts(&self, hosts: &str) {
        let tmp = self.hosts.with_extension("new");
        std::fs::write(&tmp, hosts).expect("write hosts");
        std::fs::rename(&tmp, &self.hosts).expect("replace hosts");
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -HUP {}", self.child.id()))
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -HUP dnsmasq failed");
    }

    /// Stops it (our own child, by its pid): the name server no longer answers.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The `[resolver]` section that points rproxy at it.
    pub fn resolver_section(&self, extra: &str) -> String {
        format!("[resolver]\naddrs = [\"{}\"]\n{extra}\n", self.addr)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Backends named `names[i]` on 127.0.0.(2 + i), all on one port (a name's A records give
/// only addresses; the port is the server line's). Tries ports until one is free on all.
pub async fn backends_on_loopbacks(names: &[&str]) -> (u16, Vec<Backend>) {
    for _ in 0..50 {
        let first = Backend::start_at(names[0], "127.0.0.2:0".parse().expect("addr"))
            .await
            .expect("bind 127.0.0.2");
        let port = first.addr.port();
        let mut all = vec![first];
        for (i, name) in names.iter().enumerate().skip(1) {
            let addr = SocketAddr::from(([127, 0, 0, 2 + i as u8], port));
            match Backend::start_at(name, addr).await {
                Some(b) => all.push(b),
                None => break,
            }
        }
        if all.len() == names.len() {
            return (port, all);
        }
    }
    panic!("no port free on every loopback address");
}
