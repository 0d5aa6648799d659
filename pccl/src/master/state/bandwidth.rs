//! `optimize_topology`: peers measure the links they have no figure for (the `Measuring`
//! phase); then each group's ring is solved for the best bottleneck and, if that beats
//! the current order, proposed (docs/ARCHITECTURE.md §7).

use std::collections::BTreeMap;

use super::MasterState;
use super::phase::TopologyPhase;
use crate::topology::solver;
use crate::types::PeerId;
use crate::wire::FromMaster;

impl MasterState {
    /// Asks every peer to test the links to peers it has no figure for (docs/ARCHITECTURE.md §7).
    pub(super) fn measure_missing(&mut self) {
        let ring = self.ring.clone();
        let mut waiting = BTreeMap::new();
        for p in &ring {
            let group = self.peers[p].group;
            let targets: Vec<PeerId> = ring
                .iter()
                .filter(|q| *q != p && self.peers[*q].group == group)
                .filter(|q| !self.bandwidth.contains_key(&(*p, **q)))
                .copied()
                .collect();
            if !targets.is_empty() {
                let deadline = self.deadline_in(self.bandwidth_allowance(targets.len()));
                waiting.insert(*p, deadline);
                self.send_peer(*p, FromMaster::MeasureBandwidth { targets });
            }
        }
        if waiting.is_empty() {
            self.reorder_ring();
        } else {
            self.set_topology_phase(TopologyPhase::Measuring { waiting });
        }
    }

    pub(super) fn on_bandwidth(&mut self, peer: PeerId, results: Vec<(PeerId, u64)>) {
        let TopologyPhase::Measuring { waiting } = &mut self.topology_phase else {
            return;
        };
        if waiting.remove(&peer).is_none() {
            return;
        }
        let last = waiting.is_empty();
        for (to, bps) in results {
            if self.peers.contains_key(&to) {
                self.bandwidth.insert((peer, to), bps);
            }
        }
        if last {
            self.reorder_ring();
        }
    }

    /// Solves each group's ring for the best bottleneck and re-wires it if it improves.
    /// Leaves the `Measuring` phase (if in it) for `Proposing` or `Idle`.
    fn reorder_ring(&mut self) {
        let mut groups: Vec<u32> = Vec::new();
        for p in &self.ring {
            let g = self.peers[p].group;
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        let mut ring = Vec::with_capacity(self.ring.len());
        let mut epochs = self.group_epochs.clone();
        for g in groups {
            let members = self.group_members(g);
            let bw = |a: usize, b: usize| {
                self.bandwidth
                    .get(&(members[a], members[b]))
                    .copied()
                    .unwrap_or(0) as f64
            };
            let current: Vec<usize> = (0..members.len()).collect();
            let order = solver::best_ring(&current, &bw);
            if order != current {
                self.counter += 1;
                epochs.insert(g, self.counter);
            }
            ring.extend(order.into_iter().map(|i| members[i]));
        }
        if epochs == self.group_epochs {
            tracing::info!("topology already optimal");
            if matches!(self.topology_phase, TopologyPhase::Measuring { .. }) {
                self.set_topology_phase(TopologyPhase::Idle);
            }
            for p in self.ring.clone() {
                self.send_peer(
                    p,
                    FromMaster::TopologyUpdated {
                        call: self.calls,
                        result: Ok(()),
                    },
                );
            }
            return;
        }
        tracing::info!("re-ordered ring proposed");
        self.start_proposal(&ring, &epochs, Vec::new());
    }
}
