//! Per-step checks across peers, and the run's counters.
//!
//! Every `STEP` line is compared with the first line of the same step from another peer:
//! the shared-state hash after the sync, and for each op its world size, `K` (the sum of
//! `slot + 1` over the peers that took part) and the CRC32 of the result bytes must be
//! equal. The worker already checked every element against `W` and `K`; here `K` is
//! checked against the slots that could have taken part (see `finish`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde::Serialize;

use crate::worker::{OpLine, StepLine, weight};

/// What the first reporter of a step saw.
#[derive(Debug)]
struct Reference {
    slot: u32,
    state: u64,
    ops: Vec<OpLine>,
    /// Slots that reported this step, and the slots alive when it was first reported.
    reporters: BTreeSet<u32>,
    alive: BTreeSet<u32>,
}

/// Run-wide counters and violations.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Tally {
    pub(crate) steps: u64,
    pub(crate) step_lines: u64,
    pub(crate) last_step: u64,
    pub(crate) max_world: u32,
    pub(crate) parity_checks: u64,
    pub(crate) parity_violations: u64,
    pub(crate) value_violations: u64,
    pub(crate) membership_checked: u64,
    pub(crate) membership_unverified: u64,
    pub(crate) failed_ops_recovered: u64,
    pub(crate) recovery_ms: Vec<f64>,
    /// Per step line without retries: bus bandwidth of the op phase, GB/s.
    pub(crate) busbw: Vec<f64>,
    pub(crate) violations: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct Checker {
    refs: BTreeMap<u64, Reference>,
    pub(crate) tally: Tally,
    pub(crate) last_progress: Instant,
    op_bytes: f64,
}

impl Checker {
    pub(crate) fn new(count: usize, concurrent: usize) -> Self {
        Self {
            refs: BTreeMap::new(),
            tally: Tally::default(),
            last_progress: Instant::now(),
            op_bytes: (count * 4 * concurrent) as f64,
        }
    }

    pub(crate) fn violation(&mut self, what: String) {
        eprintln!("VIOLATION: {what}");
        if self.tally.violations.len() < 200 {
            self.tally.violations.push(what);
        }
    }

    /// Takes one step line from `slot`; `alive` are the slots with a live process now.
    pub(crate) fn step(&mut self, l: StepLine, alive: &BTreeSet<u32>) {
        let t = &mut self.tally;
        t.step_lines += 1;
        t.max_world = t.max_world.max(l.world);
        t.failed_ops_recovered += u64::from(l.failed_ops);
        t.recovery_ms.extend(&l.recovery_ms);
        if l.failed_ops == 0 && l.world >= 2 && l.ops_ms > 0.0 {
            let w = f64::from(l.world);
            t.busbw
                .push(self.op_bytes / (l.ops_ms / 1e3) * 2.0 * (w - 1.0) / w / 1e9);
        }
        if !l.ok {
            t.value_violations += 1;
            let m = format!(
                "slot {} step {}: result differs from the expected sum",
                l.slot, l.step
            );
            self.violation(m);
        }
        for op in &l.ops {
            // Peers only join at update_topology, before the sync: an op can lose peers
            // (a death between the sync and the op) but never gain them.
            if op.w > l.world || op.w < 2 {
                let m = format!(
                    "slot {} step {} tag {}: op world {} but group world {}",
                    l.slot, l.step, op.tag, op.w, l.world
                );
                self.violation(m);
            }
        }
        self.last_progress = Instant::now();
        match self.refs.get_mut(&l.step) {
            None => {
                self.tally.steps += 1;
                self.tally.last_step = self.tally.last_step.max(l.step);
                self.refs.insert(
                    l.step,
                    Reference {
                        slot: l.slot,
                        state: l.state,
                        ops: l.ops,
                        reporters: BTreeSet::from([l.slot]),
                        alive: alive.clone(),
                    },
                );
            }
            Some(r) => {
                r.reporters.insert(l.slot);
                self.tally.parity_checks += 1;
                let mut bad = Vec::new();
                if r.state != l.state {
                    bad.push(format!(
                        "shared-state hash {:016x} (slot {}) vs {:016x} (slot {})",
                        r.state, r.slot, l.state, l.slot
                    ));
                }
                if r.ops != l.ops {
                    bad.push(format!(
                        "ops {:?} (slot {}) vs {:?} (slot {})",
                        r.ops, r.slot, l.ops, l.slot
                    ));
                }
                if !bad.is_empty() {
                    self.tally.parity_violations += 1;
                    let m = format!("parity at step {}: {}", l.step, bad.join("; "));
                    self.violation(m);
                }
            }
        }
        // Keep memory bounded on long runs: settle steps well behind the front.
        let front = self.tally.last_step;
        while let Some((&s, _)) = self.refs.first_key_value() {
            if s + 1000 > front {
                break;
            }
            let r = self.refs.remove(&s).expect("present");
            self.settle(s, &r);
        }
    }

