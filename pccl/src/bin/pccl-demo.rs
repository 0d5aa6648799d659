//! `pccl-demo`: a live demonstration of a fault-tolerant all-reduce run on one machine.
//!
//! It starts a master in-process, spawns `pccl-peer` processes (the binary next to this
//! one) that all-reduce 16 MiB of f32 every step, and prints one line per step once every
//! peer of that step has reported: world size, bus bandwidth, and whether all peers ended
//! with bit-identical results. Mid-run it `kill -9`s one peer (the survivors retry on the
//! smaller ring), later starts a fresh peer (it is admitted at the next topology update),
//! and ends with a summary. It exits non-zero on a parity mismatch, a wrong result, an
//! unexpected peer exit, a kill or join that did not happen as scheduled, or 20 s without
//! progress.
//!
//! Every figure of the summary is counted from what happened: kills as performed and
//! confirmed by the reaped exit status, joins as the peers report being accepted, parity
//! and wrong results as checked per step, recovery as the time from the kill to the first
//! step completed on the smaller ring (whichever call the kill interrupted: an all-reduce,
//! which the survivors retry, or a joint call such as `are_peers_pending`, which completes
//! without the dead peer). `--kill-in-joint-call` times the kill so it lands in that joint
//! call: right after the victim reports a step before any other peer has, so it is waiting
//! in (or entering) `are_peers_pending` for the slower peers.
//!
//! Children are never orphaned: `Peers` kills and reaps them in `Drop`, which also runs when
//! the demo panics (unwinding) or returns an error. Ctrl-C in a terminal reaches the whole
//! foreground process group, so the peers (same group) receive SIGINT and die with us.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

/// Steps at full size before the kill, at the reduced size, and after the newcomer joins.
const PHASE_STEPS: [usize; 3] = [40, 30, 30];
/// The demo fails if no step completes for this long.
const STALL: Duration = Duration::from_secs(20);
/// The peer the demo kills (the second one started: mid-ring).
const VICTIM: usize = 1;
/// SIGKILL's number (9 on every Unix); what the victim's reaped status must carry.
const SIGKILL: i32 = 9;

/// One `step S world W crc C ok B ms T retries R` line of peer number `peer`.
struct Report {
    peer: usize,
    step: u64,
    world: usize,
    crc: String,
    ok: bool,
    ms: f64,
    retries: u32,
}

fn parse_report(peer: usize, line: &str) -> Option<Report> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let keys = ["step", "world", "crc", "ok", "ms", "retries"];
    if f.len() != 12 || (0..6).any(|i| f[2 * i] != keys[i]) {
        return None;
    }
    Some(Report {
        peer,
        step: f[1].parse().ok()?,
        world: f[3].parse().ok()?,
        crc: f[5].to_string(),
        ok: f[7].parse().ok()?,
        ms: f[9].parse().ok()?,
        retries: f[11].parse().ok()?,
    })
}

/// What the reader threads tell the main loop; the `usize` is the peer's index.
enum Event {
    Report(Report),
    Garbage(usize, String),
    Accepted(usize, String),
    Exited(usize),
}

/// One started peer process.
struct PeerProc {
    child: Child,
    name: String,
    /// Killed by the demo: its later output is ignored.
    killed: bool,
}

/// Every peer process started; all are killed and reaped on drop.
struct Peers {
    exe: PathBuf,
    /// The run secret the peers get in `PCCL_RUN_SECRET` (`--secret`), or none.
    secret: Option<String>,
    master: String,
    count: String,
    events: Sender<Event>,
    list: Vec<PeerProc>,
}

