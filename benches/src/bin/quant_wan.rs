//! Quantized vs unquantized ring all-reduce, 4 peers, under a 1 Gbit/s egress cap per peer
//! (or on plain loopback), one OS process per peer.
//!
//! ```text
//! sudo target/release/quant_wan [--peers 4] [--size 128M] [--iters 5] [--warmup 1]
//!                               [--rate 1gbit] [--quant none,minmax:u8] [--loopback]
//! ```
//!
//! Capped mode (root; `docs/WAN.md`): one network namespace per peer, each joined by a
//! veth pair to a hub namespace that routes between them (10.77.<i>.2 ↔ 10.77.<i>.1), and a
//! `tbf` qdisc (`rate`, burst 256 KB) on every peer's own veth: each peer's egress is capped.
//! The master runs in the hub. Namespaces are deleted on every exit path (a guard).
//! `--loopback`: no namespaces, no cap, everything on 127.0.0.1.
//!
//! Per setting, each worker runs `warmup` untimed and `iters` timed all-reduces of `size`
//! bytes of f32 (sum), prints its times, checks a sample against the exact sum and prints
//! the crc32 of its result; the parent checks that every peer has the same crc. Reported:
//! the median over iterations of the slowest peer's time, `busbw = size / time · 2(n-1)/n`
//! (source bytes, so the two settings compare directly).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use benches::{busbw_factor, fmt_size, gbps, median, parse_size};
use pccl::{
    Attribute, Communicator, CommunicatorConfig, DataType, MasterConfig, MasterNode, Quantization,
    QuantizationAlgorithm, ReduceDescriptor, ReduceOp, SliceBuffers,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("--worker") => worker(&args[1..]),
        Some("--master-proc") => master_proc(&args[1..]),
        _ => parent(&args),
    };
    if let Err(e) = r {
        eprintln!("quant_wan: error: {e:#}");
        std::process::exit(1);
    }
}

fn parse_quant(s: &str) -> Result<Option<Quantization>> {
    if s == "none" {
        return Ok(None);
    }
    let (a, t) = s
        .split_once(':')
        .ok_or_else(|| anyhow!("quant {s:?}: want ALG:TYPE"))?;
    let alg = match a {
        "minmax" => QuantizationAlgorithm::MinMax,
        "zps" => QuantizationAlgorithm::ZeroPointScale,
        _ => bail!("unknown algorithm {a:?} (minmax, zps)"),
    };
    let dtype = match t {
        "u8" => DataType::U8,
        "i8" => DataType::I8,
        "u16" => DataType::U16,
        "f16" => DataType::F16,
        "bf16" => DataType::Bf16,
        _ => bail!("unknown quantized type {t:?}"),
    };
    Ok(Some(Quantization::new(alg, dtype)))
}

struct Opts {
    peers: usize,
    size: usize,
    iters: usize,
    warmup: usize,
    rate: String,
    quants: Vec<String>,
    loopback: bool,
}

