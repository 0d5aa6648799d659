//! WAN emulation with network namespaces (root only; see `docs/WAN.md`).
//!
//! One "seat" namespace per peer slot in use (`pst-s<k>`, address 10.99.k.2), each joined
//! by a veth pair to the hub namespace `pst-hub` (10.99.k.1), which routes between them
//! and holds every impairment:
//! - caps: an htb class per (source seat → destination seat) on the hub's port toward
//!   the destination (classified with u32 by source address), plus an htb on each seat's
//!   own egress for its upload rate;
//! - one-way delay: `mangle FORWARD` rules send each pair's packets to the NFQUEUE of its
//!   delay, served by the delay daemon (`nfq.rs`) running in the hub;
//! - loss: `statistic --mode random` DROP in the hub's FORWARD chain;
//! - silent partitions: DROP both ways in the hub (to the master too, which lives in the
//!   hub); resets: `ss -K` of the seat's peer-to-peer connections.
//!
//! [`Wan`] tears everything down on drop, and `pccl-stress --cleanup` removes whatever a
//! killed run left (every namespace named `pst-*`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::procs::{self, Proc};
use crate::scenario::Scenario;

pub(crate) const HUB: &str = "pst-hub";
const PREFIX: &str = "pst-";
/// Stdout tag of the delay daemon.
pub(crate) const DELAYD_TAG: u32 = 1 << 30;
/// The master's port in the hub.
pub(crate) const MASTER_PORT: u16 = 29500;

fn seat_ns(k: usize) -> String {
    format!("{PREFIX}s{k}")
}

/// Runs a command, failing with its stderr.
fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs a command inside namespace `ns`.
fn nsh(ns: &str, args: &[&str]) -> Result<()> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

/// Installs iptables when it is missing (CI starts from a bare image).
fn ensure_tools() -> Result<()> {
    let have = |c: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("iptables") {
        eprintln!("pccl-stress: installing iptables (apt-get)");
        // A failed index update shows up as the install's failure, which is reported.
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        sh(&["apt-get", "install", "-y", "-qq", "iptables"])?;
    }
    for c in ["ip", "tc", "ss", "iptables"] {
        if !have(c) {
            bail!("{c} is needed for WAN mode");
        }
    }
    Ok(())
}

/// Deletes every `pst-*` namespace (what a crashed run may leave).
pub(crate) fn cleanup_all() -> Result<()> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    let (mut n, mut failed) = (0, Vec::new());
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(PREFIX) {
            match sh(&["ip", "netns", "del", name]) {
                Ok(()) => n += 1,
                Err(e) => failed.push(format!("{e:#}")),
            }
        }
    }
    eprintln!("pccl-stress: removed {n} namespaces");
    if !failed.is_empty() {
        bail!("namespaces left behind: {}", failed.join("; "));
    }
    Ok(())
}

/// Per-seat settings derived from the scenario.
#[derive(Clone, Debug)]
struct Seat {
    region: usize,
}

/// The emulated network of one run.
#[derive(Debug)]
pub(crate) struct Wan {
    seats: Vec<Seat>,
    delayd: Option<Proc>,
    /// Queue number per one-way delay in microseconds.
    queues: BTreeMap<u64, u16>,
    /// `teardown` ran (it is not repeated by `Drop`).
    torn_down: bool,
}

