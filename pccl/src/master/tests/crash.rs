//! Master crashes in the simulator (docs/ARCHITECTURE.md §14). At a random step the
//! master's state machine is dropped whole and a fresh one takes its place, as when
//! `pccl-master` is killed and started again: what the old master had written to a
//! connection may still reach the peer (a random prefix of its queue), what the peers had
//! sent it is lost. Every running peer re-dials after a jittered delay and re-registers
//! with a `Rejoin` that the real peer's own record (`comm::reconnect::Memory`) builds from
//! what this peer sent and received; peers may die meanwhile, newcomers may arrive.
//!
//! The ids any master hands out are checked across masters by [`Ledger`]s: one meaning
//! per epoch, proposal, joint call, sync round and op, for every peer that holds it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::Duration;

use rand::Rng;

use super::sim::{GROUPS, Life, Sim};
use super::{HB_INTERVAL, HB_TIMEOUT, Res};
use crate::collectives::registry::OpKey;
use crate::master::state::{MasterState, SyncPhaseKind, Timeouts};
use crate::wire::ToMaster;

/// A peer re-dials this long after its master died, at the earliest and at the latest:
/// the real backoff's first tries (`comm::reconnect::retry_delay`), with a failed dial or
/// two while the new master starts.
const REDIAL_MS: std::ops::RangeInclusive<u64> = 25..=600;

/// A restarted master waits as the operational defaults say: the startup grace (1 s,
/// longer than any re-dial above) keeps a newcomer from starting a second run before the
/// old run's peers are back.
fn restart_timeouts() -> Timeouts {
    Timeouts {
        heartbeat: HB_TIMEOUT,
        startup_grace: Duration::from_secs(1),
        ..Timeouts::default()
    }
}

/// One meaning per id, for every peer that holds it: each entry keeps the value and the
/// peers that received it. A different value for a known id is a violation while any
/// peer that received the first one is still alive; once all of them have died the id
/// may be given again (an id nobody alive holds cannot be confused).
#[derive(Debug)]
pub(super) struct Ledger<K, V> {
    entries: BTreeMap<K, (V, BTreeSet<usize>)>,
}

impl<K, V> Default for Ledger<K, V> {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Debug, V: PartialEq + Debug> Ledger<K, V> {
    /// Whether some peer received a value for `key`.
    pub(super) fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Peer `i` received `value` for `key`; `alive` says which peers still live.
    pub(super) fn record(
        &mut self,
        key: K,
        value: V,
        i: usize,
        what: &str,
        alive: impl Fn(usize) -> bool,
    ) -> Res {
        match self.entries.get_mut(&key) {
            Some((v, holders)) if *v == value => {
                holders.insert(i);
                Ok(())
            }
            Some((v, holders)) => {
                let live: Vec<usize> = holders.iter().copied().filter(|h| alive(*h)).collect();
                ensure!(
                    live.is_empty(),
                    "{what} {key:?} means {value:?} to peer {i} but {v:?} to live peers {live:?}"
                );
                *v = value;
                *holders = BTreeSet::from([i]);
                Ok(())
            }
            None => {
                self.entries.insert(key, (value, BTreeSet::from([i])));
                Ok(())
            }
        }
    }
}

impl Sim {
    /// Whether what peer `i` was told still binds (for the ledgers): it lives, or it died
    /// after its claim reached the master in charge, which must then honour what the
    /// claim says it was told (§14, rule 3) — a verdict only it had received, given up
    /// with its claim, once made survivors fail an op it had seen succeed.
    pub(super) fn alive(&self) -> impl Fn(usize) -> bool + use<> {
        let master = self.stats.crashes;
        let binds: Vec<bool> = self
            .peers
            .iter()
            .map(|p| p.life.alive() || p.claimed_in == Some(master))
            .collect();
        move |i| binds[i]
    }

