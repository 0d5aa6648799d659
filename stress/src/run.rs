//! The harness: master, workers, the schedule, the checks, the verdict.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::check::{Checker, median};
use crate::procs::{self, Proc, describe};
use crate::scenario::{Action, Event, Scenario, digest, schedule};
use crate::wan::Wan;
use crate::worker;
use crate::{opt, opt_parse};

/// `--master-proc --listen ADDR --heartbeat-ms N`: a master in its own process (so it can
/// live in the hub namespace); prints `MASTER addr`, exits on stdin EOF.
pub(crate) fn master_proc(args: &[String]) -> Result<()> {
    pccl::init_logging();
    let listen: SocketAddr = opt_parse(args, "--listen")?.context("--listen")?;
    let hb: u64 = opt_parse(args, "--heartbeat-ms")?.unwrap_or(2000);
    let mut cfg = pccl::MasterConfig::new(listen);
    cfg.heartbeat_timeout = Duration::from_millis(hb);
    let m = pccl::MasterNode::start(cfg)?;
    println!("MASTER {}", m.local_addr());
    std::io::stdout().flush()?;
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
    m.interrupt();
    Ok(())
}

#[derive(Debug, PartialEq)]
enum Fate {
    Running,
    /// Killed with -9 by the schedule.
    Killed,
    /// Frozen or partitioned past the heartbeat timeout: must be removed and exit.
    Evicting {
        thaw: Instant,
    },
    /// Sent SIGTERM: must close and exit 0.
    Leaving {
        since: Instant,
    },
    Gone,
}

#[derive(Debug)]
struct Peer {
    proc: Proc,
    seat: Option<usize>,
    fate: Fate,
    joined: bool,
    frozen_until: Option<Instant>,
    healed_at: Option<Instant>,
    gone_at: Option<Instant>,
    err_path: PathBuf,
}

/// The counters of the summary and JSON report.
#[derive(Debug, Default, Serialize)]
struct Counts {
    joins: u64,
    joins_accepted: u64,
    joins_deferred: u64,
    kills: u64,
    freezes_short: u64,
    freezes_long: u64,
    evicted: u64,
    leaves: u64,
    resets: u64,
    partitions_short: u64,
    partitions_long: u64,
    events_skipped: u64,
    unexpected_exits: u64,
    stalls: u64,
    leaks: u64,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    seed: u64,
    scenario: &'a Scenario,
    mode: String,
    schedule_events: usize,
    schedule_digest: String,
    wall_s: f64,
    counts: &'a Counts,
    steps: u64,
    last_step: u64,
    step_lines: u64,
    max_world: u32,
    parity_checks: u64,
    parity_violations: u64,
    value_violations: u64,
    membership_checked: u64,
    membership_unverified: u64,
    failed_ops_recovered: u64,
    recovery_ms_max: f64,
    recovery_ms_median: f64,
    busbw_gbps_median: f64,
    busbw_gbps_max: f64,
    quantized: bool,
    violations: &'a [String],
    verdict: &'a str,
}

struct Harness {
    scenario: Scenario,
    use_wan: bool,
    exe: PathBuf,
    run_id: String,
    dir: PathBuf,
    wan: Option<Wan>,
    master: Option<Proc>,
    master_port: u16,
    master_addr: SocketAddr,
    peers: BTreeMap<u32, Peer>,
    lines_tx: mpsc::Sender<(u32, String)>,
    counts: Counts,
    checker: Checker,
}

const MASTER_TAG: u32 = u32::MAX;