fn parent(args: &[String]) -> Result<()> {
    let mut o = Opts {
        peers: 4,
        size: 128 << 20,
        iters: 5,
        warmup: 1,
        rate: "1gbit".into(),
        quants: vec!["none".into(), "minmax:u8".into()],
        loopback: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut v = || it.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--peers" => o.peers = v()?.parse()?,
            "--size" => o.size = parse_size(v()?).ok_or_else(|| anyhow!("bad --size"))?,
            "--iters" => o.iters = v()?.parse()?,
            "--warmup" => o.warmup = v()?.parse()?,
            "--rate" => o.rate = v()?.clone(),
            "--quant" => o.quants = v()?.split(',').map(str::to_owned).collect(),
            "--loopback" => o.loopback = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    ensure!(o.peers >= 2 && o.peers <= 16 && o.size.is_multiple_of(4) && o.iters >= 1);
    for q in &o.quants {
        parse_quant(q)?;
    }
    let net = if o.loopback {
        None
    } else {
        Some(Netns::setup(o.peers, &o.rate).context("namespace setup (needs root)")?)
    };
    println!(
        "pccl ring all-reduce, {} peers, {} f32 sum, {}; warmup={} iters={}",
        o.peers,
        fmt_size(o.size),
        if o.loopback {
            "loopback, no cap".to_owned()
        } else {
            format!("netns, tbf {} egress cap per peer", o.rate)
        },
        o.warmup,
        o.iters
    );
    println!(
        "{:>12} {:>11} {:>11} {:>11} {:>14} {:>9}",
        "quant", "median ms", "algbw GB/s", "busbw GB/s", "tx MB/peer/op", "crc32"
    );
    let mut bus = Vec::new();
    for q in &o.quants {
        let (t, tx, crc) = run_setting(&o, net.as_ref(), q).with_context(|| q.clone())?;
        let alg = gbps(o.size, t);
        let b = alg * busbw_factor(o.peers);
        bus.push(b);
        println!(
            "{:>12} {:>11.1} {:>11.3} {:>11.3} {:>14.1} {:>9}",
            q,
            t.as_secs_f64() * 1e3,
            alg,
            b,
            tx as f64 / 1e6,
            format!("{crc:08x}")
        );
    }
    if bus.len() >= 2 {
        println!(
            "busbw ratio {} / {}: {:.2}x",
            o.quants[1],
            o.quants[0],
            bus[1] / bus[0]
        );
    }
    drop(net);
    Ok(())
}

/// Network namespaces of one run; deleted on drop.
struct Netns {
    hub: String,
    peers: Vec<String>,
}

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("run {args:?}"))?;
    ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Netns {
    fn setup(n: usize, rate: &str) -> Result<Self> {
        let tag = std::process::id() % 100_000;
        let mut me = Self {
            hub: format!("qw{tag}hub"),
            peers: Vec::new(),
        };
        sh(&["ip", "netns", "add", &me.hub])?;
        sh(&[
            "ip", "netns", "exec", &me.hub, "ip", "link", "set", "lo", "up",
        ])?;
        sh(&[
            "ip",
            "netns",
            "exec",
            &me.hub,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        for i in 0..n {
            let ns = format!("qw{tag}p{i}");
            sh(&["ip", "netns", "add", &ns])?;
            me.peers.push(ns.clone());
            let (h, p) = (format!("qw{tag}h{i}"), format!("qw{tag}e{i}"));
            sh(&["ip", "link", "add", &h, "type", "veth", "peer", "name", &p])?;
            sh(&["ip", "link", "set", &h, "netns", &me.hub])?;
            sh(&["ip", "link", "set", &p, "netns", &ns])?;
            let hub_ip = format!("10.77.{i}.1/24");
            let peer_ip = format!("10.77.{i}.2/24");
            let gw = format!("10.77.{i}.1");
            let hx = |c: &[&str]| {
                let mut v = vec!["ip", "netns", "exec", me.hub.as_str()];
                v.extend_from_slice(c);
                sh(&v)
            };
            let px = |c: &[&str]| {
                let mut v = vec!["ip", "netns", "exec", ns.as_str()];
                v.extend_from_slice(c);
                sh(&v)
            };
            hx(&["ip", "addr", "add", &hub_ip, "dev", &h])?;
            hx(&["ip", "link", "set", &h, "up"])?;
            px(&["ip", "link", "set", "lo", "up"])?;
            px(&["ip", "addr", "add", &peer_ip, "dev", &p])?;
            px(&["ip", "link", "set", &p, "up"])?;
            px(&["ip", "route", "add", "default", "via", &gw])?;
            px(&[
                "tc", "qdisc", "add", "dev", &p, "root", "tbf", "rate", rate, "burst", "256kb",
                "latency", "100ms",
            ])?;
        }
        Ok(me)
    }

    fn master_addr(&self) -> SocketAddr {
        "10.77.0.1:48148".parse().expect("literal")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in self.peers.iter().chain([&self.hub]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Children killed and reaped on drop.
struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(ns: Option<&str>, args: &[String]) -> Result<Child> {
    let exe = std::env::current_exe()?;
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    Ok(cmd.spawn()?)
}

/// Lines of every child's stdout, tagged with the child's index.
fn lines(kids: &mut Kids, from: usize, tx: &mpsc::Sender<(usize, Option<String>)>) {
    for (i, c) in kids.0.iter_mut().enumerate().skip(from) {
        let out = c.stdout.take().expect("piped");
        let tx = tx.clone();
        thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                let _ = tx.send((i, Some(l)));
            }
            let _ = tx.send((i, None));
        });
    }
}

fn run_setting(o: &Opts, net: Option<&Netns>, quant: &str) -> Result<(Duration, u64, u32)> {
    let (tx, rx) = mpsc::channel();
    let deadline = Instant::now() + Duration::from_secs(600);
    let master_listen = match net {
        Some(n) => n.master_addr().to_string(),
        None => "127.0.0.1:0".into(),
    };
    let mut kids = Kids(vec![spawn(
        net.map(|n| n.hub.as_str()),
        &["--master-proc".into(), master_listen],
    )?]);
    lines(&mut kids, 0, &tx);
    let master = loop {
        let (_, l) = rx
            .recv_timeout(Duration::from_secs(30))
            .context("master did not start")?;
        let l = l.ok_or_else(|| anyhow!("master exited"))?;
        if let Some(a) = l.strip_prefix("MASTER ") {
            break a.trim().to_owned();
        }
    };
    for i in 0..o.peers {
        let bind = net.map_or_else(|| "127.0.0.1".to_owned(), |_| format!("10.77.{i}.2"));
        let args: Vec<String> = [
            "--worker",
            "--master",
            &master,
            "--bind",
            &bind,
            "--rank",
            &i.to_string(),
            "--world",
            &o.peers.to_string(),
            "--size",
            &o.size.to_string(),
            "--iters",
            &o.iters.to_string(),
            "--warmup",
            &o.warmup.to_string(),
            "--quant",
            quant,
        ]
        .map(str::to_owned)
        .to_vec();
        kids.0.push(spawn(net.map(|n| n.peers[i].as_str()), &args)?);
    }
    lines(&mut kids, 1, &tx);
    drop(tx);
    let mut times = vec![vec![Duration::ZERO; o.peers]; o.iters];
    let mut crcs = vec![None; o.peers];
    let mut txb = 0u64;
    let mut done = 0;
    while done < o.peers {
        let left = deadline.saturating_duration_since(Instant::now());
        let (w, l) = rx.recv_timeout(left).context("run timed out")?;
        let Some(l) = l else {
            ensure!(
                w == 0 || crcs[w - 1].is_some(),
                "worker {} exited early",
                w - 1
            );
            continue;
        };
        let mut p = l.split_whitespace();
        match (w, p.next()) {
            (0, _) => {}
            (w, Some("T")) => {
                let k: usize = p.next().unwrap_or("").parse()?;
                let ns: u64 = p.next().unwrap_or("").parse()?;
                times[k][w - 1] = Duration::from_nanos(ns);
            }
            (_, Some("TX")) => txb = txb.max(p.next().unwrap_or("").parse()?),
            (w, Some("CRC")) => {
                crcs[w - 1] = Some(u32::from_str_radix(p.next().unwrap_or(""), 16)?);
                done += 1;
            }
            _ => {}
        }
    }
    let first = crcs[0].expect("all done");
    for (w, c) in crcs.iter().enumerate() {
        ensure!(
            *c == Some(first),
            "PARITY FAILURE: worker {w} crc {c:08x?} vs {first:08x}"
        );
    }
    let worst: Vec<Duration> = times
        .iter()
        .map(|per| per.iter().copied().max().unwrap_or_default())
        .collect();
    // Workers exit on their own after a final barrier; reap them (the guard kills leftovers).
    for c in kids.0.iter_mut().skip(1) {
        let until = Instant::now() + Duration::from_secs(20);
        while c.try_wait()?.is_none() && Instant::now() < until {
            thread::sleep(Duration::from_millis(20));
        }
    }
    Ok((median(&worst).expect("iters >= 1"), txb, first))
}

/// Runs a master until stdin closes; prints `MASTER <addr>`.
fn master_proc(args: &[String]) -> Result<()> {
    let listen: SocketAddr = args.first().ok_or_else(|| anyhow!("address"))?.parse()?;
    let mut cfg = MasterConfig::new(listen);
    cfg.heartbeat_timeout = Duration::from_secs(20);
    let m = MasterNode::start(cfg)?;
    println!("MASTER {}", m.local_addr());
    std::io::stdout().flush()?;
    let mut s = String::new();
    while std::io::stdin().read_line(&mut s)? > 0 {}
    drop(m);
    Ok(())
}

/// A deterministic value in [-1, 1) with a full mantissa (as in the allreduce bench).
fn value(rank: usize, i: usize) -> f32 {
    let mut z = (rank as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    ((z >> 40) as f32) / (1u64 << 23) as f32 - 1.0
}

fn worker(args: &[String]) -> Result<()> {
    let (mut master, mut bind, mut rank, mut world, mut size) = (None, None, 0, 0, 0);
    let (mut iters, mut warmup, mut quant) = (1, 0, None);
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| anyhow!("{k} needs a value"))?;
        match k.as_str() {
            "--master" => master = Some(v.parse::<SocketAddr>()?),
            "--bind" => bind = Some(v.parse()?),
            "--rank" => rank = v.parse()?,
            "--world" => world = v.parse()?,
            "--size" => size = v.parse()?,
            "--iters" => iters = v.parse()?,
            "--warmup" => warmup = v.parse()?,
            "--quant" => quant = parse_quant(v)?,
            other => bail!("unknown worker argument {other:?}"),
        }
    }
    // Exit if the parent goes away.
    thread::spawn(|| {
        let mut s = String::new();
        while std::io::stdin().read_line(&mut s).unwrap_or(0) > 0 {}
        std::process::exit(3);
    });
    thread::spawn(|| {
        thread::sleep(Duration::from_secs(900));
        std::process::exit(4);
    });
    pccl::init_logging();
    let mut cfg = CommunicatorConfig::new(master.ok_or_else(|| anyhow!("--master"))?);
    cfg.bind_ip = bind.ok_or_else(|| anyhow!("--bind"))?;
    cfg.advertise_ip = Some(cfg.bind_ip);
    cfg.p2p_port = 0;
    let comm = Communicator::new(cfg)?;
    comm.connect()?;
    let until = Instant::now() + Duration::from_secs(60);
    while comm.attribute(Attribute::GlobalWorldSize)? < world {
        ensure!(Instant::now() < until, "cluster did not form");
        match comm.update_topology() {
            Ok(()) | Err(pccl::Error::UpdateTopologyFailed(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let count = size / 4;
    let send: Vec<f32> = (0..count).map(|i| value(rank, i)).collect();
    let mut recv = vec![0f32; count];
    let mut desc = ReduceDescriptor::new(count, DataType::F32, ReduceOp::Sum);
    if let Some(q) = quant {
        desc = desc.with_quantization(q);
    }
    let out = std::io::stdout();
    let op = |tag: u64, recv: &mut [f32]| {
        let bufs = SliceBuffers::new(bytemuck::cast_slice(&send), bytemuck::cast_slice_mut(recv))
            .expect("equal lengths");
        comm.all_reduce_with(bufs, desc.with_tag(tag))
    };
    for k in 0..warmup {
        op(k as u64, &mut recv)?;
    }
    for k in 0..iters {
        let t0 = Instant::now();
        let info = op((warmup + k) as u64, &mut recv)?;
        let dt = t0.elapsed();
        writeln!(out.lock(), "T {k} {}", dt.as_nanos())?;
        writeln!(out.lock(), "TX {}", info.tx_bytes)?;
    }
    // Sum of `world` values in [-1, 1): u8 min-max over 4 quantizations stays well inside 0.1.
    let tol = if quant.is_some() { 0.1 } else { 1e-5 };
    for i in (0..count).step_by((count / 4096).max(1)) {
        let want: f64 = (0..world).map(|r| f64::from(value(r, i))).sum();
        let got = f64::from(recv[i]);
        ensure!(
            (got - want).abs() <= tol,
            "element {i}: got {got}, want {want}"
        );
    }
    let crc = crc32fast::hash(bytemuck::cast_slice(&recv));
    // A final barrier so nobody leaves while a peer is still in the last op.
    let mut tiny = [0f32; 1];
    comm.all_reduce(&[1f32], &mut tiny, ReduceOp::Sum, u64::MAX)?;
    writeln!(out.lock(), "CRC {crc:08x}")?;
    out.lock().flush()?;
    thread::sleep(Duration::from_millis(500));
    Ok(())
}
