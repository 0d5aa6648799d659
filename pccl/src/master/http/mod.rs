//! The master's optional HTTP endpoints (`MasterConfig::http`, `pccl-master --http`;
//! README, "Watching a run"): `/metrics` (Prometheus), `/api/run` (JSON) and `/`, a
//! dashboard whose files are compiled in. Nothing here runs unless the option is given.
//!
//! Built on hyper (the connection, with its head-size and head-time bounds) and axum
//! (routing). The listener faces whoever can reach it, so it is read-only
//! (GET; anything else is 405) and bounded (SECURITY.md §3): at most
//! [`MAX_CONNECTIONS`] connections at once (beyond that a new one is closed at once),
//! request heads of at most [`MAX_HEAD_BYTES`] that must arrive within
//! [`HEAD_TIMEOUT`], bodies never read, and each connection lives at most
//! [`CONNECTION_LIFETIME`].

pub(crate) mod metrics;
pub(crate) mod observe;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::net::Throttle;
pub(crate) use observe::Observer;

/// Connections served at once, at most.
pub const MAX_CONNECTIONS: usize = 64;
/// Bytes of one request head (request line and headers), at most.
pub const MAX_HEAD_BYTES: usize = 16 << 10;
/// A request head must arrive within this.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection (kept alive across requests) is closed after this.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// The observer the master's driver feeds and the endpoints read.
pub(crate) type Shared = Arc<Mutex<Observer>>;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");
/// uPlot 1.6.32 (MIT, `assets/uPlot.LICENSE`), the charting library of the dashboard;
/// public so that other reports (`pccl-stress`'s HTML) embed the same file.
pub const UPLOT_JS: &str = include_str!("assets/uPlot.iife.min.js");
/// uPlot's stylesheet.
pub const UPLOT_CSS: &str = include_str!("assets/uPlot.min.css");

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Observer> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

fn router(shared: Shared) -> Router {
    let file = |body: &'static str, kind: &'static str| {
        get(move || async move { ([(header::CONTENT_TYPE, kind)], body) })
    };
    Router::new()
        .route("/", file(INDEX, "text/html; charset=utf-8"))
        .route("/app.js", file(APP_JS, "text/javascript; charset=utf-8"))
        .route("/style.css", file(STYLE, "text/css; charset=utf-8"))
        .route(
            "/uPlot.js",
            file(UPLOT_JS, "text/javascript; charset=utf-8"),
        )
        .route("/uPlot.css", file(UPLOT_CSS, "text/css; charset=utf-8"))
        .route("/metrics", get(metrics))
        .route("/api/run", get(run))
        .layer(axum::middleware::map_response(harden))
        .with_state(shared)
}

async fn metrics(State(shared): State<Shared>) -> Response {
    let text = lock(&shared).metrics_text();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn run(State(shared): State<Shared>) -> Response {
    let doc = lock(&shared).run_json(Instant::now());
    axum::Json(doc).into_response()
}

/// Every answer: never cached, never sniffed, and the page may load only its own files.
async fn harden(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; style-src 'self' 'unsafe-inline'"),
    );
    r
}

/// Serves the endpoints until the task is aborted (it runs beside the master's driver).
pub(crate) async fn serve(listener: TcpListener, shared: Shared) {
    let app = TowerToHyperService::new(router(shared));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refusals = Throttle::new(Duration::from_secs(1));
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            if let Some(n) = refusals.hit() {
                tracing::warn!(%addr, refused = n, limit = MAX_CONNECTIONS,
                    "too many http connections: new ones are closed at once");
            }
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), app);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(slot);
        });
    }
}
