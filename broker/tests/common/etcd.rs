//! A real etcd for cluster tests; shared by the broker's tests and the workspace's (included
//! by path).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A real etcd server (Debian's `etcd-server`, which `.ci/run` installs) on free loopback
/// ports with a temporary data directory; killed when dropped.
pub struct Etcd {
    pub child: Child,
    pub url: String,
    dir: tempfile::TempDir,
    binary: &'static str,
    ports: (u16, u16),
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Etcd {
    /// Starts etcd and returns once it answers as etcd. The ports are picked free but then
    /// released, so another process of a parallel test (a broker listening on port 0) can
    /// take one first; etcd then exits and the port answers for someone else. Such a start
    /// is noticed (etcd exited, or `/version` is not etcd's) and retried on new ports.
    pub fn start() -> Etcd {
        let binary = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("etcd is not installed: `apt-get install etcd-server` (.ci/run does)");
        for _ in 0..5 {
            if let Some(etcd) = Etcd::try_start(binary) {
                return etcd;
            }
        }
        panic!("etcd did not start on free ports in 5 attempts");
    }

    fn try_start(binary: &'static str) -> Option<Etcd> {
        let dir = tempfile::tempdir().unwrap();
        let ports = (free_port(), free_port());
        let child = spawn(binary, dir.path(), ports);
        let mut etcd = Etcd { child, url: format!("http://127.0.0.1:{}", ports.0), dir, binary, ports };
        etcd.answers().then_some(etcd)
    }

    /// Waits until etcd answers as etcd (true) or exits (false), for up to 20 s.
    fn answers(&mut self) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if answers_as_etcd(self.ports.0) {
                return true;
            }
            assert!(std::time::Instant::now() < deadline, "etcd did not answer within 20 s");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Kills etcd (SIGKILL, as a machine failure would) and leaves it down.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts etcd again on its data directory and ports, after [`Self::kill`]; returns once
    /// it answers.
    pub fn restart(&mut self) {
        self.child = spawn(self.binary, self.dir.path(), self.ports);
        assert!(self.answers(), "etcd did not start again on port {}", self.ports.0);
    }

    /// Sends `signal` (e.g. "STOP", "CONT", "KILL") to the etcd process.
    pub fn signal(&self, signal: &str) {
        signal_pid(self.child.id(), signal);
    }
}

/// etcd on `dir`, listening on loopback ports `(client, peer)`.
fn spawn(binary: &str, dir: &Path, (client, peer): (u16, u16)) -> Child {
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    Command::new(binary)
        .args(["--name", "t", "--data-dir"])
        .arg(dir)
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("t={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd starts")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether the server on `port` answers `GET /version` the way etcd does.
fn answers_as_etcd(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    if stream.write_all(b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("etcdserver")
}

/// Sends `signal` to process `pid` with kill(1), as a machine failure would.
pub fn signal_pid(pid: u32, signal: &str) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}
