//! Riding out a master outage (docs/ARCHITECTURE.md §14): what a peer remembers about
//! the run so that it can re-register with a restarted master (`Memory`, sent as a
//! `Rejoin`), and the bounded, jittered backoff with which it re-dials the master's
//! address until `master_reconnect_timeout` runs out.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use rand::Rng;

use crate::collectives::registry::{OpKey, Registry};
use crate::types::Topology;
use crate::wire::{
    Answer, FailReason, OpClaim, OpRecord, RefusalRecord, Rejoin, SyncClaim, SyncRefusal, ToMaster,
    VoteKind,
};

/// Verdicts a peer remembers, newest last: enough for any peer still waiting for one it
/// missed (they can lag by at most the ops in flight at once).
const REMEMBERED_VERDICTS: usize = 1024;

/// First retry delay; it doubles up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_millis(50);
/// Longest retry delay. A restarted master waits `startup_grace` (1 s by default, twice
/// this) before it lets a newcomer start a run of its own, so a live peer is back first.
const MAX_RETRY: Duration = Duration::from_millis(500);

/// The delay before re-dial number `attempt` (from 0): exponential, capped, with jitter
/// (a random half to all of it) so that the peers of a run do not dial in lockstep.
pub(crate) fn retry_delay(attempt: u32) -> Duration {
    let full = FIRST_RETRY
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_RETRY);
    full.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

/// What this peer knows about the run, kept up to date by the control task from what it
/// sends and receives, and turned into a `Rejoin` after the connection is lost.
#[derive(Debug, Default)]
pub(crate) struct Memory {
    group: u32,
    p2p_port: u16,
    advertise_ip: Option<IpAddr>,
    /// A committed topology has included us.
    pub(crate) accepted: bool,
    /// Highest epoch or proposal id seen.
    max_seen: u64,
    /// The last joint call answered here, and the answer.
    call: u64,
    answer: Option<Answer>,
    /// Our joint call in flight, if any.
    pub(crate) vote: Option<VoteKind>,
    verdicts: VecDeque<OpRecord>,
    /// Ops whose part here ended (`OpDone`), waiting for their verdict, by tag.
    done: BTreeMap<u64, (OpKey, Option<FailReason>)>,
    synced: Option<(u64, u64)>,
    result: Option<(u64, Result<(), String>)>,
    refused: Option<RefusalRecord>,
    sync: SyncClaim,
    /// Our group's epoch in the last commit that listed us.
    epoch: u64,
}

impl Memory {
    /// A peer that has registered in `group` with this p2p port and advertised address.
    pub(crate) fn new(group: u32, p2p_port: u16, advertise_ip: Option<IpAddr>) -> Self {
        Self {
            group,
            p2p_port,
            advertise_ip,
            ..Self::default()
        }
    }

    pub(crate) fn saw_id(&mut self, id: u64) {
        self.max_seen = self.max_seen.max(id);
    }

    /// A commit; `me_in` when it lists us. A newcomer starts counting joint calls at the
    /// one that admitted it (`call`), which it did not vote in.
    pub(crate) fn committed(&mut self, me_in: bool, call: u64, epochs: &[(u32, u64)]) {
        for (_, e) in epochs {
            self.saw_id(*e);
        }
        if me_in && !self.accepted {
            self.accepted = true;
            self.call = self.call.max(call);
        }
        if me_in && let Some((_, e)) = epochs.iter().find(|(g, _)| *g == self.group) {
            self.epoch = *e;
        }
    }

    pub(crate) fn answered(&mut self, call: u64, answer: Answer) {
        self.call = call;
        self.answer = Some(answer);
        self.vote = None;
    }

    pub(crate) fn op_done(&mut self, key: OpKey, failure: Option<FailReason>) {
        self.done.insert(key.tag, (key, failure));
    }

    pub(crate) fn verdict(&mut self, key: OpKey, failure: Option<FailReason>) {
        if self.done.get(&key.tag).is_some_and(|(k, _)| *k == key) {
            self.done.remove(&key.tag);
        }
        if self.verdicts.len() == REMEMBERED_VERDICTS {
            self.verdicts.pop_front();
        }
        self.verdicts.push_back(OpRecord {
            tag: key.tag,
            epoch: key.epoch,
            seq: key.seq,
            failure,
        });
    }