    /// How likely a crash is now: higher while something is open, so that crashes often
    /// land mid-vote, mid-proposal, mid-sync, mid-op and mid-recovery.
    pub(super) fn crash_weight(&self) -> u32 {
        let m = &self.master;
        if m.voters().next().is_some() {
            return 12;
        }
        if m.recovering() {
            return 6;
        }
        let busy = m.proposal_in_flight()
            || m.op_votes().next().is_some()
            || (0..GROUPS).any(|g| m.sync_phase(g) != SyncPhaseKind::Idle);
        if busy { 3 } else { 1 }
    }

    /// The master process dies and a new one starts on the same address.
    pub(super) fn crash(&mut self) -> Res {
        let m = &self.master;
        let s = &mut self.stats;
        s.crashes += 1;
        s.crashes_mid_vote += u64::from(m.voters().next().is_some());
        s.crashes_mid_proposal += u64::from(m.proposal_in_flight());
        s.crashes_mid_op += u64::from(m.op_votes().next().is_some());
        s.crashes_mid_recovery += u64::from(m.recovering());
        s.crashes_mid_sync +=
            u64::from((0..GROUPS).any(|g| m.sync_phase(g) != SyncPhaseKind::Idle));
        self.log(|| "MASTER CRASHES; a new master starts".to_string());
        for i in 0..self.peers.len() {
            let delay = Duration::from_millis(self.rng.gen_range(REDIAL_MS));
            let keep = self.rng.gen_range(0..=self.peers[i].to_peer.len());
            let at = self.elapsed + delay;
            let p = &mut self.peers[i];
            p.to_master.clear();
            match p.life {
                Life::Active if !p.hostile => {
                    // What the master wrote before it died is still read, then the EOF.
                    p.to_peer.truncate(keep);
                    p.life = Life::Redialing(at);
                }
                // Its next dial reaches the new master.
                Life::Redialing(_) => {}
                // Partitioned, exiting or an adversary: it never reaches a master again.
                _ => {
                    p.life = Life::Dead;
                    p.to_peer.clear();
                }
            }
        }
        self.master = MasterState::with_timeouts(restart_timeouts());
        // The server's loop starts its clock when it starts (`started`).
        let now = self.now();
        self.master.handle_timeout(now);
        self.drain()
    }

    /// The earliest re-dial due: (time since the start, peer).
    pub(super) fn next_redial(&self) -> Option<(Duration, usize)> {
        self.peers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match p.life {
                Life::Redialing(at) => Some((at, i)),
                _ => None,
            })
            .min()
    }

    /// Peer `i` reaches the new master: it reads what the old one wrote before dying,
    /// connects and sends its claim, as `comm::control::redial` does.
    pub(super) fn redial(&mut self, i: usize) -> Res {
        while !self.peers[i].to_peer.is_empty() {
            self.deliver_to_peer(i)?;
        }
        if !matches!(self.peers[i].life, Life::Redialing(_)) {
            return Ok(());
        }
        let conn = self.new_conn(i);
        let p = &mut self.peers[i];
        let in_flight = p
            .ops
            .values()
            .map(|op| {
                let (tag, epoch, seq) = op.key();
                OpKey { tag, epoch, seq }
            })
            .collect();
        let topology = p.last_commit.clone().unwrap_or_default();
        let claim = p.memory.claim(in_flight, &topology);
        if claim.accepted {
            self.stats.rejoins += 1;
            // The claim is read below, into the recovery (honest members are never
            // refused here: `drain` checks it).
            p.claimed_in = Some(self.stats.crashes);
        }
        p.conn = conn;
        p.life = Life::Active;
        p.next_hb = self.elapsed + HB_INTERVAL;
        p.to_master
            .push_back(Some(ToMaster::Rejoin(Box::new(claim))));
        let id = p.id;
        self.log(|| format!("peer {i} re-dials as conn {conn}"));
        let now = self.now();
        self.master.handle_connect(now, conn, id, Self::ip_of(i));
        self.drain()?;
        // The claim is the connection's first frame, read as soon as the handshake ends:
        // a restarted master hears from every live peer of the old run within the
        // startup grace (a later one is refused, the documented limit of §14).
        self.deliver_to_master(i)
    }
}
