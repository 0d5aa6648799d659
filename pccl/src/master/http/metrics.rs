//! The Prometheus metrics of a run (README, "Watching a run"), kept with the maintained
//! `prometheus-client` crate: counters and histograms are updated as the observer sees
//! events; gauges that describe the present (peers, world sizes, links) are refilled from
//! the observer's tables at each scrape, so departed peers and groups disappear.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// One label.
pub(crate) type L1 = [(&'static str, String); 1];
/// Two labels.
pub(crate) type L2 = [(&'static str, String); 2];
type FGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Every metric the master exports; names get the `pccl_` prefix.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) peers: Family<L1, Gauge>,
    pub(crate) world_size: Family<L1, Gauge>,
    pub(crate) epoch: Family<L1, Gauge>,
    pub(crate) ops: Family<L2, Counter>,
    pub(crate) op_failures: Family<L1, Counter>,
    pub(crate) retries: Counter,
    pub(crate) recovery: Histogram,
    pub(crate) op_duration: Histogram,
    pub(crate) heartbeats_missed: Counter,
    pub(crate) evictions: Counter,
    pub(crate) peer_losses: Family<L1, Counter>,
    pub(crate) sync_revision: Family<L1, Gauge>,
    pub(crate) syncs: Family<L1, Counter>,
    pub(crate) sync_bytes: Counter,
    pub(crate) ring_bytes: Family<L1, Counter>,
    pub(crate) link_bandwidth: Family<L2, FGauge>,
    pub(crate) peer_busbw: Family<L1, FGauge>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut r = Registry::with_prefix("pccl");
        let m = Self {
            peers: Family::default(),
            world_size: Family::default(),
            epoch: Family::default(),
            ops: Family::default(),
            op_failures: Family::default(),
            retries: Counter::default(),
            // 10 ms .. ~10 min
            recovery: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            // 100 µs .. ~100 s
            op_duration: Histogram::new(exponential_buckets(1e-4, 2.5, 16)),
            heartbeats_missed: Counter::default(),
            evictions: Counter::default(),
            peer_losses: Family::default(),
            sync_revision: Family::default(),
            syncs: Family::default(),
            sync_bytes: Counter::default(),
            ring_bytes: Family::default(),
            link_bandwidth: Family::default(),
            peer_busbw: Family::default(),
            registry: Registry::default(),
        };
        r.register(
            "peers",
            "Registered peers by state (waiting, accepted)",
            m.peers.clone(),
        );
        r.register(
            "world_size",
            "Accepted peers per peer group",
            m.world_size.clone(),
        );
        r.register(
            "group_epoch",
            "Membership epoch of each peer group",
            m.epoch.clone(),
        );
        r.register(
            "ops",
            "Op verdicts per peer group and outcome (ok, failed)",
            m.ops.clone(),
        );
        r.register(
            "op_failures",
            "Failed op verdicts by reason",
            m.op_failures.clone(),
        );
        r.register(
            "retries",
            "Ops peers ran again after a failure (peer-reported)",
            m.retries.clone(),
        );
        r.register_with_unit(
            "recovery",
            "From the loss of a peer to its group's next successful op",
            Unit::Seconds,
            m.recovery.clone(),
        );
        r.register_with_unit(
            "op_duration",
            "All-reduce durations as the peers measured them (at most 32 per peer per heartbeat, the latest: a sample when ops are faster)",
            Unit::Seconds,
            m.op_duration.clone(),
        );
        r.register(
            "heartbeats_missed",
            "Peers declared dead for missing heartbeats",
            m.heartbeats_missed.clone(),
        );
        r.register(
            "evictions",
            "Peers evicted for a missed deadline or a protocol violation",
            m.evictions.clone(),
        );
        r.register(
            "peer_losses",
            "Registered peers lost, by cause (disconnected, heartbeat_timeout, evicted)",
            m.peer_losses.clone(),
        );
        r.register(
            "shared_state_revision",
            "Revision of each group's last successful shared-state sync",
            m.sync_revision.clone(),
        );
        r.register(
            "shared_state_syncs",
            "Shared-state syncs by outcome (ok, failed)",
            m.syncs.clone(),
        );
        r.register_with_unit(
            "shared_state_transfer",
            "Tensor bytes the sync plans moved",
            Unit::Bytes,
            m.sync_bytes.clone(),
        );
        r.register_with_unit(
            "ring",
            "Ring payload bytes by direction (tx, rx), peer-reported",
            Unit::Bytes,
            m.ring_bytes.clone(),
        );
        r.register(
            "link_bandwidth_bytes_per_second",
            "Measured bandwidth from one peer to another (optimize_topology)",
            m.link_bandwidth.clone(),
        );
        r.register(
            "peer_busbw_bytes_per_second",
            "Bus bandwidth of each peer's last all-reduce (peer-reported)",
            m.peer_busbw.clone(),
        );
        Self { registry: r, ..m }
    }

    /// The text exposition (OpenMetrics, which Prometheus scrapes natively).
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// `[(name, value)]`
pub(crate) fn l1(name: &'static str, value: impl ToString) -> L1 {
    [(name, value.to_string())]
}

/// `[(a, x), (b, y)]`
pub(crate) fn l2(a: &'static str, x: impl ToString, b: &'static str, y: impl ToString) -> L2 {
    [(a, x.to_string()), (b, y.to_string())]
}