pub(crate) fn harness(args: &[String]) -> Result<u8> {
    let seed: u64 = match opt_parse(args, "--seed")? {
        Some(s) => s,
        None => rand::random::<u64>() >> 12,
    };
    // The seed comes first, before anything can fail or hang.
    println!("seed {seed}");
    std::io::stdout().flush()?;
    let path = opt(args, "--scenario").context(crate::USAGE)?;
    let mut s = Scenario::load(Path::new(&path))?;
    if let Some(d) = opt_parse(args, "--duration")? {
        s.duration_s = d;
    }
    if let Some(n) = opt_parse(args, "--steps")? {
        s.steps = n;
    }
    let force_loopback = args.iter().any(|a| a == "--loopback");
    procs::install_guards();
    // WAN needs root (namespaces); `--loopback` forces the fallback.
    let use_wan = s.wan.is_some() && !force_loopback && is_root();
    let mode = if use_wan {
        "wan (network namespaces, htb caps, NFQUEUE delay)".to_string()
    } else if s.wan.is_some() {
        "loopback FALLBACK (not root or --loopback): no namespaces, no delay, no loss; the \
         regions' rates become SO_MAX_PACING_RATE caps on each worker's sockets"
            .to_string()
    } else {
        "loopback (127.0.0.1, no caps, no delay)".to_string()
    };
    println!("scenario {} ({path}), mode: {mode}", s.name);
    let events = schedule(&s, &mut ChaCha8Rng::seed_from_u64(seed), use_wan);
    println!(
        "schedule: {} events over {:.0} s, digest {:08x}",
        events.len(),
        s.duration_s,
        digest(&events)
    );
    let run_id = format!("pcclst{}x{seed}", std::process::id());
    let dir = PathBuf::from(
        opt(args, "--run-dir").unwrap_or_else(|| format!("target/stress/{}-{seed}", s.name)),
    );
    std::fs::create_dir_all(&dir)?;
    let report_path = opt(args, "--report")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("report.json"));
    let (tx, rx) = mpsc::channel();
    let mut h = Harness {
        checker: Checker::new(s.ops.count, s.ops.concurrent),
        scenario: s,
        use_wan,
        exe: std::env::current_exe()?,
        run_id,
        dir,
        wan: None,
        master: None,
        master_port: 0,
        master_addr: "127.0.0.1:0".parse().expect("literal"),
        peers: BTreeMap::new(),
        lines_tx: tx,
        counts: Counts::default(),
    };
    let started = Instant::now();
    let outcome = h.run(&events, &rx);
    if let Err(e) = &outcome {
        h.checker.violation(format!("harness error: {e:#}"));
    }
    h.shutdown();
    let wall = started.elapsed().as_secs_f64();
    h.checker.finish();
    let t = &h.checker.tally;
    let ok = t.violations.is_empty();
    let verdict = if ok { "PASS" } else { "FAIL" };
    let report = Report {
        seed,
        scenario: &h.scenario,
        mode,
        schedule_events: events.len(),
        schedule_digest: format!("{:08x}", digest(&events)),
        wall_s: wall,
        counts: &h.counts,
        steps: t.steps,
        last_step: t.last_step,
        step_lines: t.step_lines,
        max_world: t.max_world,
        parity_checks: t.parity_checks,
        parity_violations: t.parity_violations,
        value_violations: t.value_violations,
        membership_checked: t.membership_checked,
        membership_unverified: t.membership_unverified,
        failed_ops_recovered: t.failed_ops_recovered,
        recovery_ms_max: t.recovery_ms.iter().copied().fold(0.0, f64::max),
        recovery_ms_median: median(&t.recovery_ms),
        busbw_gbps_median: median(&t.busbw),
        busbw_gbps_max: t.busbw.iter().copied().fold(0.0, f64::max),
        quantized: h.scenario.ops.quantize,
        violations: &t.violations,
        verdict,
    };
    std::fs::write(&report_path, serde_json::to_string_pretty(&report)?)?;
    print_summary(&report);
    println!("report: {}", report_path.display());
    Ok(if ok { 0 } else { 1 })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn print_summary(r: &Report<'_>) {
    let c = r.counts;
    println!("==================== pccl-stress summary ====================");
    println!(
        "seed {}  scenario {}  wall {:.1} s",
        r.seed, r.scenario.name, r.wall_s
    );
    println!("mode: {}", r.mode);
    println!(
        "steps {} (last {}, {} step lines, max world {})",
        r.steps, r.last_step, r.step_lines, r.max_world
    );
    println!(
        "joins {} (accepted {}, deferred {})  kills {}  leaves {}",
        c.joins, c.joins_accepted, c.joins_deferred, c.kills, c.leaves
    );
    println!(
        "freezes short {} long {} (evicted {})  resets {}  partitions short {} long {}",
        c.freezes_short, c.freezes_long, c.evicted, c.resets, c.partitions_short, c.partitions_long
    );
    println!(
        "failed ops recovered {}  recovery ms max {:.1} median {:.1}",
        r.failed_ops_recovered, r.recovery_ms_max, r.recovery_ms_median
    );
    println!(
        "bus bandwidth (steps without retries) median {:.3} GB/s, max {:.3} GB/s",
        r.busbw_gbps_median, r.busbw_gbps_max
    );
    println!(
        "parity checks {}  parity violations {}  value violations {}  K checked {} (unverified {})",
        r.parity_checks,
        r.parity_violations,
        r.value_violations,
        r.membership_checked,
        r.membership_unverified
    );
    println!(
        "unexpected exits {}  stalls {}  leaked processes {}  events skipped {}",
        c.unexpected_exits, c.stalls, c.leaks, c.events_skipped
    );
    for v in r.violations.iter().take(20) {
        println!("  violation: {v}");
    }
    println!("verdict: {}", r.verdict);
}

