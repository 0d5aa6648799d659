//! The master's HTTP endpoints (README, "Watching a run"): `/metrics` parsed with a real
//! Prometheus text parser and checked against what the peers did, `/api/run`, and the
//! listener's defences, each tested by making the attack.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pccl::{Communicator, MasterConfig, MasterNode, ReduceOp};

use crate::common::{cluster, on_all};

pub(crate) fn http_master() -> MasterNode {
    pccl::init_logging();
    let mut cfg = MasterConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.http = Some("127.0.0.1:0".parse().unwrap());
    MasterNode::start(cfg).expect("master starts")
}

/// One plain HTTP/1.0 request; returns (status line, body). The connection closes after
/// the answer, so reading to the end reads exactly one response.
pub(crate) fn request(at: SocketAddr, method: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&at, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

fn scrape(at: SocketAddr) -> prometheus_parse::Scrape {
    let (status, body) = request(at, "GET", "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("the exposition parses")
}

/// The value of the sample named `name` whose labels include `labels`.
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name}: unexpected value {other:?}"),
        })
}

/// Scrapes until `cond` holds on the parsed metrics (heartbeats carry peers' figures
/// every 500 ms), failing after 10 s with the last scrape.
fn scrape_until(at: SocketAddr, what: &str, cond: impl Fn(&prometheus_parse::Scrape) -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let s = scrape(at);
        if cond(&s) {
            return;
        }
        assert!(
            Instant::now() < end,
            "timed out waiting for {what}: {:#?}",
            s.samples
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn reduce_all(comms: &[Communicator], tag: u64) -> Vec<(Vec<f32>, pccl::ReduceInfo)> {
    on_all(comms, |rank, c| {
        let send: Vec<f32> = (0..50_000).map(|i| (i % 97) as f32 + rank as f32).collect();
        let mut recv = vec![0f32; send.len()];
        let info = c.all_reduce(&send, &mut recv, ReduceOp::Sum, tag).unwrap();
        (recv, info)
    })
}

#[test]
fn metrics_match_what_the_peers_did() {
    let master = http_master();
    let http = master.http_addr().expect("http is on");
    let mut comms = cluster(&master, 3);
    const OPS: u64 = 5;
    let mut tx = 0u64;
    for tag in 0..OPS {
        let out = reduce_all(&comms, tag);
        for (recv, _) in &out[1..] {
            assert_eq!(
                bytemuck::cast_slice::<f32, u8>(recv),
                bytemuck::cast_slice::<f32, u8>(&out[0].0)
            );
        }
        tx += out.iter().map(|(_, i)| i.tx_bytes).sum::<u64>();
    }
    // The bandwidth matrix: every peer measures the other two.
    on_all(&comms, |_, c| c.optimize_topology().unwrap());
    // Each communicator counted its own work.
    for c in &comms {
        let st = c.stats();
        assert_eq!(st.all_reduce.completed, OPS);
        assert_eq!(st.all_reduce.failed, 0);
        assert_eq!(st.recent_all_reduces.len(), OPS as usize);
        assert!(
            st.recent_all_reduces
                .iter()
                .all(|r| r.busbw > 0.0 && r.world == 3)
        );
        assert_eq!(st.neighbours.len(), 2, "a successor and a predecessor");
    }
    let ops = OPS as f64;
    scrape_until(http, "the peers' summaries", |s| {
        value(s, "pccl_op_duration_seconds_count", &[]) == Some(3.0 * ops)
            && value(s, "pccl_ring_bytes_total", &[("direction", "tx")]) == Some(tx as f64)
    });
    let s = scrape(http);
    assert_eq!(
        value(&s, "pccl_ops_total", &[("group", "0"), ("outcome", "ok")]),
        Some(ops)
    );
    assert_eq!(value(&s, "pccl_world_size", &[("group", "0")]), Some(3.0));
    assert_eq!(value(&s, "pccl_peers", &[("state", "accepted")]), Some(3.0));
    assert_eq!(value(&s, "pccl_peers", &[("state", "waiting")]), Some(0.0));
    assert_eq!(value(&s, "pccl_retries_total", &[]), Some(0.0));
    assert!(value(&s, "pccl_group_epoch", &[("group", "0")]).is_some_and(|e| e >= 1.0));
    let busbw = s
        .samples
        .iter()
        .filter(|x| x.metric == "pccl_peer_busbw_bytes_per_second")
        .count();
    assert_eq!(busbw, 3, "one bus bandwidth per peer");
    let links = |s: &prometheus_parse::Scrape| {
        s.samples
            .iter()
            .filter(|x| x.metric == "pccl_link_bandwidth_bytes_per_second")
            .count()
    };
    assert_eq!(links(&s), 6, "3 peers × 2 measured links");
    for c in &comms {
        assert_eq!(c.stats().link_bandwidth.len(), 2);
    }

    // A peer leaves; the next op of the survivors ends the recovery.
    drop(comms.pop());
    scrape_until(http, "the departure", |s| {
        value(s, "pccl_world_size", &[("group", "0")]) == Some(2.0)
    });
    let out = reduce_all(&comms, 100);
    assert_eq!(
        bytemuck::cast_slice::<f32, u8>(&out[0].0),
        bytemuck::cast_slice::<f32, u8>(&out[1].0)
    );
    let s = scrape(http);
    assert_eq!(
        value(&s, "pccl_peer_losses_total", &[("cause", "disconnected")]),
        Some(1.0)
    );
    assert_eq!(value(&s, "pccl_recovery_seconds_count", &[]), Some(1.0));
    assert_eq!(
        value(&s, "pccl_ops_total", &[("group", "0"), ("outcome", "ok")]),
        Some(ops + 1.0)
    );
    assert_eq!(
        s.samples
            .iter()
            .filter(|x| x.metric == "pccl_peer_busbw_bytes_per_second")
            .count(),
        2,
        "the departed peer's gauge is gone"
    );
    assert_eq!(links(&s), 2, "the departed peer's links are gone");

    // /api/run says the same, plus the ring and the events.
    let (status, body) = request(http, "GET", "/api/run");
    assert!(status.contains(" 200 "), "{status}");
    let run: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(run["world_size"], 2);
    assert_eq!(run["ring"].as_array().unwrap().len(), 2);
    assert_eq!(run["totals"]["ops_ok"], OPS + 1);
    assert_eq!(run["bandwidth"].as_array().unwrap().len(), 2);
    let kinds: Vec<&str> = run["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "join").count(),
        3,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "death").count(),
        1,
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"accept") && kinds.contains(&"topology"),
        "{kinds:?}"
    );
}