    /// Settles every remaining step.
    pub(crate) fn finish(&mut self) {
        let refs = std::mem::take(&mut self.refs);
        for (s, r) in &refs {
            self.settle(*s, r);
        }
    }

    /// `K` must be Σ(slot + 1) over exactly `W` slots: the reporters plus, for peers that
    /// died before printing, distinct slots alive at the time.
    fn settle(&mut self, step: u64, r: &Reference) {
        for op in &r.ops {
            let missing = op.w as i64 - r.reporters.len() as i64;
            let known: u64 = r.reporters.iter().map(|s| weight(*s, op.q)).sum();
            if missing < 0 {
                // More reporters than participants: only possible if a retry shrank the
                // ring for some of them, which the parity check would have caught.
                continue;
            }
            let missing = missing as usize;
            if missing == 0 {
                self.tally.membership_checked += 1;
                if known != op.k {
                    let m = format!(
                        "step {step} tag {}: K = {} but the {} peers that reported sum to {known}",
                        op.tag, op.k, op.w
                    );
                    self.tally.value_violations += 1;
                    self.violation(m);
                }
                continue;
            }
            let cands: Vec<u64> = r
                .alive
                .difference(&r.reporters)
                .map(|s| weight(*s, op.q))
                .collect();
            if missing > 3 || cands.len() > 24 {
                self.tally.membership_unverified += 1;
                continue;
            }
            self.tally.membership_checked += 1;
            if op.k < known || !subset_sum(&cands, missing, op.k - known) {
                let m = format!(
                    "step {step} tag {}: K = {} cannot be the reporters {:?} plus {missing} of {:?}",
                    op.tag, op.k, r.reporters, r.alive
                );
                self.tally.value_violations += 1;
                self.violation(m);
            }
        }
    }
}

/// Whether `n` distinct elements of `c` sum to `target`.
fn subset_sum(c: &[u64], n: usize, target: u64) -> bool {
    if n == 0 {
        return target == 0;
    }
    (0..c.len()).any(|i| c[i] <= target && subset_sum(&c[i + 1..], n - 1, target - c[i]))
}

pub(crate) fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(slot: u32, step: u64, k: u64, crc: u32) -> StepLine {
        StepLine {
            slot,
            step,
            world: 2,
            ops: vec![OpLine {
                tag: 0,
                w: 2,
                k,
                crc,
                q: false,
            }],
            state: 7,
            revision: step,
            sync_rx: 0,
            api: "async".into(),
            failed_ops: 0,
            recovery_ms: vec![],
            ops_ms: 1.0,
            step_ms: 1.0,
            ok: true,
        }
    }

    #[test]
    fn parity_and_membership() {
        let alive = BTreeSet::from([0, 1, 2]);
        let mut c = Checker::new(10, 1);
        c.step(line(0, 1, 3, 5), &alive);
        c.step(line(1, 1, 3, 5), &alive);
        c.step(line(0, 2, 3, 5), &alive);
        c.step(line(1, 2, 3, 6), &alive);
        // Slot 2 took part in step 3 with slot 0 but died before printing: 1 + 3 = 4.
        c.step(line(0, 3, 4, 5), &alive);
        // Nobody alive could make K = 9 with slot 0.
        c.step(line(0, 4, 9, 5), &alive);
        c.finish();
        assert_eq!(c.tally.parity_violations, 1);
        assert_eq!(c.tally.value_violations, 1);
        assert_eq!(c.tally.membership_checked, 4);
    }
}