impl Harness {
    fn run(&mut self, events: &[Event], rx: &mpsc::Receiver<(u32, String)>) -> Result<()> {
        if self.use_wan {
            // Installed before anything else so a failed setup is torn down too.
            let w = Wan::setup(
                &self.scenario,
                &self.run_id,
                &self.exe,
                &self.lines_tx,
                &self.dir,
            )?;
            self.wan = Some(w);
        }
        self.start_master(rx)?;
        for slot in 0..self.scenario.peers as u32 {
            self.spawn(slot)?;
        }
        let start = Instant::now();
        self.checker.last_progress = start;
        let end = Duration::from_secs_f64(self.scenario.duration_s);
        let deadline = Duration::from_secs_f64(self.scenario.progress_deadline_s);
        let mut next = 0;
        let mut deferred: Vec<u32> = Vec::new();
        let mut last_print = Instant::now();
        loop {
            // Output of every child, waiting at most 20 ms for the first line.
            if let Ok((tag, line)) = rx.recv_timeout(Duration::from_millis(20)) {
                self.line(tag, &line);
                while let Ok((tag, line)) = rx.try_recv() {
                    self.line(tag, &line);
                }
            }
            let now = Instant::now();
            self.thaw(now);
            while next < events.len() && start + Duration::from_millis(events[next].at_ms) <= now {
                let a = events[next].action.clone();
                next += 1;
                if let Action::Join(slot) = a {
                    if !self.try_join(slot)? {
                        deferred.push(slot);
                    }
                } else {
                    self.act(&a);
                }
            }
            deferred.retain(|slot| !self.try_join(*slot).unwrap_or(true));
            self.reap(now);
            if self.checker.last_progress.elapsed() > deadline {
                self.counts.stalls += 1;
                let m = format!(
                    "stall: no step completed for {:.0} s (last step {})",
                    deadline.as_secs_f64(),
                    self.checker.tally.last_step
                );
                self.checker.violation(m);
                self.dump_stacks();
                break;
            }
            if self.master.as_mut().and_then(Proc::exited).is_some() {
                self.checker.violation("the master exited".into());
                break;
            }
            if last_print.elapsed() > Duration::from_secs(10) {
                last_print = Instant::now();
                let live = self.peers.values().filter(|p| p.fate != Fate::Gone).count();
                println!(
                    "[{:>5.0} s] step {} lines {} peers {} joins {} kills {} freezes {}+{} leaves {} violations {}",
                    start.elapsed().as_secs_f64(),
                    self.checker.tally.last_step,
                    self.checker.tally.step_lines,
                    live,
                    self.counts.joins,
                    self.counts.kills,
                    self.counts.freezes_short,
                    self.counts.freezes_long,
                    self.counts.leaves,
                    self.checker.tally.violations.len()
                );
            }
            let steps = self.scenario.steps;
            if start.elapsed() >= end || (steps > 0 && self.checker.tally.steps >= steps) {
                break;
            }
        }
        // Drain what is already printed.
        while let Ok((tag, line)) = rx.try_recv() {
            self.line(tag, &line);
        }
        if self.checker.tally.steps == 0 {
            self.checker
                .violation("no step completed in the whole run".into());
        } else if self.checker.last_progress.elapsed() > deadline / 2 {
            let m = format!(
                "no step completed in the last {:.0} s of the run",
                self.checker.last_progress.elapsed().as_secs_f64()
            );
            self.checker.violation(m);
        }
        Ok(())
    }

