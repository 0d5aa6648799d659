//! The simulated peer's shared state and its syncs, following `shared_state::sync`: a
//! peer reports its revision and the hash of its one tensor; a holder (empty fetch list)
//! is done at once and serves; a receiver fetches from the first holder in its list that
//! serves this round (waiting while that holder has no plan yet) and reports whether it
//! got a verified copy; the state changes only on the master's `Ok`, to the plan's
//! revision and the copy (holders keep theirs). A failed sync leaves the state as it was.
//!
//! Between syncs a peer "trains": the content it presents for the next revision is a
//! fixed function of its state, so peers in step present the same content; now and then
//! one diverges, and the election must bring it back.
//!
//! Checked here: no revision goes backwards on any peer; every participant of a round
//! gets the same result and, on success, the same revision and content (`Sim::rounds`);
//! honest peers are never refused for their revision or layout.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::Res;
use super::sim::Sim;
use crate::types::{DataType, PeerId, SyncStrategy};
use crate::wire::{Fetch, SyncRefusal, TensorReport, ToMaster};

/// The one tensor of every peer's shared state.
const TENSOR: &str = "w";

/// A peer's shared state and the sync call it is in.
#[derive(Debug)]
pub(super) struct SharedModel {
    /// The revision and content (its tensor's hash) the last successful sync left, or
    /// the peer's own at its start.
    pub(super) revision: u64,
    pub(super) content: u128,
    /// What it trained for the next revision; presented again until a sync succeeds.
    pub(super) trained: Option<(u64, u128)>,
    pub(super) call: Option<SyncCall>,
}

/// Where a peer stands in its sync call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum SyncCall {
    /// Reported; no plan yet.
    Reported { offered: u128 },
    /// The plan of `round` arrived. `fetch`: `None` for a holder, else the holders to
    /// fetch from, in order, with the hash each promises.
    Planned {
        round: u64,
        revision: u64,
        offered: u128,
        fetch: Option<Vec<(PeerId, u128)>>,
        done: Option<bool>,
        fetched: Option<u128>,
    },
}

impl SharedModel {
    /// A newcomer's state: revision 0 and content of its own.
    pub(super) fn fresh(rng: &mut ChaCha8Rng) -> Self {
        Self {
            revision: 0,
            content: rng.r#gen(),
            trained: None,
            call: None,
        }
    }
}

/// One training step: the same state gives the same content on every peer.
fn train(content: u128, revision: u64) -> u128 {
    content.rotate_left(17)
        ^ u128::from(revision).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
}

impl Sim {
    /// Peer `i` calls `sync_shared_state` (its program's next call, `Sim::next_call`).
    pub(super) fn start_sync(&mut self, i: usize) {
        let diverge = self.rng.gen_bool(0.05);
        let receive_only = self.rng.gen_bool(0.1);
        let p = &mut self.peers[i];
        if p.shared.call.is_some() || !p.accepted {
            return;
        }
        let s = &mut p.shared;
        let (revision, offered) = *s.trained.get_or_insert_with(|| {
            let r = s.revision + 1;
            let c = train(s.content, r);
            (r, if diverge { c ^ 1 } else { c })
        });
        // Only a peer that never synced may be receive-only: it has nothing to offer.
        let strategy = if receive_only && s.revision == 0 {
            SyncStrategy::ReceiveOnly
        } else {
            SyncStrategy::EnforcePopular
        };
        s.call = Some(SyncCall::Reported { offered });
        let tensors = vec![TensorReport {
            name: TENSOR.into(),
            dtype: DataType::F32,
            count: 4,
            hash: offered,
            allow_content_inequality: false,
        }];
        self.send_to_master(
            i,
            ToMaster::SyncReport {
                revision,
                strategy,
                tensors,
            },
        );
    }

    pub(super) fn on_sync_plan(
        &mut self,
        i: usize,
        round: u64,
        revision: u64,
        fetch: Vec<Fetch>,
    ) -> Res {
        let p = &mut self.peers[i];
        p.memory.saw_id(round);
        p.memory.sync_planned(round, revision);
        let Some(SyncCall::Reported { offered }) = p.shared.call else {
            return Err(format!(
                "peer {i} got the plan of sync round {round} in state {:?}",
                p.shared.call
            ));
        };
        let holder = fetch.is_empty();
        p.shared.call = Some(SyncCall::Planned {
            round,
            revision,
            offered,
            fetch: fetch.first().map(|f| f.sources.clone()),
            done: holder.then_some(true),
            fetched: None,
        });
        if holder {
            self.send_to_master(i, ToMaster::SyncDone { ok: true });
        }
        Ok(())
    }

