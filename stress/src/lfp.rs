//! The long-fat-pipe benchmark (`pccl-stress --lfp`): n peers in namespaces with a
//! one-way delay of RTT/2 between every pair (through the NFQUEUE delay daemon), optional
//! caps, and one large f32 all-reduce timed for each `p2p_connection_pool_size`.
//!
//! Per pool size it starts n fresh workers (`--lfp-worker`), waits until all are in one
//! ring, runs `warmup` (2) untimed and `iters` (3) timed all-reduces, and reports the median over
//! iterations of the slowest worker's time as algbw and busbw = algbw · 2(n−1)/n.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use pccl::{Attribute, Communicator, CommunicatorConfig, ReduceOp};

use crate::procs::{self, Proc};
use crate::scenario::{Region, Scenario, Wan as WanSpec};
use crate::wan::{MASTER_PORT, Wan};
use crate::{opt, opt_parse};

fn worker(args: &[String]) -> Result<()> {
    let master = opt_parse(args, "--master")?.context("--master")?;
    let n: usize = opt_parse(args, "--n")?.context("--n")?;
    let kib: usize = opt_parse(args, "--kib")?.unwrap_or(128 << 10);
    let iters: usize = opt_parse(args, "--iters")?.unwrap_or(3);
    let warmup: usize = opt_parse(args, "--warmup")?.unwrap_or(2);
    let mut cfg = CommunicatorConfig::new(master);
    cfg.pool_size = opt_parse(args, "--pool")?.unwrap_or(1);
    cfg.p2p_port = 0;
    if let Some(b) = opt_parse(args, "--bind")? {
        cfg.bind_ip = b;
    }
    let comm = Communicator::new(cfg)?;
    comm.connect()?;
    let end = Instant::now() + Duration::from_secs(120);
    while comm.attribute(Attribute::GlobalWorldSize)? < n {
        if Instant::now() > end {
            bail!("the ring never reached {n} peers");
        }
        if comm.are_peers_pending()? {
            comm.update_topology()?;
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let count = kib << 8;
    let send: Vec<f32> = (0..count).map(|i| (i % 251) as f32).collect();
    let mut recv = vec![0f32; count];
    let mut out = std::io::stdout().lock();
    for i in 0..warmup + iters {
        let t = Instant::now();
        comm.all_reduce(&send, &mut recv, ReduceOp::Sum, 0)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if i >= warmup {
            writeln!(out, "ITER {i} {ms:.3}")?;
            out.flush()?;
        }
    }
    let ok = recv
        .iter()
        .enumerate()
        .all(|(i, r)| *r == (i % 251) as f32 * n as f32);
    writeln!(out, "DONE ok {ok}")?;
    out.flush()?;
    if !ok {
        bail!("wrong result");
    }
    Ok(())
}

/// Raw TCP ceiling: `--lfp-tcp-recv --listen A --streams N` counts what N streams deliver
/// and prints `TCP bytes seconds` (first byte to last); `--lfp-tcp-send --to A --streams N
/// --secs S` writes for S seconds on N connections.
fn tcp(args: &[String], recv: bool) -> Result<()> {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let streams: usize = opt_parse(args, "--streams")?.unwrap_or(1);
    if recv {
        let l = TcpListener::bind(opt(args, "--listen").context("--listen")?)?;
        println!("LISTENING");
        let mut threads = Vec::new();
        for _ in 0..streams {
            let (mut c, _) = l.accept()?;
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                let (mut n, mut first, mut last) = (0u64, None, Instant::now());
                while let Ok(k) = c.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    first.get_or_insert_with(Instant::now);
                    last = Instant::now();
                    n += k as u64;
                }
                (n, first.unwrap_or(last), last)
            }));
        }
        let r = threads
            .into_iter()
            .map(|t| t.join().map_err(|_| anyhow!("a receiving thread panicked")))
            .collect::<Result<Vec<_>>>()?;
        let bytes: u64 = r.iter().map(|x| x.0).sum();
        let t0 = r.iter().map(|x| x.1).min().context("no stream")?;
        let t1 = r.iter().map(|x| x.2).max().context("no stream")?;
        println!("TCP {bytes} {}", (t1 - t0).as_secs_f64());
    } else {
        let to: std::net::SocketAddr = opt_parse(args, "--to")?.context("--to")?;
        let secs: f64 = opt_parse(args, "--secs")?.unwrap_or(5.0);
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let threads: Vec<_> = (0..streams)
            .map(|_| {
                std::thread::spawn(move || -> std::io::Result<()> {
                    let mut c = TcpStream::connect(to)?;
                    let buf = vec![1u8; 1 << 20];
                    while Instant::now() < end {
                        c.write_all(&buf)?;
                    }
                    Ok(())
                })
            })
            .collect();
        // A stream that could not connect or write would make the ceiling a lie.
        for t in threads {
            t.join()
                .map_err(|_| anyhow!("a sending thread panicked"))?
                .context("sending stream")?;
        }
    }
    Ok(())
}