#[test]
fn a_shared_state_sync_shows_its_revision_holder_and_bytes() {
    let master = http_master();
    let http = master.http_addr().unwrap();
    let comms = cluster(&master, 3);
    // Peer 2's `w` differs: it fetches that tensor (4,000 bytes) from a holder.
    let out = on_all(&comms, |i, c| {
        let mut w: Vec<f32> = (0..1000).map(|j| j as f32 * 0.5).collect();
        if i == 2 {
            w[17] = -1.0;
        }
        let mut step = vec![42u64];
        let mut st = pccl::SharedState {
            revision: 7,
            tensors: vec![
                pccl::TensorInfo::new("w", &mut w),
                pccl::TensorInfo::new("step", &mut step),
            ],
        };
        let info = c
            .sync_shared_state(&mut st, pccl::SyncStrategy::EnforcePopular)
            .unwrap();
        (info, w, step)
    });
    for (i, (info, w, step)) in out.iter().enumerate() {
        assert_eq!(
            bytemuck::cast_slice::<f32, u8>(w),
            bytemuck::cast_slice::<f32, u8>(&out[0].1),
            "peer {i}"
        );
        assert_eq!(step, &out[0].2);
        assert_eq!(info.rx_bytes, if i == 2 { 4000 } else { 0 }, "peer {i}");
    }
    let holders: Vec<String> = out
        .iter()
        .zip(&comms)
        .filter(|((info, ..), _)| info.tx_bytes > 0)
        .map(|(_, c)| c.id().hex())
        .collect();
    assert_eq!(holders.len(), 1, "one holder sent the tensor");
    scrape_until(http, "the sync's figures", |s| {
        value(s, "pccl_shared_state_syncs_total", &[("outcome", "ok")]) == Some(1.0)
    });
    let s = scrape(http);
    assert_eq!(
        value(&s, "pccl_shared_state_revision", &[("group", "0")]),
        Some(7.0)
    );
    assert_eq!(
        value(&s, "pccl_shared_state_transfer_bytes_total", &[]),
        Some(4000.0)
    );
    let (_, body) = request(http, "GET", "/api/run");
    let run: serde_json::Value = serde_json::from_str(&body).unwrap();
    let syncs: Vec<&str> = run["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "sync")
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert_eq!(syncs.len(), 1, "{syncs:?}");
    let want = format!("revision 7: 4000 bytes from {}", holders[0]);
    assert!(syncs[0].ends_with(&want), "{} vs {want}", syncs[0]);
    assert_eq!(run["totals"]["shared_state_transfer_bytes"], 4000);
}

#[test]
fn the_dashboard_is_compiled_in_and_the_server_is_read_only() {
    let master = http_master();
    let http = master.http_addr().unwrap();
    let (status, page) = request(http, "GET", "/");
    assert!(status.contains(" 200 "), "{status}");
    assert!(page.contains("<script src=\"app.js\">"), "{page}");
    for path in ["/app.js", "/style.css", "/uPlot.js", "/uPlot.css"] {
        let (status, body) = request(http, "GET", path);
        assert!(
            status.contains(" 200 ") && !body.is_empty(),
            "{path}: {status}"
        );
    }
    for method in ["POST", "PUT", "DELETE"] {
        let (status, _) = request(http, method, "/metrics");
        assert!(status.contains(" 405 "), "{method}: {status}");
    }
    let (status, _) = request(http, "GET", "/../../etc/passwd");
    assert!(status.contains(" 404 "), "{status}");
}

#[test]
fn a_huge_request_head_is_refused() {
    let master = http_master();
    let http = master.http_addr().unwrap();
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let big = "a".repeat(64 << 10);
    // The server may close before we finish writing; what it answered is what counts.
    let _ = write!(s, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "a 64 KiB head must be refused: {text}"
    );
    // The server is still fine.
    assert!(request(http, "GET", "/metrics").0.contains(" 200 "));
}

#[test]
fn idle_connections_are_bounded_and_time_out() {
    let master = http_master();
    let http = master.http_addr().unwrap();
    // Fill every slot with a connection that never finishes its request (slowloris).
    let held: Vec<TcpStream> = (0..pccl::master::http::MAX_CONNECTIONS)
        .map(|_| {
            let mut s = TcpStream::connect(http).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // One more is closed at once, before anything is read.
    let mut extra = TcpStream::connect(http).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let _ = extra.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut buf = [0u8; 64];
    let t0 = Instant::now();
    let n = extra.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "a connection beyond the bound is closed unanswered");
    assert!(t0.elapsed() < Duration::from_secs(1));
    // The held ones are dropped when their head does not arrive in time, which frees
    // the slots for honest clients.
    let t0 = Instant::now();
    let mut first = held.into_iter().next().unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = first.read_to_end(&mut rest);
    let waited = t0.elapsed();
    assert!(
        waited < pccl::master::http::HEAD_TIMEOUT + Duration::from_secs(3),
        "a stalled head must be closed after the head timeout, took {waited:?}"
    );
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let ok = std::panic::catch_unwind(|| request(http, "GET", "/metrics").0.contains(" 200 "));
        if ok.unwrap_or(false) {
            break;
        }
        assert!(Instant::now() < end, "slots were not freed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn without_the_option_nothing_listens_for_http() {
    let master = crate::common::master();
    assert_eq!(master.http_addr(), None);
}
