//! Membership: a registered peer waits in `pending` until a topology update accepts it
//! into the ring (or, in an empty run, is accepted alone at once); a peer that leaves is
//! taken out of every phase and table here, which may complete what waited only on it.
//! A peer evicted for missing a deadline (`deadlines`) leaves by the same path.

use std::net::{IpAddr, SocketAddr};

use super::phase::{SyncPhase, TopologyPhase};
use super::{ConnId, MasterState, Peer};
use crate::types::PeerId;

impl MasterState {
    pub(super) fn on_register(
        &mut self,
        conn: ConnId,
        peer: PeerId,
        group: u32,
        p2p_port: u16,
        advertise_ip: Option<IpAddr>,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.registered {
            return self.violation(conn, "registered twice");
        }
        c.registered = true;
        let ip = advertise_ip.unwrap_or(c.ip);
        self.peers.insert(
            peer,
            Peer {
                conn,
                group,
                p2p_addr: SocketAddr::new(ip, p2p_port),
                static_key: c.static_key,
            },
        );
        self.pending.push(peer);
        tracing::info!(%peer, group, "peer registered");
        self.admit_first_if_empty();
    }

    /// An empty run has nobody to vote newcomers in: the first waiting peer is accepted
    /// on its own (a ring of one needs no p2p connections).
    ///
    /// Not while a run is being recovered, nor during the startup grace of a fresh master:
    /// the peers of a run whose master restarted re-register first, and a newcomer that
    /// got in before them would start a second run (docs/ARCHITECTURE.md §14).
    pub(super) fn admit_first_if_empty(&mut self) {
        let proposing = matches!(self.topology_phase, TopologyPhase::Proposing(_));
        if !self.ring.is_empty() || proposing || self.pending.is_empty() {
            return;
        }
        if self.recovery.is_some() || self.in_startup_grace() {
            return;
        }
        let peer = self.pending.remove(0);
        self.ring.push(peer);
        let group = self.peers[&peer].group;
        self.bump_epoch(group);
        tracing::info!(%peer, "first peer accepted");
        self.broadcast_commit();
    }

    /// Takes a dead (or evicted) peer out of everything; completes what waited only on it.
    /// `why` it left goes into the failures it causes.
    pub(super) fn remove_peer(&mut self, peer: PeerId, why: &str) {
        let Some(rec) = self.peers.remove(&peer) else {
            return;
        };
        self.claimant_left(peer);
        self.stale_sync_done.remove(&peer);
        self.bandwidth.retain(|(a, b), _| *a != peer && *b != peer);
        if matches!(self.topology_phase, TopologyPhase::Measuring { .. })
            && self.ring.contains(&peer)
        {
            // The measurements included the dead peer: give up; the old ring stays and the
            // call is retryable. (Its record is gone, so it is sent nothing.)
            self.fail_measuring(&format!(
                "peer {peer} left during the bandwidth tests ({why})"
            ));
        }
        match self.syncs.get_mut(&rec.group) {
            Some(SyncPhase::Reporting { reports, .. }) => {
                reports.remove(&peer);
            }
            Some(SyncPhase::Transferring(t)) => {
                t.participants.remove(&peer);
                t.done.remove(&peer);
            }
            Some(SyncPhase::Idle) | None => {}
        }
        self.votes.remove(&peer);
        self.pending.retain(|p| *p != peer);
        if let TopologyPhase::Proposing(p) = &self.topology_phase {
            if p.newcomers.contains(&peer) {
                self.abort_proposal(&format!("newcomer {peer} left ({why})"), false);
            } else if p.topology.contains(peer) {
                self.abort_proposal(&format!("peer {peer} left ({why})"), false);
            }
        }
        if let Some(pos) = self.ring.iter().position(|p| *p == peer) {
            self.ring.remove(pos);
            if self.ring.iter().any(|p| self.peers[p].group == rec.group) {
                self.bump_epoch(rec.group);
            } else {
                self.group_epochs.remove(&rec.group);
                self.reset_group_ops(rec.group);
            }
            tracing::info!(%peer, world = self.ring.len(), "peer removed from the ring");
            self.broadcast_commit();
            self.try_complete_vote();
            self.try_elect(rec.group);
            self.try_finish_sync(rec.group);
        }
        self.admit_first_if_empty();
        self.try_finish_recovery();
    }
}