    fn start_master(&mut self, rx: &mpsc::Receiver<(u32, String)>) -> Result<()> {
        let hb = self.scenario.heartbeat_timeout_ms.to_string();
        let listen = if self.wan.is_some() {
            "0.0.0.0:29500" // wan::MASTER_PORT
        } else {
            "127.0.0.1:0"
        };
        let mut cmd = match &self.wan {
            Some(w) => w.hub_cmd(&self.exe),
            None => Command::new(&self.exe),
        };
        cmd.args([
            "--master-proc",
            "--listen",
            listen,
            "--heartbeat-ms",
            &hb,
            "--run-id",
            &self.run_id,
        ]);
        let m = Proc::spawn(
            cmd,
            MASTER_TAG,
            self.lines_tx.clone(),
            &self.dir.join("master.err"),
        )?;
        self.master = Some(m);
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            let Ok((MASTER_TAG, line)) = rx.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            if let Some(a) = line.strip_prefix("MASTER ") {
                self.master_addr = a.trim().parse()?;
                self.master_port = self.master_addr.port();
                println!("master at {}", self.master_addr);
                return Ok(());
            }
        }
        bail!("the master did not start in 20 s")
    }

    fn worker_args(
        &self,
        slot: u32,
        master: SocketAddr,
        bind: Option<std::net::IpAddr>,
    ) -> Vec<String> {
        let o = &self.scenario.ops;
        worker::Args {
            master: Some(master),
            slot,
            count: o.count,
            concurrent: o.concurrent,
            state_elems: o.state_elems,
            pool: o.pool,
            api: o.api.clone(),
            bind,
            slice_bytes: o.slice_bytes,
            step_pause_ms: o.step_pause_ms,
            pace: self.pace_for(slot),
            quantize: o.quantize,
            run_id: self.run_id.clone(),
        }
        .to_args()
    }

    /// Loopback fallback of a WAN scenario: the slot's region rate as a pacing cap.
    fn pace_for(&self, slot: u32) -> u64 {
        let Some(w) = self.scenario.wan.as_ref().filter(|_| self.wan.is_none()) else {
            return 0;
        };
        let seats: Vec<u64> = w
            .regions
            .iter()
            .flat_map(|r| std::iter::repeat_n(r.rate_mbit, r.seats))
            .collect();
        seats[slot as usize % seats.len()] * 1_000_000 / 8
    }

    /// Starts slot's worker; false when no network seat is free (WAN), so it waits.
    fn try_join(&mut self, slot: u32) -> Result<bool> {
        let free = match &self.wan {
            None => None,
            Some(w) => {
                let used: BTreeSet<usize> = self
                    .peers
                    .values()
                    .filter(|p| p.fate != Fate::Gone)
                    .filter_map(|p| p.seat)
                    .collect();
                match (0..w.seats()).find(|s| !used.contains(s)) {
                    Some(s) => Some(s),
                    None => {
                        self.counts.joins_deferred += 1;
                        return Ok(false);
                    }
                }
            }
        };
        debug_assert!(self.wan.is_none() || free.is_some());
        self.spawn(slot)?;
        self.counts.joins += 1;
        Ok(true)
    }

    fn spawn(&mut self, slot: u32) -> Result<()> {
        let seat = self.wan.as_ref().and_then(|w| {
            let used: BTreeSet<usize> = self
                .peers
                .values()
                .filter(|p| p.fate != Fate::Gone)
                .filter_map(|p| p.seat)
                .collect();
            (0..w.seats()).find(|s| !used.contains(s))
        });
        let (mut cmd, master, bind) = match (&self.wan, seat) {
            (Some(w), Some(s)) => (
                w.seat_cmd(s, &self.exe),
                SocketAddr::new(w.gateway(s), self.master_port),
                Some(w.addr(s)),
            ),
            (Some(_), None) => bail!("no free network seat for slot {slot}"),
            _ => (Command::new(&self.exe), self.master_addr, None),
        };
        cmd.args(self.worker_args(slot, master, bind));
        let err_path = self.dir.join(format!("slot-{slot}.err"));
        let proc = Proc::spawn(cmd, slot, self.lines_tx.clone(), &err_path)?;
        self.peers.insert(
            slot,
            Peer {
                proc,
                seat,
                fate: Fate::Running,
                joined: false,
                frozen_until: None,
                healed_at: None,
                gone_at: None,
                err_path,
            },
        );
        Ok(())
    }

    fn line(&mut self, tag: u32, line: &str) {
        if let Some(j) = line.strip_prefix("STEP ") {
            match serde_json::from_str::<worker::StepLine>(j) {
                Ok(l) => {
                    // Who could have taken part: live processes and those gone lately.
                    let alive: BTreeSet<u32> = self
                        .peers
                        .iter()
                        .filter(|(_, p)| {
                            p.gone_at
                                .is_none_or(|t| t.elapsed() < Duration::from_secs(10))
                        })
                        .map(|(s, _)| *s)
                        .collect();
                    self.checker.step(l, &alive);
                }
                Err(e) => self
                    .checker
                    .violation(format!("slot {tag}: bad step line ({e}): {line}")),
            }
        } else if line.starts_with("JOINED ") {
            if let Some(p) = self.peers.get_mut(&tag) {
                p.joined = true;
            }
            if tag >= self.scenario.peers as u32 {
                self.counts.joins_accepted += 1;
            }
        } else if line.starts_with("LEFT ") {
            self.counts.leaves += 1;
        } else if tag == MASTER_TAG || tag >= 1 << 30 {
            println!("[aux {tag}] {line}");
        }
    }

    fn act(&mut self, a: &Action) {
        let slot = match a {
            Action::Join(s) | Action::Kill(s) | Action::Leave(s) | Action::Reset(s) => *s,
            Action::Freeze { slot, .. } | Action::Partition { slot, .. } => *slot,
        };
        let seat = self.peers.get(&slot).and_then(|p| p.seat);
        let Some(p) = self
            .peers
            .get_mut(&slot)
            .filter(|p| p.fate == Fate::Running)
        else {
            self.counts.events_skipped += 1;
            return;
        };
        let now = Instant::now();
        match a {
            Action::Join(_) => {}
            Action::Kill(_) => {
                p.proc.signal(libc::SIGKILL);
                p.fate = Fate::Killed;
                self.counts.kills += 1;
            }
            Action::Freeze { ms, long, .. } => {
                let until = now + Duration::from_millis(*ms);
                if p.frozen_until.is_some() {
                    self.counts.events_skipped += 1;
                    return;
                }
                p.proc.signal(libc::SIGSTOP);
                p.frozen_until = Some(until);
                if *long {
                    p.fate = Fate::Evicting { thaw: until };
                    self.counts.freezes_long += 1;
                } else {
                    self.counts.freezes_short += 1;
                }
            }
            Action::Leave(_) => {
                p.proc.signal(libc::SIGTERM);
                p.fate = Fate::Leaving { since: now };
            }
            Action::Reset(_) => {
                if let (Some(w), Some(s)) = (&self.wan, seat) {
                    w.reset(s);
                    self.counts.resets += 1;
                }
            }
            Action::Partition { ms, long, .. } => {
                if let (Some(w), Some(s)) = (&self.wan, seat) {
                    let until = now + Duration::from_millis(*ms);
                    w.partition(s, true);
                    p.healed_at = Some(until);
                    if *long {
                        p.fate = Fate::Evicting { thaw: until };
                        self.counts.partitions_long += 1;
                    } else {
                        self.counts.partitions_short += 1;
                    }
                }
            }
        }
    }

    /// SIGCONT for freezes that are over, heal partitions that are over.
    fn thaw(&mut self, now: Instant) {
        for p in self.peers.values_mut() {
            if p.frozen_until.is_some_and(|t| t <= now) {
                p.frozen_until = None;
                p.proc.signal(libc::SIGCONT);
            }
            if p.healed_at.is_some_and(|t| t <= now) {
                p.healed_at = None;
                if let (Some(w), Some(s)) = (&self.wan, p.seat) {
                    w.partition(s, false);
                }
            }
        }
    }

    /// Classifies every child that has exited; enforces eviction and leave deadlines.
    fn reap(&mut self, now: Instant) {
        let mut bad = Vec::new();
        for (slot, p) in &mut self.peers {
            if p.fate == Fate::Gone {
                continue;
            }
            if let Some(st) = p.proc.exited() {
                match p.fate {
                    Fate::Killed => {}
                    Fate::Evicting { .. } => self.counts.evicted += 1,
                    Fate::Leaving { .. } if st.success() => {}
                    _ => {
                        self.counts.unexpected_exits += 1;
                        bad.push(format!(
                            "slot {slot} exited unexpectedly ({}; joined {}): {}",
                            describe(&st),
                            p.joined,
                            tail(&p.err_path)
                        ));
                    }
                }
                p.fate = Fate::Gone;
                p.gone_at = Some(now);
                continue;
            }
            let limit = match p.fate {
                Fate::Evicting { thaw } if now > thaw + Duration::from_secs(30) => {
                    Some("was not removed after a freeze/partition past the heartbeat timeout")
                }
                Fate::Leaving { since } if now > since + Duration::from_secs(30) => {
                    Some("did not leave within 30 s of SIGTERM")
                }
                Fate::Killed if p.proc.wait(Duration::from_secs(2)).is_none() => {
                    Some("survived kill -9")
                }
                _ => None,
            };
            if let Some(why) = limit {
                self.counts.unexpected_exits += 1;
                bad.push(format!("slot {slot} {why}: {}", tail(&p.err_path)));
                p.proc.kill(Duration::from_secs(5));
                p.fate = Fate::Gone;
                p.gone_at = Some(now);
            }
        }
        for b in bad {
            self.checker.violation(b);
        }
    }

    /// Prints where every live worker is blocked (for stalls).
    fn dump_stacks(&self) {
        for (slot, p) in &self.peers {
            if p.fate == Fate::Gone {
                continue;
            }
            let wchan =
                std::fs::read_to_string(format!("/proc/{}/wchan", p.proc.pid)).unwrap_or_default();
            let state = std::fs::read_to_string(format!("/proc/{}/stat", p.proc.pid))
                .ok()
                .and_then(|s| {
                    s.split(") ")
                        .nth(1)
                        .map(|r| r.chars().take(1).collect::<String>())
                })
                .unwrap_or_default();
            eprintln!(
                "slot {slot}: fate {:?} state {state} wchan {wchan}; stderr tail: {}",
                p.fate,
                tail(&p.err_path)
            );
        }
    }

    /// Kills every child, tears the network down, checks that nothing is left.
    fn shutdown(&mut self) {
        for p in self.peers.values_mut() {
            p.proc.kill(Duration::from_secs(5));
        }
        if let Some(m) = self.master.as_mut() {
            m.kill(Duration::from_secs(5));
        }
        self.master = None;
        if let Some(w) = self.wan.take() {
            drop(w);
        }
        let left = procs::leftovers(&self.run_id);
        for (pid, cmd) in &left {
            procs::signal(*pid, libc::SIGKILL);
            self.counts.leaks += 1;
            self.checker
                .violation(format!("leaked process {pid}: {cmd}"));
        }
        procs::set_on_abort(None);
    }
}

/// The last lines of a child's stderr, on one line.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(4).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
