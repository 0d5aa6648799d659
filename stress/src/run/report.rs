//! The run's outcome as the harness reports it: the event counters, the JSON report and
//! the printed summary.

use serde::Serialize;

use super::strangers::StrangerTally;
use crate::scenario::Scenario;

/// The counters of the summary and JSON report.
#[derive(Debug, Default, Serialize)]
pub(super) struct Counts {
    pub(super) joins: u64,
    pub(super) joins_accepted: u64,
    /// Joins that found no free seat (WAN) and waited for one.
    pub(super) joins_deferred: u64,
    /// Deferred joins still waiting when the run ended: they never started.
    pub(super) joins_unstarted: u64,
    /// Workers running at the end that were never accepted (violations).
    pub(super) joins_never_accepted: u64,
    /// Joins whose first `connect` was turned away (a proposal aborted) and that asked again.
    pub(super) joins_turned_away: u64,
    pub(super) kills: u64,
    /// The master killed with SIGKILL and started again (`master_restarts`).
    pub(super) master_restarts: u64,
    /// Long freezes/partitions a master restart overlapped whose peer the new master
    /// rightly kept (`Fate::Evicting { may_stay }`).
    pub(super) evictions_excused: u64,
    pub(super) freezes_short: u64,
    pub(super) freezes_long: u64,
    pub(super) evicted: u64,
    pub(super) leaves: u64,
    pub(super) resets: u64,
    pub(super) partitions_short: u64,
    pub(super) partitions_long: u64,
    pub(super) events_skipped: u64,
    /// Disruptions aimed at a slot not running, given to another peer (`fates.rs`).
    pub(super) events_retargeted: u64,
    pub(super) unexpected_exits: u64,
    pub(super) stalls: u64,
    pub(super) leaks: u64,
}

#[derive(Debug, Serialize)]
pub(super) struct Report<'a> {
    pub(super) seed: u64,
    pub(super) scenario: &'a Scenario,
    pub(super) mode: String,
    pub(super) schedule_events: usize,
    pub(super) schedule_digest: String,
    pub(super) wall_s: f64,
    pub(super) counts: &'a Counts,
    pub(super) steps: u64,
    pub(super) last_step: u64,
    pub(super) step_lines: u64,
    pub(super) max_world: u32,
    pub(super) parity_checks: u64,
    pub(super) parity_violations: u64,
    pub(super) value_violations: u64,
    pub(super) membership_checked: u64,
    pub(super) membership_unverified: u64,
    pub(super) failed_ops_recovered: u64,
    pub(super) recovery_ms_max: f64,
    pub(super) recovery_ms_median: f64,
    pub(super) busbw_gbps_median: f64,
    pub(super) busbw_gbps_max: f64,
    pub(super) quantized: bool,
    pub(super) strangers: Option<&'a StrangerTally>,
    pub(super) violations: &'a [String],
    pub(super) verdict: &'a str,
}

pub(super) fn print_summary(r: &Report<'_>) {
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
        "joins {} (accepted {}, turned away first {}, deferred {}, never started {}, never accepted {})  kills {}  leaves {}",
        c.joins,
        c.joins_accepted,
        c.joins_turned_away,
        c.joins_deferred,
        c.joins_unstarted,
        c.joins_never_accepted,
        c.kills,
        c.leaves
    );
    println!(
        "freezes short {} long {} (evicted {}, kept across a master restart {})  resets {}  partitions short {} long {}  master restarts {}",
        c.freezes_short,
        c.freezes_long,
        c.evicted,
        c.evictions_excused,
        c.resets,
        c.partitions_short,
        c.partitions_long,
        c.master_restarts
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
        "unexpected exits {}  stalls {}  leaked processes {}  events skipped {}  retargeted {}",
        c.unexpected_exits, c.stalls, c.leaks, c.events_skipped, c.events_retargeted
    );
    if let Some(s) = r.strangers {
        println!(
            "strangers from {}: planned {} launched {} (skipped: no target {}, busy {})  answered {}  not closed {}  held after {}",
            s.from_ip,
            s.planned,
            s.launched,
            s.skipped_no_target,
            s.skipped_busy,
            s.answered,
            s.not_closed,
            s.held_after
        );
        for (kind, k) in &s.kinds {
            println!(
                "  {:<8} attacks {:>3}  conns {:>4} (connect failed {})  closed {:>4} (at once {:>3})  open past deadline {} (excused {})  bytes sent {} read {}",
                format!("{kind:?}").to_lowercase(),
                k.attacks,
                k.conns,
                k.connect_failed,
                k.closed,
                k.closed_at_once,
                k.still_open,
                k.excused_open,
                k.bytes_sent,
                k.bytes_read
            );
        }
    }
    for v in r.violations.iter().take(20) {
        println!("  violation: {v}");
    }
    println!("verdict: {}", r.verdict);
}