impl Wan {
    /// Builds the namespaces, links, caps, delay rules and the delay daemon.
    pub(crate) fn setup(
        s: &Scenario,
        run_id: &str,
        exe: &Path,
        lines: &Sender<(u32, String)>,
        dir: &Path,
    ) -> Result<Self> {
        let w = s.wan.as_ref().context("no [wan] section")?;
        ensure_tools()?;
        // A stale run's namespaces would collide with ours.
        cleanup_all()?;
        let mut seats = Vec::new();
        for (ri, r) in w.regions.iter().enumerate() {
            for _ in 0..r.seats {
                seats.push(Seat { region: ri });
            }
        }
        let mut me = Self {
            seats,
            delayd: None,
            queues: BTreeMap::new(),
            torn_down: false,
        };
        // From here on, a failure or a signal tears down what exists.
        procs::set_on_abort(Some(Box::new(|| {
            // The harness is dying (signal or panic): report and go on, nothing else can.
            if let Err(e) = cleanup_all() {
                eprintln!("pccl-stress: {e:#}");
            }
        })));
        let t = Instant::now();
        me.build(s)?;
        me.start_delayd(run_id, exe, lines, dir)?;
        eprintln!(
            "pccl-stress: WAN with {} seats ready in {:.1} s",
            me.seats.len(),
            t.elapsed().as_secs_f64()
        );
        Ok(me)
    }