    /// Peer `i` fetches what its plan lists, if it has a plan and has not yet. Returns
    /// whether it did (it waits while its designated holder has no plan yet).
    pub(super) fn fetch(&mut self, i: usize) -> bool {
        let Some(SyncCall::Planned {
            round,
            fetch: Some(sources),
            done: None,
            ..
        }) = &self.peers[i].shared.call
        else {
            return false;
        };
        let round = *round;
        // Now and then every transfer fails (a link drops, a copy fails its hash).
        let broken = self.rng.gen_bool(0.1);
        let mut got = None;
        for (h, hash) in sources {
            let Some(q) = self.peers.iter().find(|q| q.id == *h) else {
                continue;
            };
            if !q.life.runs() {
                continue; // dead or partitioned: try the next holder
            }
            match &q.shared.call {
                // The copy is verified against the hash the plan promised.
                Some(SyncCall::Planned {
                    round: r,
                    offered,
                    fetch: None,
                    ..
                }) if *r == round && offered == hash => {
                    got = Some(*offered);
                    break;
                }
                // Its plan is on its way: the request waits for it.
                Some(SyncCall::Reported { .. }) => return false,
                _ => {}
            }
        }
        if broken {
            got = None;
        }
        if let Some(SyncCall::Planned { done, fetched, .. }) = &mut self.peers[i].shared.call {
            *done = Some(got.is_some());
            *fetched = got;
        }
        self.send_to_master(i, ToMaster::SyncDone { ok: got.is_some() });
        true
    }

    pub(super) fn on_sync_result(
        &mut self,
        i: usize,
        round: u64,
        result: Result<(), String>,
    ) -> Res {
        let group = self.peers[i].group;
        self.peers[i].memory.sync_ended(round, result.clone());
        let p = &mut self.peers[i];
        let mut stale_done = false;
        let state = match (p.shared.call.take(), &result) {
            (
                Some(SyncCall::Planned {
                    round: r,
                    revision,
                    offered,
                    fetch,
                    fetched,
                    ..
                }),
                Ok(()),
            ) if r == round => {
                let content = match fetch {
                    None => offered,
                    Some(_) => fetched.ok_or_else(|| {
                        format!("peer {i}: sync round {round} succeeded without its fetch")
                    })?,
                };
                ensure!(
                    revision >= p.shared.revision,
                    "peer {i}: sync round {round} took its revision back from {} to {revision}",
                    p.shared.revision
                );
                p.shared.revision = revision;
                p.shared.content = content;
                p.shared.trained = None;
                p.pos += 1;
                self.stats.syncs_ok += 1;
                Some((revision, content))
            }
            (Some(SyncCall::Planned { round: r, done, .. }), Err(_)) if r == round => {
                self.stats.syncs_failed += 1;
                // A restarted master failed the sync while this receiver was fetching:
                // the real peer's fetch runs to its end regardless and then sends its
                // `SyncDone` (`shared_state::sync`), stale by then.
                stale_done = done.is_none();
                None
            }
            // A restarted master failed a sync whose plan never reached this peer.
            (Some(SyncCall::Reported { .. }), Err(_)) => {
                self.stats.syncs_failed += 1;
                None
            }
            (call, _) => {
                return Err(format!(
                    "peer {i} got result {result:?} of sync round {round} in state {call:?}"
                ));
            }
        };
        if stale_done {
            self.send_to_master(i, ToMaster::SyncDone { ok: false });
        }
        let alive = self.alive();
        self.rounds
            .record(round, (group, state), i, "sync round", alive)
    }

    pub(super) fn on_sync_refused(
        &mut self,
        i: usize,
        round: u64,
        kind: SyncRefusal,
        reason: &str,
    ) -> Res {
        let p = &mut self.peers[i];
        p.memory.sync_refused(round, kind, reason);
        ensure!(
            matches!(p.shared.call.take(), Some(SyncCall::Reported { .. })),
            "peer {i} got a sync refusal without a report"
        );
        // Refused alike everywhere: the program goes on (a failed sync is retried).
        p.pos += 1;
        // Honest peers present the next revision and one layout: only a group with no
        // offering peer (all receive-only) is refused. An adversary the master accepted
        // (one that registered first, into an empty run) is a member like any other, and
        // its report of another layout refuses the sync for everyone, as a member with a
        // bug would: the master cannot tell which layout is the right one.
        let adversary_member = self.peers.iter().any(|q| q.hostile && q.admitted);
        ensure!(
            kind == SyncRefusal::NoSharedState
                || (kind == SyncRefusal::InvalidUsage && adversary_member),
            "honest peer {i} refused its sync: {reason}"
        );
        self.stats.syncs_refused += 1;
        Ok(())
    }
}