    pub(crate) fn sync_reported(&mut self, report: &ToMaster) {
        if let ToMaster::SyncReport {
            revision,
            strategy,
            tensors,
        } = report
        {
            self.sync = SyncClaim::Reported {
                revision: *revision,
                strategy: *strategy,
                tensors: tensors.clone(),
            };
        }
    }

    pub(crate) fn sync_planned(&mut self, round: u64, revision: u64) {
        self.sync = SyncClaim::Planned {
            round,
            revision,
            done: None,
        };
    }

    pub(crate) fn sync_done(&mut self, ok: bool) {
        if let SyncClaim::Planned { done, .. } = &mut self.sync {
            *done = Some(ok);
        }
    }

    pub(crate) fn sync_ended(&mut self, round: u64, result: Result<(), String>) {
        if let (Ok(()), SyncClaim::Planned { revision, .. }) = (&result, &self.sync) {
            self.synced = Some((round, *revision));
        }
        self.result = Some((round, result));
        self.sync = SyncClaim::Idle;
    }

    /// Sync `round` refused this peer. The epoch it arrived in names the membership of
    /// that election: a restarted master gives the refusal again to a member of the same
    /// epoch that lost it (docs/ARCHITECTURE.md §14).
    pub(crate) fn sync_refused(&mut self, round: u64, kind: SyncRefusal, reason: &str) {
        self.refused = Some(RefusalRecord {
            round,
            epoch: self.epoch,
            kind,
            reason: reason.to_string(),
        });
        self.sync = SyncClaim::Idle;
    }

    /// The re-registration: everything above, the topology we run on and our ops in flight.
    pub(crate) fn rejoin(&self, registry: &Registry) -> Rejoin {
        self.claim(registry.in_flight(), &registry.topology())
    }

    /// The re-registration of a peer running ops `in_flight` on `topology` (its last
    /// commit). Apart from [`rejoin`](Self::rejoin) so that the master's simulator builds
    /// its peers' claims with this very code (`master/tests/crash.rs`).
    pub(crate) fn claim(&self, in_flight: Vec<OpKey>, topology: &Topology) -> Rejoin {
        let ops = in_flight
            .into_iter()
            .map(|k| OpClaim {
                tag: k.tag,
                epoch: k.epoch,
                seq: k.seq,
                done: self
                    .done
                    .get(&k.tag)
                    .filter(|(d, _)| *d == k)
                    .map(|(_, f)| *f),
            })
            .collect();
        let topology = if self.accepted {
            topology.clone()
        } else {
            Default::default()
        };
        Rejoin {
            group: self.group,
            p2p_port: self.p2p_port,
            advertise_ip: self.advertise_ip,
            accepted: self.accepted,
            topology,
            max_seen: self.max_seen,
            call: self.call,
            answer: self.answer.clone(),
            vote: self.vote,
            verdicts: self.verdicts.iter().copied().collect(),
            ops,
            synced: self.synced,
            result: self.result.clone(),
            refused: self.refused.clone(),
            sync: self.sync.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_is_bounded_and_jittered() {
        for attempt in 0..40 {
            let d = retry_delay(attempt);
            assert!(d <= MAX_RETRY, "attempt {attempt}: {d:?}");
            assert!(d >= FIRST_RETRY / 2, "attempt {attempt}: {d:?}");
        }
        let late: Vec<Duration> = (0..32).map(|_| retry_delay(10)).collect();
        assert!(late.iter().any(|d| *d != late[0]), "no jitter: {late:?}");
    }

    #[test]
    fn verdicts_are_remembered_within_a_bound() {
        let mut m = Memory::default();
        for seq in 0..(REMEMBERED_VERDICTS as u32 + 10) {
            m.verdict(
                OpKey {
                    tag: 1,
                    epoch: 1,
                    seq,
                },
                None,
            );
        }
        let r = m.rejoin(&Registry::new(0, 1 << 20));
        assert_eq!(r.verdicts.len(), REMEMBERED_VERDICTS);
        assert_eq!(
            r.verdicts.last().map(|v| v.seq),
            Some(REMEMBERED_VERDICTS as u32 + 9)
        );
    }
}