    fn build(&mut self, s: &Scenario) -> Result<()> {
        let w = s.wan.as_ref().context("no [wan] section")?;
        sh(&["ip", "netns", "add", HUB])?;
        nsh(HUB, &["ip", "link", "set", "lo", "up"])?;
        nsh(HUB, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let n = self.seats.len();
        for k in 0..n {
            let ns = seat_ns(k);
            let (a, g) = (self.addr(k).to_string(), self.gateway(k).to_string());
            sh(&["ip", "netns", "add", &ns])?;
            nsh(&ns, &["ip", "link", "set", "lo", "up"])?;
            let port = format!("s{k}");
            sh(&[
                "ip", "-n", HUB, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            sh(&[
                "ip",
                "-n",
                HUB,
                "addr",
                "add",
                &format!("{g}/24"),
                "dev",
                &port,
            ])?;
            sh(&["ip", "-n", HUB, "link", "set", &port, "up"])?;
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{a}/24"),
                "dev",
                "eth0",
            ])?;
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", &ns, "route", "add", "default", "via", &g])?;
            // docs/WAN.md: 64 MiB socket-buffer maxima, or one flow stalls at ~0.5 Gbit/s at 50 ms.
            nsh(
                &ns,
                &[
                    "sysctl",
                    "-qw",
                    &format!("net.ipv4.tcp_rmem=4096 {} 67108864", w.tcp_buf_default),
                    &format!("net.ipv4.tcp_wmem=4096 {} 67108864", w.tcp_buf_default),
                    &format!("net.ipv4.tcp_congestion_control={}", w.tcp_cc),
                    &format!(
                        "net.ipv4.tcp_slow_start_after_idle={}",
                        u8::from(w.slow_start_after_idle)
                    ),
                ],
            )?;
            // Upload cap on the seat's own egress (shaping, never delay, here).
            let up = w.regions[self.seats[k].region].rate_mbit;
            if up > 0 {
                htb_root(&ns, "eth0", up)?;
            }
        }
        // Download caps, per source, on the hub's port toward each seat.
        for d in 0..n {
            let port = format!("s{d}");
            let rates: Vec<u64> = (0..n).map(|src| self.pair_rate(w, src, d)).collect();
            if rates.iter().all(|r| *r == 0) {
                continue;
            }
            let down = w.regions[self.seats[d].region].rate_mbit;
            let top = if down > 0 { down } else { 100_000 };
            sh(&[
                "tc", "-n", HUB, "qdisc", "add", "dev", &port, "root", "handle", "1:", "htb",
                "default", "999",
            ])?;
            htb_class(&port, "1:", "1:1", top)?;
            htb_class(&port, "1:1", "1:999", top)?;
            for (src, r) in rates.iter().enumerate() {
                if src == d {
                    continue;
                }
                let rate = if *r > 0 { *r } else { top };
                let id = format!("1:{}", 10 + src);
                htb_class(&port, "1:1", &id, rate)?;
                sh(&[
                    "tc",
                    "-n",
                    HUB,
                    "filter",
                    "add",
                    "dev",
                    &port,
                    "parent",
                    "1:",
                    "protocol",
                    "ip",
                    "prio",
                    "1",
                    "u32",
                    "match",
                    "ip",
                    "src",
                    &format!("{}/32", self.addr(src)),
                    "flowid",
                    &id,
                ])?;
            }
        }
        // One-way delays: one NFQUEUE per distinct delay (FIFO per queue).
        for src in 0..n {
            for d in 0..n {
                let us = self.pair_delay_us(w, src, d);
                if src != d && us > 0 {
                    let (s, d) = (self.addr(src).to_string(), self.addr(d).to_string());
                    self.delay("FORWARD", &["-s", &s, "-d", &d], us)?;
                }
            }
        }
        // The master's traffic is the hub's own (INPUT, OUTPUT), not forwarded.
        let master_us = (w.master_delay_ms * 1000.0) as u64;
        if master_us > 0 {
            let port = MASTER_PORT.to_string();
            self.delay("INPUT", &["-p", "tcp", "--dport", &port], master_us)?;
            self.delay("OUTPUT", &["-p", "tcp", "--sport", &port], master_us)?;
        }
        if w.loss > 0.0 {
            nsh(
                HUB,
                &[
                    "iptables",
                    "-w",
                    "-A",
                    "FORWARD",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &format!("{}", w.loss),
                    "-j",
                    "DROP",
                ],
            )?;
        }
        Ok(())
    }

    /// Sends the hub's packets in `chain` that match `matching` through the NFQUEUE of
    /// delay `us` (one queue per distinct delay).
    fn delay(&mut self, chain: &str, matching: &[&str], us: u64) -> Result<()> {
        let next = self.queues.len() as u16;
        let q = self.queues.entry(us).or_insert(next).to_string();
        let mut args = vec!["iptables", "-w", "-t", "mangle", "-A", chain];
        args.extend_from_slice(matching);
        args.extend_from_slice(&["-j", "NFQUEUE", "--queue-num", &q, "--queue-bypass"]);
        nsh(HUB, &args)
    }

    fn pair_rate(&self, w: &crate::scenario::Wan, src: usize, d: usize) -> u64 {
        let (ra, rb) = (
            &w.regions[self.seats[src].region],
            &w.regions[self.seats[d].region],
        );
        let link = w
            .links
            .iter()
            .find(|l| (l.a == ra.name && l.b == rb.name) || (l.a == rb.name && l.b == ra.name))
            .map_or(0, |l| l.rate_mbit);
        [ra.rate_mbit, rb.rate_mbit, link]
            .into_iter()
            .filter(|r| *r > 0)
            .min()
            .unwrap_or(0)
    }

    fn pair_delay_us(&self, w: &crate::scenario::Wan, src: usize, d: usize) -> u64 {
        let (ra, rb) = (
            &w.regions[self.seats[src].region],
            &w.regions[self.seats[d].region],
        );
        let ms = if ra.name == rb.name {
            ra.delay_ms
        } else {
            w.links
                .iter()
                .find(|l| (l.a == ra.name && l.b == rb.name) || (l.a == rb.name && l.b == ra.name))
                .map_or(0.0, |l| l.delay_ms)
        };
        (ms * 1000.0) as u64
    }

    fn start_delayd(
        &mut self,
        run_id: &str,
        exe: &Path,
        lines: &Sender<(u32, String)>,
        dir: &Path,
    ) -> Result<()> {
        if self.queues.is_empty() {
            return Ok(());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let mut cmd = self.hub_cmd(exe);
        cmd.args(["--delayd", "--run-id", run_id]);
        for (us, q) in &self.queues {
            cmd.args(["--queue", &format!("{q}:{us}")]);
        }
        let p = Proc::spawn(cmd, DELAYD_TAG, tx, &dir.join("delayd.err"))?;
        self.delayd = Some(p);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok((_, l)) if l.starts_with("DELAYD ready") => break,
                Ok(_) => {}
                Err(_) if Instant::now() > end => bail!(
                    "the delay daemon did not start: {}",
                    std::fs::read_to_string(dir.join("delayd.err")).unwrap_or_default()
                ),
                Err(_) => {}
            }
        }
        // Its later lines (statistics) go to the harness's channel.
        let lines = lines.clone();
        std::thread::spawn(move || {
            while let Ok(l) = rx.recv() {
                if lines.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(())
    }

    pub(crate) fn seats(&self) -> usize {
        self.seats.len()
    }

    pub(crate) fn addr(&self, k: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 99, k as u8, 2))
    }

    pub(crate) fn gateway(&self, k: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 99, k as u8, 1))
    }

    /// `exe` run inside seat `k`.
    pub(crate) fn seat_cmd(&self, k: usize, exe: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &seat_ns(k)]).arg(exe);
        c
    }

    /// `exe` run inside the hub.
    pub(crate) fn hub_cmd(&self, exe: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", HUB]).arg(exe);
        c
    }

    /// Resets seat k's peer-to-peer connections (not its master connection).
    pub(crate) fn reset(&self, k: usize) -> Result<()> {
        let filter = format!("( dport != :{MASTER_PORT} )");
        nsh(&seat_ns(k), &["ss", "-K", "-t", &filter])
    }

    /// Cuts (or heals) seat k from everyone, the master included, silently.
    /// Every rule is tried (a heal must remove what it can); the failures are returned.
    pub(crate) fn partition(&self, k: usize, on: bool) -> Result<()> {
        let a = self.addr(k).to_string();
        let mut failed = Vec::new();
        let op = if on { "-I" } else { "-D" };
        for (chain, dir) in [
            ("FORWARD", "-s"),
            ("FORWARD", "-d"),
            ("INPUT", "-s"),
            ("OUTPUT", "-d"),
        ] {
            if let Err(e) = nsh(HUB, &["iptables", "-w", op, chain, dir, &a, "-j", "DROP"]) {
                failed.push(format!("{e:#}"));
            }
        }
        match failed.is_empty() {
            true => Ok(()),
            false => bail!("{}", failed.join("; ")),
        }
    }

    /// Directory-free teardown: the daemon first, then every namespace. Returns what could
    /// not be removed (a namespace left behind). Runs once; later calls return nothing.
    pub(crate) fn teardown(&mut self) -> Vec<String> {
        if std::mem::replace(&mut self.torn_down, true) {
            return Vec::new();
        }
        if let Some(mut d) = self.delayd.take() {
            d.kill(Duration::from_secs(5));
        }
        let names = (0..self.seats.len()).map(seat_ns).chain([HUB.to_string()]);
        names
            .filter_map(|ns| sh(&["ip", "netns", "del", &ns]).err())
            .map(|e| format!("{e:#}"))
            .collect()
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        // The harness tears down (and reports failures) before dropping; here only the
        // error and abort paths remain, where the stderr line is all that can be done.
        for e in self.teardown() {
            eprintln!("pccl-stress: WAN teardown: {e}");
        }
        procs::set_on_abort(None);
        eprintln!("pccl-stress: WAN torn down");
    }
}

fn burst(mbit: u64) -> String {
    // ≥ 256 KB (docs/WAN.md), and about 2 ms of data at high rates.
    let bytes = (mbit * 1_000_000 / 8 / 500).max(256 * 1024);
    format!("{bytes}b")
}

fn htb_root(ns: &str, dev: &str, mbit: u64) -> Result<()> {
    sh(&[
        "tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1",
    ])?;
    let (rate, b) = (format!("{mbit}mbit"), burst(mbit));
    sh(&[
        "tc", "-n", ns, "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
        "rate", &rate, "ceil", &rate, "burst", &b, "cburst", &b, "quantum", "60000",
    ])
}

fn htb_class(port: &str, parent: &str, id: &str, mbit: u64) -> Result<()> {
    let (rate, b) = (format!("{mbit}mbit"), burst(mbit));
    sh(&[
        "tc", "-n", HUB, "class", "add", "dev", port, "parent", parent, "classid", id, "htb",
        "rate", &rate, "ceil", &rate, "burst", &b, "cburst", &b, "quantum", "60000",
    ])
}
