//! The dashboard in a real browser: `pccl-master --http` and 4 `pccl-peer` processes on
//! loopback, the page opened in headless Chromium driven over the DevTools protocol, and
//! assertions on what it rendered — before and after a peer is killed with -9.
//!
//! Chromium comes from the system's package manager (`scripts/test` installs it); when it
//! is missing the test says so and skips. Screenshots go to `target/dashboard/`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::churn::{Peer, check_parity, wait_until};
use crate::common::{cluster, on_all};

/// A child process killed and reaped when the guard goes.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads `child`'s stderr on a thread; returns the first line for which `pick` gives
/// something, within 20 s.
fn first_line<T: Send + 'static>(
    child: &mut Child,
    pick: impl Fn(&str) -> Option<T> + Send + 'static,
) -> T {
    let err = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if !sent && let Some(v) = pick(&line) {
                let _ = tx.send(v);
                sent = true;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the expected line in time")
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| {
            std::env::var_os("PATH")
                .map(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join(name))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .find(|p| p.is_file())
}

/// A DevTools-protocol session on one page (flattened target sessions).
struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next: u64,
    session: Option<String>,
}

impl Cdp {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .expect("send to the browser");
        let end = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let next = tokio::time::timeout_at(end, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer from the browser"));
            let Some(Ok(Message::Text(t))) = next else {
                continue;
            };
            let v: Value = serde_json::from_str(t.as_str()).expect("browser json");
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page and returns its value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is true, failing after `limit`; returns the time it took.
    async fn until(&mut self, what: &str, limit: Duration, expr: &str) -> Duration {
        let t0 = Instant::now();
        loop {
            if self.eval(expr).await == json!(true) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < limit,
                "the page did not show {what} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&mut self, path: &Path) {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = data_encoding::BASE64
            .decode(r["data"].as_str().expect("png data").as_bytes())
            .expect("base64 png");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

fn shots() -> PathBuf {
    // CARGO_TARGET_TMPDIR is target/tmp.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("dashboard")
}

/// True, with the reason printed and logged for `scripts/test`'s summary, when Chromium
/// is missing and `test` skips.
fn no_chromium(test: &str) -> bool {
    if chromium().is_some() {
        return false;
    }
    let line = format!(
        "chromium: not on PATH and scripts/test could not install it (apt-get install \
         chromium) (pccl it dashboard::{test})"
    );
    eprintln!("SKIPPED: {line}");
    if let Some(path) = std::env::var_os("PCCL_SKIP_LOG") {
        use std::io::Write;
        // One short append: lines from tests running in parallel stay whole.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
            .expect("append to PCCL_SKIP_LOG");
    }
    true
}

/// Headless Chromium with one page open, driven over the DevTools protocol. Each call
/// blocks on its own runtime, so the test may make blocking pccl calls in between.
struct Browser {
    cdp: Cdp,
    rt: tokio::runtime::Runtime,
    chrome: Guard,
    profile: PathBuf,
}

impl Browser {
    /// Opens `url` in a fresh headless Chromium (`test` names its profile folder).
    fn open(url: &str, test: &str) -> Self {
        let browser = chromium().expect("chromium is on PATH");
        let profile =
            std::env::temp_dir().join(format!("pccl-chromium-{}-{test}", std::process::id()));
        let mut chrome = Command::new(browser)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1400,1300",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chromium");
        let ws_url = first_line(&mut chrome, |l| {
            l.strip_prefix("DevTools listening on ").map(str::to_string)
        });
        let chrome = Guard(chrome);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cdp = rt.block_on(async {
            let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
                .await
                .expect("connect to the browser");
            let mut cdp = Cdp {
                ws,
                next: 0,
                session: None,
            };
            let target = cdp.call("Target.createTarget", json!({"url": url})).await;
            let attached = cdp
                .call(
                    "Target.attachToTarget",
                    json!({"targetId": target["targetId"], "flatten": true}),
                )
                .await;
            cdp.session = attached["sessionId"].as_str().map(str::to_string);
            cdp.call("Runtime.enable", json!({})).await;
            cdp
        });
        Self {
            cdp,
            rt,
            chrome,
            profile,
        }
    }

    fn until(&mut self, what: &str, limit: Duration, expr: &str) -> Duration {
        self.rt.block_on(self.cdp.until(what, limit, expr))
    }

    fn eval(&mut self, expr: &str) -> Value {
        self.rt.block_on(self.cdp.eval(expr))
    }

    /// Saves a screenshot as `target/dashboard/<name>`.
    fn screenshot(&mut self, name: &str) {
        self.rt.block_on(self.cdp.screenshot(&shots().join(name)));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser first, then its profile (it writes there until it exits).
        let _ = self.chrome.0.kill();
        let _ = self.chrome.0.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

#[test]
fn the_dashboard_shows_the_run_and_a_death_in_a_real_browser() {
    const TEST: &str = "the_dashboard_shows_the_run_and_a_death_in_a_real_browser";
    if no_chromium(TEST) {
        return;
    }
    let mut master = Command::new(env!("CARGO_BIN_EXE_pccl-master"))
        .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pccl-master");
    let (addr, http): (SocketAddr, SocketAddr) = {
        let err = master.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut listen = None;
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("pccl-master listening on ") {
                    listen = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                }
                if let Some(rest) = line.strip_prefix("pccl-master dashboard: http://") {
                    let http = rest.split('/').next().and_then(|a| a.parse().ok());
                    if let (Some(l), Some(h)) = (listen, http) {
                        let _ = tx.send((l, h));
                    }
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("the master prints its addresses")
    };
    let _master = Guard(master);
    let mut peers: Vec<Peer> = (0..4).map(|_| Peer::start(addr)).collect();
    wait_until("4 peers stepping", Duration::from_secs(60), || {
        peers
            .iter()
            .all(|p| p.steps().iter().filter(|s| s.world == 4).count() >= 5)
    });

    let url = format!("http://{http}/");
    let mut page = Browser::open(&url, TEST);
    let limit = Duration::from_secs(20);
    page.until(
        "4 accepted peers in the table",
        limit,
        "document.querySelectorAll('#peers tr[data-state=accepted]').length === 4",
    );
    page.until(
        "a ring of 4 nodes and 4 links",
        limit,
        "document.querySelectorAll('#ring svg circle.node').length === 4 \
         && document.querySelectorAll('#ring svg line.link').length === 4",
    );
    page.until(
        "throughput data in the chart",
        limit,
        "Number(document.getElementById('busbw-chart').dataset.points) > 0 \
         && document.querySelectorAll('#busbw-chart canvas').length > 0",
    );
    page.until(
        "join events",
        limit,
        "document.querySelectorAll('#events tr[data-kind=join]').length === 4",
    );
    page.screenshot("dashboard-4-peers.png");

    // kill -9 one peer: the page must follow within a few seconds.
    let victim = peers.remove(2);
    victim.signal("-9");
    let took = page.until(
        "3 peers and a death event",
        Duration::from_secs(5),
        "document.querySelectorAll('#peers tr').length === 3 \
         && document.querySelectorAll('#ring svg circle.node').length === 3 \
         && document.querySelectorAll('#events tr[data-kind=death]').length === 1",
    );
    eprintln!("the page showed the death {took:?} after the kill");
    let summary = page.eval("document.getElementById('summary').dataset.world");
    assert_eq!(summary, json!("3"));
    page.screenshot("dashboard-after-kill.png");
    drop(page);

    // The peers' results stayed bit-identical throughout.
    wait_until(
        "survivors stepping at world 3",
        Duration::from_secs(20),
        || {
            peers
                .iter()
                .all(|p| p.steps().iter().filter(|s| s.world == 3).count() >= 5)
        },
    );
    let compared = check_parity(&peers.iter().collect::<Vec<_>>());
    assert!(compared > 10, "too few steps compared: {compared}");
}

/// The bandwidth heatmap in the browser: it appears once `optimize_topology` measured the
/// links, and when a peer whose links it shows leaves, it follows (here: back to saying
/// none are measured) rather than keep the old matrix.
#[test]
fn the_heatmap_shows_measured_links_and_follows_departures() {
    const TEST: &str = "the_heatmap_shows_measured_links_and_follows_departures";
    if no_chromium(TEST) {
        return;
    }
    let master = crate::master_http::http_master();
    let http = master.http_addr().expect("http is on");
    let mut comms = cluster(&master, 2);
    on_all(&comms, |_, c| c.optimize_topology().unwrap());
    let mut page = Browser::open(&format!("http://{http}/"), TEST);
    page.until(
        "a 2×2 heatmap with both measured links",
        Duration::from_secs(20),
        "(() => { const t = document.querySelector('#heatmap table'); \
           if (!t) return false; \
           const cells = [...t.querySelectorAll('td.cell')]; \
           return t.dataset.links === '2' && cells.length === 4 \
             && cells.filter((c) => c.textContent).length === 2; })()",
    );
    page.screenshot("dashboard-heatmap.png");
    // One peer leaves: both links involved it, so none is left to show.
    drop(comms.pop());
    page.until(
        "the heatmap cleared after the departure",
        Duration::from_secs(10),
        "!document.querySelector('#heatmap table') \
         && document.getElementById('heatmap').textContent.includes('no links measured')",
    );
    let rows = page.eval("document.querySelectorAll('#peers tr').length");
    assert_eq!(rows, json!(1));
}
