//! `pccl-demo`: a live demonstration of a fault-tolerant all-reduce run on one machine.
//!
//! It starts a master in-process, spawns `pccl-peer` processes (the binary next to this
//! one) that all-reduce 16 MiB of f32 every step, and prints one line per step once every
//! peer of that step has reported: world size, bus bandwidth, and whether all peers ended
//! with bit-identical results. Mid-run it `kill -9`s one peer (the survivors retry on the
//! smaller ring), later starts a fresh peer (it is admitted at the next topology update),
//! and ends with a summary. It exits non-zero on a parity mismatch, a wrong result, an
//! unexpected peer exit, or 20 s without progress.
//!
//! Children are never orphaned: `Peers` kills and reaps them in `Drop`, which also runs when
//! the demo panics (unwinding) or returns an error. Ctrl-C in a terminal reaches the whole
//! foreground process group, so the peers (same group) receive SIGINT and die with us.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
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

/// Every peer process started; all are killed and reaped on drop.
struct Peers {
    exe: PathBuf,
    master: String,
    count: String,
    events: Sender<Event>,
    /// (process, display name, killed by us)
    list: Vec<(Child, String, bool)>,
}

impl Peers {
    /// Spawns one `pccl-peer` and threads that turn its stdout/stderr into events.
    fn spawn(&mut self) -> Result<(), String> {
        let k = self.list.len();
        let mut child = Command::new(&self.exe)
            .args(["--master", &self.master, "--count", &self.count])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.exe.display()))?;
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
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
        self.list.push((child, format!("#{k}"), false));
        Ok(())
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        for (child, _, _) in &mut self.list {
            let _ = child.kill();
            let _ = child.wait();
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

fn run() -> Result<(), String> {
    let (mut n, mut count) = (4usize, 4usize << 20);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().and_then(|v| v.parse::<usize>().ok());
        match (a.as_str(), v) {
            ("--peers", Some(v)) if v >= 2 => n = v,
            ("--count", Some(v)) if v >= 1 => count = v,
            _ => return Err("usage: pccl-demo [--peers N (>= 2)] [--count ELEMENTS]".into()),
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
    let master = pccl::MasterNode::start(pccl::MasterConfig::new(listen))
        .map_err(|e| format!("cannot start the master: {e}"))?;
    let (events, rx) = mpsc::channel();
    let (master_addr, list) = (master.local_addr().to_string(), Vec::new());
    let mut peers = Peers {
        exe,
        master: master_addr,
        count: count.to_string(),
        events,
        list,
    };
    let bytes = count * 4;
    let mib = bytes as f64 / (1 << 20) as f64;
    println!("pccl demo: master on {}, {n} peers", master.local_addr());
    println!(
        "each step all-reduces (sum) {count} f32 ({mib:.1} MiB); step ms is the slowest peer's\n\
         step: a tiny step-agreement all-reduce + the all-reduce + filling/checking the buffer"
    );
    for _ in 0..n {
        peers.spawn()?;
    }
    println!("\n  step  world   step ms  busbw(GB/s)  parity");
    drive(&mut peers, &rx, n, bytes)
}

/// The main loop: collects reports, prints completed steps, and runs the schedule.
fn drive(peers: &mut Peers, rx: &Receiver<Event>, n: usize, bytes: usize) -> Result<(), String> {
    let mut pending: BTreeMap<u64, Vec<Report>> = BTreeMap::new();
    let (mut phase, mut in_phase) = (0usize, 0usize); // 0: full, 1: after the kill, 2: rejoined
    let (mut steps, mut max_recovery_ms, mut busbw_full) = (0usize, 0f64, Vec::new());
    let mut last_progress = Instant::now();
    let mut changed_at: Option<Instant> = None; // when the kill or the spawn happened
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            // Lines of the peer we killed are ignored: it may have finished a step alone.
            Ok(Event::Report(r)) if !peers.list[r.peer].2 => {
                let (p, s) = (r.peer, r.step);
                if !r.ok {
                    return Err(format!("peer #{p} got a wrong sum at step {s}"));
                }
                pending.entry(r.step).or_default().push(r);
            }
            Ok(Event::Garbage(k, line)) if !peers.list[k].2 => {
                return Err(format!("peer #{k} printed an unexpected line: {line}"));
            }
            Ok(Event::Accepted(k, id)) => {
                println!("  peer #{k} ({id}) accepted");
                peers.list[k].1 = format!("#{k} {id}");
            }
            Ok(Event::Exited(k)) if !peers.list[k].2 => {
                return Err(format!("peer #{k} exited unexpectedly"));
            }
            Ok(_) | Err(_) => {} // a killed peer's output, or nothing within 100 ms
        }
        if last_progress.elapsed() > STALL {
            return Err(format!("no step completed for {} s", STALL.as_secs()));
        }

        // A step is complete once `world` peers reported it; a step left incomplete (its
        // missing report was the killed peer's) is flushed when a later one completes.
        let complete = |r: &Vec<Report>| r.len() >= r.iter().map(|r| r.world).max().unwrap_or(0);
        let last = pending.iter().rfind(|(_, r)| complete(r));
        let last = last.map(|(s, _)| *s);
        while let Some(entry) = pending.first_entry().filter(|e| Some(*e.key()) <= last) {
            let (s, reps) = entry.remove_entry();
            let world = reps[0].world;
            let ms = reps.iter().map(|r| r.ms).fold(0.0, f64::max);
            let retries = reps.iter().map(|r| r.retries).max().unwrap_or(0);
            // Ring all-reduce moves 2(n-1)/n of the buffer through each peer's link.
            let busbw = bytes as f64 * 2.0 * (world - 1) as f64 / world as f64 / (ms * 1e6);
            let same = |r: &Report| r.crc == reps[0].crc && r.world == world;
            let parity = reps.iter().all(same);
            let verdict = match parity {
                true => format!("ok ({} peers bit-identical)", reps.len()),
                false => "MISMATCH".to_string(),
            };
            let note = (retries > 0).then(|| format!("  ({retries} retries)"));
            let note = note.unwrap_or_default();
            println!("{s:>6} {world:>6} {ms:>9.1} {busbw:>12.2}  {verdict}{note}");
            if !parity {
                let seen: Vec<_> = reps.iter().map(|r| (r.peer, r.world, &r.crc)).collect();
                return Err(format!("parity broken at step {s}: {seen:?}"));
            }
            steps += 1;
            last_progress = Instant::now();
            if retries > 0 {
                max_recovery_ms = max_recovery_ms.max(ms);
            }
            if world != if phase == 1 { n - 1 } else { n } {
                continue; // still forming, or a step before the change took effect
            }
            if world == n {
                busbw_full.push(busbw);
            }
            if let Some(t) = changed_at.take() {
                let took = t.elapsed().as_secs_f64() * 1e3;
                match phase {
                    1 => println!(
                        "  >>> recovered: step {s} done on the {world}-peer ring in {ms:.1} ms \
                         with {retries} retries ({took:.0} ms after the kill)"
                    ),
                    _ => println!(
                        "  >>> new peer joined: world {world} again, {took:.0} ms after it started"
                    ),
                }
            }
            in_phase += 1;
            if in_phase < PHASE_STEPS[phase] {
                continue;
            }
            (phase, in_phase, changed_at) = (phase + 1, 0, Some(Instant::now()));
            if phase == 1 {
                // Kill a peer in the middle of the ring, as a power cut would.
                let (child, name, killed) = &mut peers.list[VICTIM];
                *killed = true;
                let pid = child.id();
                println!("  >>> killing peer {name} (pid {pid}) with SIGKILL");
                child.kill().map_err(|e| format!("kill failed: {e}"))?;
                let _ = child.wait();
                // Its reports of steps not yet printed are dropped: the survivors may
                // retry those steps on the smaller ring, which is not a parity break.
                pending
                    .values_mut()
                    .for_each(|r| r.retain(|r| r.peer != VICTIM));
            } else if phase == 2 {
                println!("  >>> starting a new peer");
                peers.spawn()?;
            } else {
                let mean = busbw_full.iter().sum::<f64>() / busbw_full.len().max(1) as f64;
                println!(
                    "\nsummary:\n  steps completed        {steps}\n  peers killed (-9)      1\n  \
                     peers joined           1\n  parity violations      0\n  \
                     wrong results          0\n  max recovery (step)    {max_recovery_ms:.1} ms\n  \
                     mean busbw at world {n}  {mean:.2} GB/s\nstopping all peers and the master."
                );
                return Ok(());
            }
        }
    }
}