/// Raw TCP from seat 0 to seat 1 with `streams` connections for `secs`: Gbit/s.
fn tcp_ceiling(
    wan: &Wan,
    exe: &Path,
    dir: &Path,
    run_id: &str,
    streams: usize,
    secs: f64,
) -> Result<f64> {
    let (tx, rx) = mpsc::channel::<(u32, String)>();
    let addr = format!("{}:29600", wan.addr(1));
    let mut r = wan.seat_cmd(1, exe);
    r.args([
        "--lfp",
        "--lfp-tcp-recv",
        "--listen",
        &addr,
        "--streams",
        &streams.to_string(),
        "--run-id",
        run_id,
    ]);
    let mut recv = Proc::spawn(r, 1, tx.clone(), &dir.join("tcp-recv.err"))?;
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok((_, l)) if l == "LISTENING" => {}
        other => bail!("the TCP receiver did not start listening: {other:?}"),
    }
    let mut s = wan.seat_cmd(0, exe);
    s.args([
        "--lfp",
        "--lfp-tcp-send",
        "--to",
        &addr,
        "--streams",
        &streams.to_string(),
        "--secs",
        &secs.to_string(),
        "--run-id",
        run_id,
    ]);
    let mut send = Proc::spawn(s, 0, tx, &dir.join("tcp-send.err"))?;
    let end = Instant::now() + Duration::from_secs_f64(secs + 30.0);
    let mut result = None;
    while Instant::now() < end {
        if let Ok((_, l)) = rx.recv_timeout(Duration::from_millis(200)) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if let ["TCP", b, t] = f.as_slice() {
                let (b, t): (f64, f64) = (b.parse()?, t.parse()?);
                result = Some(b * 8.0 / t / 1e9);
                break;
            }
        }
    }
    send.kill(Duration::from_secs(2));
    recv.kill(Duration::from_secs(2));
    result.context("the TCP measurement did not finish")
}

