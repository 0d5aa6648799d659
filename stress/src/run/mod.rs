//! The harness (`pccl-stress --scenario FILE`): starts the master and the workers, plays
//! the seeded schedule against them, feeds every worker's step line to the checker, and ends
//! with the verdict, the JSON report and the exit status (0 only without any violation).
//!
//! This file owns the run's main loop; `start.rs` starts the master and the workers,
//! `fates.rs` applies the schedule's actions to peers and judges every exit, `report.rs`
//! holds the counters and prints the summary.

mod fates;
mod html;
mod report;
mod start;
mod strangers;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::check::{Checker, median};
use crate::procs::{self, Proc};
use crate::scenario::{Action, Event, Scenario, digest, schedule};
use crate::wan::Wan;
use crate::worker;
use crate::{opt, opt_parse};
use fates::{Fate, Peer};
use report::{Counts, Report, print_summary};

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
    /// What the HTML report charts (`html.rs`).
    timeline: html::Timeline,
    strangers: Option<strangers::Runner>,
    /// The run-secret variables every master and worker process gets (`security_env`).
    security_env: Vec<(&'static str, String)>,
    /// `master_restarts`: its own seeded stream (the churn schedule stays as it was), the
    /// next kill, and while the master is down, when it comes back.
    master_rng: ChaCha8Rng,
    master_down_at: Option<Instant>,
    master_up_at: Option<Instant>,
    master_restarted_at: Option<Instant>,
}

/// The environment that makes the master and the workers (which read it through
/// `pccl::secure::EnvSecurity`) run authenticated or encrypted: a fresh 256-bit secret per
/// run in `PCCL_RUN_SECRET`, and `PCCL_ENCRYPT`. Children never inherit the harness's own
/// run-secret variables (`Harness::child_env`), so a plain run stays plain.
fn security_env(s: &Scenario) -> Vec<(&'static str, String)> {
    use pccl::secure::{ENCRYPT_VAR, RunSecret, SECRET_VAR};
    if !s.secret {
        return Vec::new();
    }
    vec![
        (SECRET_VAR, RunSecret::generate()),
        (ENCRYPT_VAR, if s.encrypt { "1" } else { "0" }.to_owned()),
    ]
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
    // `--secret` / `--encrypt` run any scenario authenticated / encrypted.
    s.encrypt |= args.iter().any(|a| a == "--encrypt");
    s.secret |= s.encrypt || args.iter().any(|a| a == "--secret");
    let security_env = security_env(&s);
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
    println!(
        "security: {}",
        match (s.secret, s.encrypt) {
            (_, true) => "encrypted run (a fresh run secret, PCCL_ENCRYPT=1)",
            (true, false) => "authenticated run (a fresh run secret)",
            _ => "plain (no run secret)",
        }
    );
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
    let strangers = match &s.strangers {
        Some(_) if use_wan => {
            println!("strangers: off in WAN mode (the peers live in namespaces)");
            None
        }
        Some(st) => {
            let r = strangers::Runner::new(st, s.duration_s, seed);
            println!(
                "strangers: {} attacks planned from {}",
                r.tally.planned, st.from_ip
            );
            Some(r)
        }
        None => None,
    };
    let (tx, rx) = mpsc::channel();
    let mut h = Harness {
        strangers,
        checker: Checker::new(s.ops.count, s.ops.concurrent),
        timeline: html::Timeline::new(Instant::now()),
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
        security_env,
        master_rng: ChaCha8Rng::seed_from_u64(seed ^ 0x6d61_7374_6572),
        master_down_at: None,
        master_up_at: None,
        master_restarted_at: None,
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
        strangers: h.strangers.as_ref().map(|r| &r.tally),
        violations: &t.violations,
        verdict,
    };
    std::fs::write(&report_path, serde_json::to_string_pretty(&report)?)?;
    let html_path = report_path.with_extension("html");
    let title = format!("{} (seed {seed})", h.scenario.name);
    let page = html::render(&title, verdict, &h.timeline, &events);
    std::fs::write(&html_path, page)?;
    print_summary(&report);
    println!("report: {}", report_path.display());
    println!("charts: {}", html_path.display());
    Ok(if ok { 0 } else { 1 })
}

/// Whether we run as root (WAN mode needs it). Unreadable `/proc` counts as not root: the
/// run then takes the loopback fallback and says so in its `mode` line.
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
                        self.counts.joins_deferred += 1;
                        deferred.push(slot);
                    }
                } else {
                    self.stranger_disruption(&a);
                    self.act(&a);
                }
            }
            // A deferred join starts once a seat is free; failing to start it is a harness
            // error like any other start failure (it ends the run with a violation).
            let mut still_waiting = Vec::new();
            for slot in std::mem::take(&mut deferred) {
                if !self.try_join(slot)? {
                    still_waiting.push(slot);
                }
            }
            deferred = still_waiting;
            self.reap(now);
            self.master_restart_tick(now)?;
            self.strangers_tick(start);
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
        self.strangers_finish();
        // Joins that never got a free seat did not happen: counted as such, not as joins.
        self.counts.joins_unstarted = deferred.len() as u64;
        self.never_accepted(deadline);
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

    fn line(&mut self, tag: u32, line: &str) {
        if std::env::var_os("PCCL_STRESS_TRACE").is_some() {
            self.trace(tag, line);
        }
        if let Some(j) = line.strip_prefix("STEP ") {
            match serde_json::from_str::<worker::StepLine>(j) {
                Ok(l) => {
                    self.stranger_step(l.slot, l.step);
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
                    self.timeline.step(&l);
                    self.checker.step(l, &alive);
                }
                Err(e) => self
                    .checker
                    .violation(format!("slot {tag}: bad step line ({e}): {line}")),
            }
        } else if let Some(j) = line.strip_prefix("TOPO ") {
            self.stranger_topo(j);
        } else if let Some(j) = line.strip_prefix("JOINED ") {
            if let Some(p) = self.peers.get_mut(&tag) {
                p.joined = true;
            }
            let tries = serde_json::from_str::<serde_json::Value>(j)
                .ok()
                .and_then(|v| v.get("tries").and_then(serde_json::Value::as_u64))
                .unwrap_or(1);
            if tries > 1 {
                self.counts.joins_turned_away += 1;
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

    /// `PCCL_STRESS_TRACE=1`: every child's output line (cut at 240 bytes) with the time,
    /// in `trace.log` beside the report, to replay how a run went (rings, steps, joins).
    fn trace(&self, tag: u32, line: &str) {
        use std::io::Write as _;
        let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("trace.log"))
        else {
            return;
        };
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let cut = line.char_indices().nth(240).map_or(line.len(), |(i, _)| i);
        let _ = writeln!(f, "{t:.3} [{tag}] {}", &line[..cut]);
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
        if let Some(mut w) = self.wan.take() {
            for e in w.teardown() {
                self.checker
                    .violation(format!("WAN teardown left a namespace: {e}"));
            }
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