impl Peers {
    /// Spawns one `pccl-peer` and threads that turn its stdout/stderr into events.
    fn spawn(&mut self) -> Result<(), String> {
        let k = self.list.len();
        let mut cmd = Command::new(&self.exe);
        for v in ["PCCL_RUN_SECRET", "PCCL_RUN_SECRET_FILE", "PCCL_ENCRYPT"] {
            cmd.env_remove(v);
        }
        if let Some(s) = &self.secret {
            cmd.env("PCCL_RUN_SECRET", s);
        }
        let mut child = cmd
            .args(["--master", &self.master, "--count", &self.count])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.exe.display()))?;
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        // A failed send means the main loop is gone (the demo is ending): nothing to tell.
        let tx = self.events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(match parse_report(k, &line) {
                    Some(r) => Event::Report(r),
                    None => Event::Garbage(k, line),
                });
            }
            let _ = tx.send(Event::Exited(k)); // stdout closed: the process is gone
        });
        let tx = self.events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                // pccl-peer logs `peer <id> accepted`; anything else is a warning worth showing.
                let id = line
                    .strip_prefix("peer ")
                    .and_then(|l| l.strip_suffix(" accepted"));
                match id {
                    Some(id) => drop(tx.send(Event::Accepted(k, id.to_string()))),
                    None => eprintln!("    [peer #{k} stderr] {line}"),
                }
            }
        });
        self.list.push(PeerProc {
            child,
            name: format!("#{k}"),
            killed: false,
        });
        Ok(())
    }

    /// SIGKILLs peer `k`, reaps it and checks that SIGKILL is what ended it.
    fn kill(&mut self, k: usize) -> Result<(), String> {
        let p = &mut self.list[k];
        p.killed = true;
        let pid = p.child.id();
        println!("  >>> killing peer {} (pid {pid}) with SIGKILL", p.name);
        p.child
            .kill()
            .map_err(|e| format!("kill of peer #{k} failed: {e}"))?;
        let status = p.child.wait();
        let status = status.map_err(|e| format!("reaping peer #{k} failed: {e}"))?;
        match status.signal() {
            Some(SIGKILL) => Ok(()),
            _ => Err(format!("peer #{k} was not ended by SIGKILL: {status}")),
        }
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        // Best effort on the way out: a peer that already exited makes these fail.
        for p in &mut self.list {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// What the run did, counted as it happened; the summary prints only these.
#[derive(Default)]
struct Tally {
    peers: usize,
    steps: usize,
    /// SIGKILLs sent whose reaped status confirmed SIGKILL.
    kills: usize,
    accepted_at_start: usize,
    /// Peers started mid-run that reported being accepted.
    joins: usize,
    /// Steps whose reports were compared, and reports compared with the step's first.
    parity_steps: usize,
    parity_compared: usize,
    parity_violations: usize,
    /// Reports of printed steps (and a wrong one, which ends the run) whose element-wise
    /// check (the `ok` field) the demo read.
    results_checked: usize,
    wrong_results: usize,
    /// Steps that needed retries, and the retries (the slowest peer's count per step).
    retried_steps: usize,
    retries: u64,
    /// How the kill was timed; kill → first step completed on the smaller ring, and the
    /// retries in that step (none: no op failed, the kill landed in a joint call or
    /// between ops).
    kill_timing: &'static str,
    recovery_ms: Option<f64>,
    recovery_retries: u32,
    /// Newcomer started → first step completed with it.
    join_ms: Option<f64>,
    busbw_full: Vec<f64>,
}

impl Tally {
    fn print(&self) {
        let n = self.peers;
        let ms = |v: Option<f64>| v.map_or_else(|| "not measured".into(), |v| format!("{v:.0} ms"));
        let mean = self.busbw_full.iter().sum::<f64>() / self.busbw_full.len().max(1) as f64;
        println!("\nsummary (counted during the run):");
        println!("  steps completed        {}", self.steps);
        println!(
            "  peers accepted         {} at start, {} joined later",
            self.accepted_at_start, self.joins
        );
        println!(
            "  peers killed (-9)      {} (each reaped with a SIGKILL status)",
            self.kills
        );
        println!(
            "  parity violations      {} ({} steps checked, {} results compared)",
            self.parity_violations, self.parity_steps, self.parity_compared
        );
        println!(
            "  wrong results          {} ({} results checked element by element)",
            self.wrong_results, self.results_checked
        );
        println!(
            "  recovery               {} (from the kill to the first step on the {}-peer ring)",
            ms(self.recovery_ms),
            n.saturating_sub(1),
        );
        if self.recovery_ms.is_some() {
            let how = match self.recovery_retries {
                0 => "no op failed: it landed in a joint call or between ops".to_string(),
                r => format!("that step retried {r} failed op(s)"),
            };
            println!(
                "                         (kill {}; {how})",
                self.kill_timing
            );
        }
        println!(
            "  retried steps          {} ({} retries)",
            self.retried_steps, self.retries
        );
        println!(
            "  join                   {} (from the newcomer's start to world {n} again)",
            ms(self.join_ms)
        );
        println!("  mean busbw at world {n}  {mean:.2} GB/s");
    }

    /// Everything the schedule promised happened, and nothing went wrong.
    fn verdict(&self) -> Result<(), String> {
        let mut bad = Vec::new();
        if self.kills != 1 {
            bad.push(format!("{} peers killed, expected 1", self.kills));
        }
        if self.joins != 1 {
            bad.push(format!("{} peers joined, expected 1", self.joins));
        }
        if self.parity_violations + self.wrong_results > 0 {
            bad.push("parity violations or wrong results".into());
        }
        if self.recovery_ms.is_none() || self.join_ms.is_none() {
            bad.push("the run did not recover and grow back".into());
        }
        match bad.is_empty() {
            true => Ok(()),
            false => Err(bad.join("; ")),
        }
    }
}

fn main() -> ExitCode {
    pccl::init_logging();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("\nFAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where the demo kills the victim.
#[derive(Clone, Copy, PartialEq)]
enum KillAt {
    /// Once the 40th full step is printed: usually mid all-reduce of the next step.
    StepBoundary,
    /// Right after the victim alone reported a step: in the `are_peers_pending` joint call.
    JointCall,
}

fn run() -> Result<(), String> {
    let (mut n, mut count, mut kill_at) = (4usize, 4usize << 20, KillAt::StepBoundary);
    let mut secret = None;
    let usage = "usage: pccl-demo [--peers N (>= 3)] [--count ELEMENTS] [--kill-in-joint-call] \
                 [--secret]";
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--kill-in-joint-call" {
            kill_at = KillAt::JointCall;
            continue;
        }
        if a == "--secret" {
            // An authenticated run (SECURITY.md §6): a fresh secret, never printed.
            secret = Some(pccl::secure::RunSecret::generate());
            continue;
        }
        let v = args.next().and_then(|v| v.parse::<usize>().ok());
        match (a.as_str(), v) {
            // After the kill the ring must still have two peers to all-reduce.
            ("--peers", Some(v)) if v >= 3 => n = v,
            ("--count", Some(v)) if v >= 1 => count = v,
            _ => return Err(usage.into()),
        }
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let exe = exe.with_file_name(format!("pccl-peer{}", std::env::consts::EXE_SUFFIX));
    if !exe.exists() {
        let hint = "build it with `cargo build --release -p pccl --bins`";
        return Err(format!("{} not found; {hint}", exe.display()));
    }

    // Declared before `peers`, so it is dropped (stopped) after them.
    let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut master_config = pccl::MasterConfig::new(listen);
    master_config.secret = secret
        .as_deref()
        .map(pccl::secure::RunSecret::new)
        .transpose()
        .map_err(|e| e.to_string())?;
    // The dashboard (README, "Watching a run"): on the usual port when it is free.
    master_config.http = Some(([127, 0, 0, 1], 9148).into());
    let master = match pccl::MasterNode::start(master_config.clone()) {
        Ok(m) => m,
        Err(_) => {
            master_config.http = Some(([127, 0, 0, 1], 0).into());
            pccl::MasterNode::start(master_config)
                .map_err(|e| format!("cannot start the master: {e}"))?
        }
    };
    let (events, rx) = mpsc::channel();
    let (master_addr, list) = (master.local_addr().to_string(), Vec::new());
    let authenticated = secret.is_some();
    let mut peers = Peers {
        exe,
        secret,
        master: master_addr,
        count: count.to_string(),
        events,
        list,
    };
    let bytes = count * 4;
    let mib = bytes as f64 / (1 << 20) as f64;
    println!("pccl demo: master on {}, {n} peers", master.local_addr());
    if let Some(a) = master.http_addr() {
        println!("dashboard: http://{a}/   (Prometheus metrics: http://{a}/metrics)");
    }
    if authenticated {
        println!(
            "authenticated run: a fresh 256-bit run secret given to the master and every peer \
             (not shown); a process without it cannot join"
        );
    }
    println!(
        "each step all-reduces (sum) {count} f32 ({mib:.1} MiB); step ms is the slowest peer's\n\
         step: a tiny step-agreement all-reduce + the all-reduce + filling/checking the buffer"
    );
    for _ in 0..n {
        peers.spawn()?;
    }
    println!("\n  step  world   step ms  busbw(GB/s)  parity");
    let mut tally = Tally {
        peers: n,
        ..Tally::default()
    };
    let outcome = Demo {
        peers: &mut peers,
        tally: &mut tally,
        pending: BTreeMap::new(),
        n,
        bytes,
        kill_at,
        phase: 0,
        in_phase: 0,
        changed_at: None,
    }
    .drive(&rx);
    tally.print();
    println!("stopping all peers and the master.");
    outcome.and_then(|()| tally.verdict())
}

/// The main loop's state: the schedule's phase and the reports of steps not yet printed.
struct Demo<'a> {
    peers: &'a mut Peers,
    tally: &'a mut Tally,
    pending: BTreeMap<u64, Vec<Report>>,
    n: usize,
    bytes: usize,
    kill_at: KillAt,
    /// 0: full ring, 1: after the kill, 2: after the newcomer started.
    phase: usize,
    /// Steps printed at the phase's expected world size.
    in_phase: usize,
    /// When the kill or the newcomer's start happened, until its effect is seen.
    changed_at: Option<Instant>,
}

impl Demo<'_> {
    /// Collects reports, prints completed steps and runs the schedule until it ends.
    fn drive(&mut self, rx: &Receiver<Event>) -> Result<(), String> {
        let mut last_progress = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                // Lines of the peer we killed are ignored: it may have finished a step alone.
                Ok(Event::Report(r)) if !self.peers.list[r.peer].killed => self.report(r)?,
                Ok(Event::Garbage(k, line)) if !self.peers.list[k].killed => {
                    return Err(format!("peer #{k} printed an unexpected line: {line}"));
                }
                Ok(Event::Accepted(k, id)) => {
                    println!("  peer #{k} ({id}) accepted");
                    self.peers.list[k].name = format!("#{k} {id}");
                    match k < self.n {
                        true => self.tally.accepted_at_start += 1,
                        false => self.tally.joins += 1,
                    }
                }
                Ok(Event::Exited(k)) if !self.peers.list[k].killed => {
                    return Err(format!("peer #{k} exited unexpectedly"));
                }
                Ok(_) | Err(_) => {} // a killed peer's output, or nothing within 100 ms
            }
            if self.flush()? {
                last_progress = Instant::now();
            }
            if self.phase == PHASE_STEPS.len() {
                return Ok(());
            }
            if last_progress.elapsed() > STALL {
                return Err(format!("no step completed for {} s", STALL.as_secs()));
            }
        }
    }

    /// Takes one report: counts its check, and may trigger the joint-call kill.
    fn report(&mut self, r: Report) -> Result<(), String> {
        if !r.ok {
            self.tally.results_checked += 1;
            self.tally.wrong_results += 1;
            return Err(format!(
                "peer #{} got a wrong sum at step {}",
                r.peer, r.step
            ));
        }
        // The victim reporting a step before anyone else has: it now waits in the
        // `are_peers_pending` joint call for the slower peers.
        let first = !self.pending.contains_key(&r.step);
        let joint_kill = self.kill_at == KillAt::JointCall
            && self.phase == 0
            && self.in_phase + 1 >= PHASE_STEPS[0]
            && r.peer == VICTIM
            && first;
        let step = r.step;
        self.pending.entry(r.step).or_default().push(r);
        if joint_kill {
            println!(
                "  >>> peer #{VICTIM} reported step {step} before the others: it now waits in \
                 (or is entering) the are_peers_pending joint call"
            );
            self.tally.kill_timing = "timed into a joint call";
            self.kill_victim()?;
        }
        Ok(())
    }

    /// Prints every step up to the last complete one; true if any was printed.
    fn flush(&mut self) -> Result<bool, String> {
        // A step is complete once `world` peers reported it; a step left incomplete (its
        // missing report was the killed peer's) is flushed when a later one completes.
        let complete = |r: &Vec<Report>| r.len() >= r.iter().map(|r| r.world).max().unwrap_or(0);
        let last = self.pending.iter().rfind(|(_, r)| complete(r));
        let last = last.map(|(s, _)| *s);
        let mut printed = false;
        while let Some(entry) = self
            .pending
            .first_entry()
            .filter(|e| Some(*e.key()) <= last)
        {
            let (s, reps) = entry.remove_entry();
            self.step(s, &reps)?;
            printed = true;
            if self.phase == PHASE_STEPS.len() {
                break;
            }
        }
        Ok(printed)
    }

    /// Prints and checks one completed step, and advances the schedule.
    fn step(&mut self, s: u64, reps: &[Report]) -> Result<(), String> {
        let (n, t) = (self.n, &mut *self.tally);
        let world = reps[0].world;
        let ms = reps.iter().map(|r| r.ms).fold(0.0, f64::max);
        let retries = reps.iter().map(|r| r.retries).max().unwrap_or(0);
        // Ring all-reduce moves 2(n-1)/n of the buffer through each peer's link.
        let busbw = self.bytes as f64 * 2.0 * (world - 1) as f64 / world as f64 / (ms * 1e6);
        let same = |r: &Report| r.crc == reps[0].crc && r.world == world;
        let parity = reps.iter().all(same);
        t.parity_steps += 1;
        t.parity_compared += reps.len() - 1;
        // Counted here, not on arrival, so that the figure is the sum of the printed
        // steps' peer counts (a killed peer's last, unprinted report is not in it).
        t.results_checked += reps.len();
        let verdict = match parity {
            true => format!("ok ({} peers bit-identical)", reps.len()),
            false => "MISMATCH".to_string(),
        };
        let note = (retries > 0).then(|| format!("  ({retries} retries)"));
        let note = note.unwrap_or_default();
        println!("{s:>6} {world:>6} {ms:>9.1} {busbw:>12.2}  {verdict}{note}");
        if !parity {
            t.parity_violations += 1;
            let seen: Vec<_> = reps.iter().map(|r| (r.peer, r.world, &r.crc)).collect();
            return Err(format!("parity broken at step {s}: {seen:?}"));
        }
        t.steps += 1;
        if retries > 0 {
            t.retried_steps += 1;
            t.retries += u64::from(retries);
        }
        if world != if self.phase == 1 { n - 1 } else { n } {
            return Ok(()); // still forming, or a step before the change took effect
        }
        if world == n {
            t.busbw_full.push(busbw);
        }
        if let Some(at) = self.changed_at.take() {
            let took = at.elapsed().as_secs_f64() * 1e3;
            if self.phase == 1 {
                t.recovery_ms = Some(took);
                t.recovery_retries = retries;
                println!(
                    "  >>> recovered: step {s} done on the {world}-peer ring {took:.0} ms after \
                     the kill ({retries} retries in it)"
                );
            } else {
                t.join_ms = Some(took);
                println!(
                    "  >>> new peer joined: world {world} again, {took:.0} ms after it started"
                );
            }
        }
        self.in_phase += 1;
        // With `--kill-in-joint-call` phase 0 ends at the kill in `report`; should the victim
        // never be first to report, it is killed here after as many steps again.
        let late = self.kill_at == KillAt::JointCall && self.in_phase < 2 * PHASE_STEPS[0];
        if self.in_phase < PHASE_STEPS[self.phase] || (self.phase == 0 && late) {
            return Ok(());
        }
        match self.phase {
            0 => {
                self.tally.kill_timing = "at a step boundary";
                self.kill_victim()
            }
            1 => {
                println!("  >>> starting a new peer");
                self.peers.spawn()?;
                self.next_phase();
                Ok(())
            }
            _ => {
                self.next_phase();
                Ok(())
            }
        }
    }

    /// Kills a peer in the middle of the ring, as a power cut would.
    fn kill_victim(&mut self) -> Result<(), String> {
        self.peers.kill(VICTIM)?;
        self.tally.kills += 1;
        self.next_phase();
        // Its reports of steps not yet printed are dropped: the survivors may retry those
        // steps on the smaller ring, which is not a parity break.
        self.pending
            .values_mut()
            .for_each(|r| r.retain(|r| r.peer != VICTIM));
        self.pending.retain(|_, r| !r.is_empty());
        Ok(())
    }

    fn next_phase(&mut self) {
        self.phase += 1;
        self.in_phase = 0;
        self.changed_at = Some(Instant::now());
    }
}