pub(crate) fn run(args: &[String]) -> Result<u8> {
    if args.iter().any(|a| a == "--lfp-worker") {
        pccl::init_logging();
        return worker(args).map(|()| 0);
    }
    for (flag, recv) in [("--lfp-tcp-recv", true), ("--lfp-tcp-send", false)] {
        if args.iter().any(|a| a == flag) {
            return tcp(args, recv).map(|()| 0);
        }
    }
    let n: usize = opt_parse(args, "--peers")?.unwrap_or(2);
    let rtt: f64 = opt_parse(args, "--rtt-ms")?.unwrap_or(80.0);
    // `--kib` for small ops (the master round trip's share of one op), else `--mib`.
    let kib: usize = match opt_parse(args, "--kib")? {
        Some(k) => k,
        None => opt_parse::<usize>(args, "--mib")?.unwrap_or(128) << 10,
    };
    let master_rtt: f64 = opt_parse(args, "--master-rtt-ms")?.unwrap_or(0.0);
    let iters: usize = opt_parse(args, "--iters")?.unwrap_or(3);
    let warmup: usize = opt_parse(args, "--warmup")?.unwrap_or(2);
    let rate: u64 = opt_parse(args, "--rate-mbit")?.unwrap_or(0);
    let pools: Vec<usize> = opt(args, "--pools")
        .unwrap_or_else(|| "1,4,16,32".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    procs::install_guards();
    let s = Scenario {
        name: "lfp".into(),
        duration_s: 0.0,
        steps: 0,
        peers: n,
        min_peers: 1,
        max_peers: n,
        heartbeat_timeout_ms: 10_000,
        progress_deadline_s: 0.0,
        ops: Default::default(),
        churn: Default::default(),
        strangers: None,
        secret: false,
        encrypt: false,
        master_restarts: None,
        wan: Some(WanSpec {
            regions: vec![Region {
                name: "all".into(),
                seats: n,
                rate_mbit: rate,
                delay_ms: rtt / 2.0,
            }],
            links: vec![],
            loss: 0.0,
            tcp_cc: opt(args, "--cc").unwrap_or_else(|| "bbr".into()),
            slow_start_after_idle: args.iter().any(|a| a == "--ssai"),
            tcp_buf_default: opt_parse(args, "--tcp-buf")?.unwrap_or(131_072),
            master_delay_ms: master_rtt / 2.0,
        }),
    };
    let dir = Path::new("target/stress/lfp");
    std::fs::create_dir_all(dir)?;
    let exe = std::env::current_exe()?;
    let run_id = format!("pccllfp{}", std::process::id());
    let (tx, rx) = mpsc::channel::<(u32, String)>();
    let wan = Wan::setup(&s, &run_id, &exe, &tx, dir)?;
    println!(
        "long-fat pipe: {n} peers, RTT {rtt} ms between every pair, {master_rtt} ms to the master, cap {}, {kib} KiB f32 sum, {iters} timed iterations",
        if rate > 0 {
            format!("{rate} Mbit/s")
        } else {
            "none".into()
        }
    );
    let tcp_secs: f64 = opt_parse(args, "--tcp-secs")?.unwrap_or(5.0);
    let mut tcp_rows = Vec::new();
    if tcp_secs > 0.0 {
        for &streams in &pools {
            let g = tcp_ceiling(&wan, &exe, dir, &run_id, streams, tcp_secs)?;
            println!("raw TCP seat 0 -> seat 1, {streams:>2} streams, {tcp_secs} s: {g:.3} Gbit/s");
            tcp_rows.push(serde_json::json!({"streams": streams, "gbit": g}));
        }
    }
    println!(
        "{:>5} {:>12} {:>12} {:>12} {:>12} {:>10}",
        "pool", "median ms", "algbw Gb/s", "busbw Gb/s", "busbw GB/s", "cpu busy"
    );
    let mut rows = Vec::new();
    for &pool in &pools {
        let mut master_cmd = wan.hub_cmd(&exe);
        master_cmd.args([
            "--master-proc",
            "--listen",
            &format!("0.0.0.0:{MASTER_PORT}"),
            "--heartbeat-ms",
            "10000",
            "--run-id",
            &run_id,
        ]);
        let mut master = Proc::spawn(master_cmd, u32::MAX, tx.clone(), &dir.join("master.err"))?;
        std::thread::sleep(Duration::from_millis(300));
        let mut workers = Vec::new();
        for k in 0..n {
            let mut c: Command = wan.seat_cmd(k, &exe);
            c.args([
                "--lfp",
                "--lfp-worker",
                "--master",
                &format!("{}:{MASTER_PORT}", wan.gateway(k)),
                "--bind",
                &wan.addr(k).to_string(),
                "--n",
                &n.to_string(),
                "--kib",
                &kib.to_string(),
                "--iters",
                &iters.to_string(),
                "--warmup",
                &warmup.to_string(),
                "--pool",
                &pool.to_string(),
                "--run-id",
                &run_id,
            ]);
            workers.push(Proc::spawn(
                c,
                k as u32,
                tx.clone(),
                &dir.join(format!("w{k}.err")),
            )?);
        }
        let mut times: BTreeMap<usize, f64> = BTreeMap::new();
        let mut done = 0;
        // Machine-wide CPU over the timed iterations (first ITER line to last DONE).
        let (mut cpu0, mut cpu1) = (None, None);
        let end = Instant::now() + Duration::from_secs(300);
        while done < n {
            let Ok((_, l)) = rx.recv_timeout(Duration::from_millis(200)) else {
                if Instant::now() > end {
                    bail!("pool {pool}: timed out");
                }
                if let Some((k, st)) = workers
                    .iter_mut()
                    .enumerate()
                    .find_map(|(k, w)| w.exited().filter(|s| !s.success()).map(|s| (k, s)))
                {
                    let err =
                        std::fs::read_to_string(dir.join(format!("w{k}.err"))).unwrap_or_default();
                    bail!(
                        "pool {pool}: worker {k} failed ({}): {err}",
                        procs::describe(&st)
                    );
                }
                continue;
            };
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                ["ITER", i, ms] => {
                    let (i, ms): (usize, f64) = (i.parse()?, ms.parse()?);
                    cpu0 = cpu0.or_else(cpu_snapshot);
                    let e = times.entry(i).or_insert(0.0);
                    *e = e.max(ms);
                }
                ["DONE", "ok", ok] => {
                    if *ok != "true" {
                        bail!("pool {pool}: wrong all-reduce result");
                    }
                    done += 1;
                    cpu1 = cpu_snapshot();
                }
                _ => {}
            }
        }
        for mut w in workers {
            w.wait(Duration::from_secs(10));
        }
        master.kill(Duration::from_secs(5));
        let mut v: Vec<f64> = times.values().copied().collect();
        v.sort_by(f64::total_cmp);
        let ms = v[v.len() / 2];
        let bytes = (kib << 10) as f64;
        let alg = bytes * 8.0 / (ms / 1e3) / 1e9;
        let bus = alg * 2.0 * (n as f64 - 1.0) / n as f64;
        let busy = match (cpu0, cpu1) {
            (Some((t0, i0)), Some((t1, i1))) if t1 > t0 => {
                100.0 * (1.0 - (i1 - i0) as f64 / (t1 - t0) as f64)
            }
            _ => f64::NAN,
        };
        println!(
            "{pool:>5} {ms:>12.1} {alg:>12.3} {bus:>12.3} {:>12.3} {busy:>9.0}%",
            bus / 8.0
        );
        let each: Vec<String> = times.values().map(|t| format!("{t:.0}")).collect();
        println!("      per iteration (slowest peer), ms: {}", each.join(" "));
        rows.push((pool, ms, alg, bus, busy));
    }
    drop(wan);
    let json: Vec<_> = rows
        .iter()
        .map(|(p, ms, a, b, c)| {
            serde_json::json!({"pool": p, "median_ms": ms, "algbw_gbit": a, "busbw_gbit": b, "cpu_busy_pct": c})
        })
        .collect();
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({"peers": n, "rtt_ms": rtt, "master_rtt_ms": master_rtt, "kib": kib, "rate_mbit": rate, "rows": json, "tcp": tcp_rows}),
        )?,
    )?;
    Ok(0)
}

/// (total, idle + iowait) jiffies of all CPUs, from /proc/stat.
fn cpu_snapshot() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = text
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    Some((v.iter().sum(), v.get(3)? + v.get(4)?))
}
