//! Redis under Sentinel for tests: one primary, one replica and three sentinels (Debian
//! `redis-server` and `redis-sentinel`) on free loopback ports, stopped by PID; the primary can
//! be killed so that the sentinels fail over, the replica can be cut off as one that has fallen
//! behind, and a killed node can rejoin as a replica.

use crate::free_port;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The service name the sentinels monitor.
pub const SERVICE: &str = "kg";

/// A primary, a replica and three sentinels, killed on drop.
pub struct SentinelSet {
    /// Data nodes by port (`None` while killed).
    nodes: HashMap<u16, Option<Child>>,
    sentinels: Vec<(u16, Child)>,
    dir: tempfile::TempDir,
}

/// `redis-cli -p PORT ARGS...`, its output lines.
pub fn cli(port: u16, args: &[&str]) -> Vec<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (installed with redis-server)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A `key value key value` reply as a map.
fn pairs(lines: &[String]) -> HashMap<String, String> {
    lines
        .chunks(2)
        .filter_map(|c| Some((c.first()?.clone(), c.get(1)?.clone())))
        .collect()
}

/// Whether `INFO replication` of the node on `port` has the line `line`.
fn replication_says(port: u16, line: &str) -> bool {
    cli(port, &["INFO", "replication"])
        .iter()
        .any(|l| l.trim() == line)
}

/// `kill SIGNAL PID`.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} {pid}");
}

fn wait_until(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl SentinelSet {
    /// Starts the five processes and waits until every sentinel knows the replica and the
    /// other two sentinels (so that a failover can be agreed on).
    pub fn start() -> Self {
        let mut set = Self {
            nodes: HashMap::new(),
            sentinels: Vec::new(),
            dir: tempfile::tempdir().expect("temp dir"),
        };
        let primary = free_port();
        set.start_node(primary, None);
        let replica = free_port();
        set.start_node(replica, Some(primary));
        for _ in 0..3 {
            let port = free_port();
            let conf = set.dir.path().join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {SERVICE} 1000\n\
                     sentinel failover-timeout {SERVICE} 10000\n\
                     sentinel parallel-syncs {SERVICE} 1\n",
                    dir = set.dir.path().display()
                ),
            )
            .expect("sentinel config");
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-sentinel (scripts/test installs it)");
            set.sentinels.push((port, child));
        }
        for (port, _) in &set.sentinels {
            wait_until(
                Duration::from_secs(30),
                "the sentinels to find each other and the replica",
                || {
                    let m = pairs(&cli(*port, &["SENTINEL", "MASTER", SERVICE]));
                    m.get("num-slaves").map(String::as_str) == Some("1")
                        && m.get("num-other-sentinels").map(String::as_str) == Some("2")
                },
            );
        }
        set
    }

    /// `redis-sentinel://` URL of the three sentinels.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        format!(
            "redis-sentinel://{}?sentinelServiceName={SERVICE}",
            hosts.join(",")
        )
    }

    /// The primary's port as the first sentinel that answers names it.
    pub fn primary(&self) -> u16 {
        self.sentinels
            .iter()
            .find_map(|(p, _)| {
                cli(*p, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE])
                    .get(1)?
                    .parse()
                    .ok()
            })
            .expect("a sentinel names the primary")
    }

    /// The data node that is not the primary.
    pub fn replica(&self) -> u16 {
        let primary = self.primary();
        *self
            .nodes
            .keys()
            .find(|p| **p != primary)
            .expect("two data nodes")
    }

    /// SIGKILLs the data node on `port` (an outage, not a shutdown).
    pub fn kill(&mut self, port: u16) {
        if let Some(mut child) = self.nodes.get_mut(&port).and_then(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Cuts the replica off, as one that has fallen behind: stops it (SIGSTOP, waited for)
    /// and has the primary close its link to it, so that nothing the primary writes from now
    /// on reaches it (a stopped process would still read what its socket had received) and
    /// nothing is acknowledged by it, until [`Self::resume`].
    pub fn cut_off_replica(&mut self) -> u16 {
        let (primary, replica) = (self.primary(), self.replica());
        self.pause(replica);
        let killed = cli(primary, &["CLIENT", "KILL", "TYPE", "replica"]);
        assert_eq!(killed.first().map(String::as_str), Some("1"), "{killed:?}");
        wait_until(
            Duration::from_secs(5),
            "the primary to drop the replica",
            || replication_says(primary, "connected_slaves:0"),
        );
        replica
    }

    /// Stops the data node on `port` (SIGSTOP) and waits until the kernel has stopped it.
    pub fn pause(&mut self, port: u16) {
        let pid = self.pid(port);
        signal(pid, "-STOP");
        wait_until(Duration::from_secs(5), "the node to stop", || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| Some(s.rsplit_once(") ")?.1.starts_with('T')))
                .unwrap_or(false)
        });
    }

    /// Lets a node stopped by [`Self::pause`] go on.
    pub fn resume(&mut self, port: u16) {
        signal(self.pid(port), "-CONT");
    }

    fn pid(&self, port: u16) -> u32 {
        self.nodes
            .get(&port)
            .and_then(Option::as_ref)
            .expect("a running data node on that port")
            .id()
    }

    /// Kills the primary; its port.
    pub fn kill_primary(&mut self) -> u16 {
        let primary = self.primary();
        self.kill(primary);
        primary
    }

    /// Waits until every sentinel names a primary other than `old` and that node says it is
    /// one; the new primary's port.
    pub fn await_failover(&self, old: u16, limit: Duration) -> u16 {
        let mut new = 0;
        wait_until(limit, "the sentinels to promote the replica", || {
            let named: Vec<Option<u16>> = self
                .sentinels
                .iter()
                .map(|(p, _)| {
                    cli(*p, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE])
                        .get(1)
                        .and_then(|l| l.parse().ok())
                })
                .collect();
            match named.first() {
                Some(Some(p))
                    if *p != old
                        && named.iter().all(|n| *n == Some(*p))
                        && cli(*p, &["ROLE"]).first().map(String::as_str) == Some("master") =>
                {
                    new = *p;
                    true
                }
                _ => false,
            }
        });
        new
    }

    /// Starts the killed node on `port` again, as a replica of the current primary (as a pod
    /// that asks the sentinels whom to follow does), and waits until it is in sync.
    pub fn rejoin(&mut self, port: u16) {
        let primary = self.primary();
        self.start_node(port, Some(primary));
    }

    fn start_node(&mut self, port: u16, replica_of: Option<u16>) {
        let mut cmd = crate::redis_server(port);
        cmd.current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(primary) = replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        let child = cmd
            .spawn()
            .expect("redis-server (scripts/test installs it)");
        self.nodes.insert(port, Some(child));
        wait_until(Duration::from_secs(10), "redis-server to answer", || {
            cli(port, &["PING"]).first().map(String::as_str) == Some("PONG")
        });
        if replica_of.is_some() {
            wait_until(
                Duration::from_secs(20),
                "the replica to sync with its primary",
                || replication_says(port, "master_link_status:up"),
            );
        }
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for (_, c) in &mut self.sentinels {
            let _ = c.kill();
            let _ = c.wait();
        }
        for c in self.nodes.values_mut().filter_map(Option::as_mut) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
