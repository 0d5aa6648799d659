//! Shared-state election (docs/ARCHITECTURE.md §6), as a pure function of the group's reports and its
//! sync history, in six steps: the revision rule, the layout rule, the vote, each peer's
//! decision, the fetch list with the holder-designation rule, and each holder's serve list
//! (the exact inverse of the fetch lists: a holder serves only the receivers that fetch
//! from it, and only what they fetch from it).
//!
//! The layout rule: every peer that passed the revision rule must present the same layout
//! (tensor names, types, counts and inequality flags). If two differ, the whole group's
//! sync is refused, every such peer with the same error, since no side of a layout conflict
//! can be chosen except by an arbitrary order (docs/ARCHITECTURE.md §6, "Outcomes").
//!
//! The content a peer votes for is its revision plus the (name, type, count, hash) of
//! every tensor that does not allow content inequality. Peers with a valid revision and a
//! strategy other than receive-only vote; the content with most votes wins, ties going to
//! the higher revision, then to the smaller content digest, so every master elects the
//! same. Losers fetch only the tensors whose hash differs; newcomers also fetch the
//! tensors that allow inequality, which nobody else ever receives.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::{PeerId, SyncStrategy};
use crate::wire::{Fetch, Serve, SyncRefusal, TensorReport};

/// One peer's report.
#[derive(Clone, Debug)]
pub(crate) struct Report {
    pub(crate) revision: u64,
    pub(crate) strategy: SyncStrategy,
    pub(crate) tensors: Vec<TensorReport>,
}

/// The group's last successful sync.
#[derive(Clone, Debug, Default)]
pub(crate) struct History {
    pub(crate) members: BTreeSet<PeerId>,
    pub(crate) revision: Option<u64>,
}

/// What the election tells one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Adopt `revision`; fetch these tensors (none for holders); serve these receivers
    /// (holders only).
    Plan {
        revision: u64,
        fetch: Vec<Fetch>,
        serve: Vec<Serve>,
    },
    Refuse(SyncRefusal, String),
}

/// The voting content: revision and the sorted layout-and-hash of voting tensors.
type Content = (u64, Vec<(String, u8, u64, u128)>);

fn content(r: &Report) -> Content {
    let mut t: Vec<_> = r
        .tensors
        .iter()
        .filter(|t| !t.allow_content_inequality)
        .map(|t| (t.name.clone(), t.dtype as u8, t.count, t.hash))
        .collect();
    t.sort();
    (r.revision, t)
}

/// The sorted layout (name, type, count, inequality flag): must match the winner's.
fn layout(r: &Report) -> Vec<(&str, u8, u64, bool)> {
    let mut l: Vec<_> = r
        .tensors
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                t.dtype as u8,
                t.count,
                t.allow_content_inequality,
            )
        })
        .collect();
    l.sort();
    l
}

fn digest(c: &Content) -> u128 {
    let mut buf = Vec::new();
    buf.extend_from_slice(&c.0.to_le_bytes());
    for (name, d, n, h) in &c.1 {
        buf.extend_from_slice(&(name.len() as u64).to_le_bytes());
        buf.extend_from_slice(name.as_bytes());
        buf.push(*d);
        buf.extend_from_slice(&n.to_le_bytes());
        buf.extend_from_slice(&h.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_128(&buf)
}

/// Elects the group's content and decides, for every reporting peer, what it does.
pub(crate) fn elect(
    reports: &BTreeMap<PeerId, Report>,
    history: &History,
) -> BTreeMap<PeerId, Decision> {
    let (valid, mut out) = check_revisions(reports, history);
    if let Some(reason) = check_layouts(reports, &valid) {
        for p in valid {
            out.insert(
                p,
                Decision::Refuse(SyncRefusal::InvalidUsage, reason.clone()),
            );
        }
        return out;
    }
    let Some((winner, holders)) = count_votes(reports, &valid) else {
        for p in valid {
            out.insert(
                p,
                Decision::Refuse(
                    SyncRefusal::NoSharedState,
                    "no peer of the group offers its state (all are receive-only)".into(),
                ),
            );
        }
        return out;
    };
    let model = &reports[&holders[0]];
    for (rank, p) in valid.iter().enumerate() {
        let d = decide(*p, rank, reports, history, model, &winner, &holders);
        out.insert(*p, d);
    }
    assign_serving(&mut out, reports);
    out
}

/// Step 2: the layout rule (see the module docs). `Some(reason)`, the same for every
/// peer, if the valid peers present more than one layout.
fn check_layouts(reports: &BTreeMap<PeerId, Report>, valid: &[PeerId]) -> Option<String> {
    let layouts: BTreeSet<_> = valid.iter().map(|p| layout(&reports[p])).collect();
    (layouts.len() > 1).then(|| {
        format!(
            "the group's peers presented {} different shared-state layouts (tensor names, \
             types, counts or inequality flags); the whole sync is refused and no peer's \
             state or revision changed",
            layouts.len()
        )
    })
}

/// Step 6: each holder's serve list, the inverse of the receivers' fetch lists. A source
/// that did not get a holder's plan itself (refused, or a receiver) is first removed from
/// every fetch list, so a refused peer is never a source; the layout rule makes that
/// impossible today, this keeps it so.
fn assign_serving(out: &mut BTreeMap<PeerId, Decision>, reports: &BTreeMap<PeerId, Report>) {
    let holders: BTreeSet<PeerId> = out
        .iter()
        .filter(|(_, d)| matches!(d, Decision::Plan { fetch, .. } if fetch.is_empty()))
        .map(|(p, _)| *p)
        .collect();
    let mut lists: BTreeMap<PeerId, BTreeMap<PeerId, BTreeSet<u32>>> = BTreeMap::new();
    for (receiver, d) in out.iter_mut() {
        let Decision::Plan { fetch, .. } = d else {
            continue;
        };
        for f in fetch.iter_mut() {
            f.sources.retain(|(h, _)| {
                let index = reports
                    .get(h)
                    .and_then(|r| r.tensors.iter().position(|t| t.name == f.name));
                match (holders.contains(h), index) {
                    (true, Some(i)) => {
                        lists
                            .entry(*h)
                            .or_default()
                            .entry(*receiver)
                            .or_default()
                            .insert(i as u32);
                        true
                    }
                    _ => false,
                }
            });
        }
    }
    for (holder, receivers) in lists {
        if let Some(Decision::Plan { serve, .. }) = out.get_mut(&holder) {
            *serve = receivers
                .into_iter()
                .map(|(peer, tensors)| Serve {
                    peer,
                    tensors: tensors.into_iter().collect(),
                })
                .collect();
        }
    }
}

/// Step 1: the revision rule. A peer that took part in the group's last sync must
/// present the next revision; it is refused otherwise. Returns the valid peers (in id
/// order) and the refusals.
fn check_revisions(
    reports: &BTreeMap<PeerId, Report>,
    history: &History,
) -> (Vec<PeerId>, BTreeMap<PeerId, Decision>) {
    let mut refused = BTreeMap::new();
    let mut valid = Vec::new();
    for (peer, r) in reports {
        let veteran = history.members.contains(peer);
        match history.revision {
            Some(last) if veteran && r.revision != last.wrapping_add(1) => {
                refused.insert(
                    *peer,
                    Decision::Refuse(
                        SyncRefusal::InvalidUsage,
                        format!(
                            "revision {} is invalid: this peer took part in the last sync at revision {last}, so it must present {}",
                            r.revision,
                            last.wrapping_add(1)
                        ),
                    ),
                );
            }
            _ => valid.push(*peer),
        }
    }
    (valid, refused)
}

/// Step 3: the vote. Every valid peer that is not receive-only votes for its content;
/// most votes win, ties going to the higher revision, then to the smaller digest.
/// Returns the winning content and its holders (in id order), or `None` if nobody voted.
fn count_votes(
    reports: &BTreeMap<PeerId, Report>,
    valid: &[PeerId],
) -> Option<(Content, Vec<PeerId>)> {
    let mut votes: BTreeMap<Content, Vec<PeerId>> = BTreeMap::new();
    for p in valid {
        let r = &reports[p];
        if r.strategy != SyncStrategy::ReceiveOnly {
            votes.entry(content(r)).or_default().push(*p);
        }
    }
    votes
        .into_iter()
        .max_by_key(|(c, h)| (h.len(), c.0, std::cmp::Reverse(digest(c))))
}

const LAYOUT_DIFFERS: &str =
    "this peer's shared state has different tensor names, types or counts than the elected one";

/// Step 4: what one valid peer (`rank`-th of the valid peers) does: refused if it is
/// send-only and lost (or, which the layout rule already excludes, its layout differs
/// from the winner's); otherwise a plan to fetch what it lacks.
fn decide(
    peer: PeerId,
    rank: usize,
    reports: &BTreeMap<PeerId, Report>,
    history: &History,
    model: &Report,
    winner: &Content,
    holders: &[PeerId],
) -> Decision {
    let r = &reports[&peer];
    if layout(r) != layout(model) {
        return Decision::Refuse(SyncRefusal::InvalidUsage, LAYOUT_DIFFERS.into());
    }
    if r.strategy == SyncStrategy::SendOnly && content(r) != *winner {
        return Decision::Refuse(
            SyncRefusal::InvalidUsage,
            "send-only peer: its content did not win the election, nothing was overwritten".into(),
        );
    }
    let fetch = if holders.contains(&peer) {
        Vec::new()
    } else {
        let newcomer = !history.members.contains(&peer);
        match fetch_list(r, rank, newcomer, reports, model, holders) {
            Some(f) => f,
            None => return Decision::Refuse(SyncRefusal::InvalidUsage, LAYOUT_DIFFERS.into()),
        }
    };
    Decision::Plan {
        revision: winner.0,
        fetch,
        serve: Vec::new(),
    }
}

/// Step 5: the tensors a non-holder fetches and, for each, the holders to fetch it from
/// in order (see [`source_order`]). Losers fetch the tensors whose hash differs from the
/// model's; newcomers also fetch the tensors that allow inequality. `None` if the model
/// lacks one of the peer's tensors (the layouts were checked equal, so it cannot be).
fn fetch_list(
    r: &Report,
    rank: usize,
    newcomer: bool,
    reports: &BTreeMap<PeerId, Report>,
    model: &Report,
    holders: &[PeerId],
) -> Option<Vec<Fetch>> {
    let mut fetch = Vec::new();
    for (j, t) in r.tensors.iter().enumerate() {
        let want = model.tensors.iter().find(|m| m.name == t.name)?;
        let needed = if t.allow_content_inequality {
            newcomer
        } else {
            t.hash != want.hash
        };
        if !needed {
            continue;
        }
        // Only holders that have the tensor are sources (the layout rule makes that every
        // holder; a hostile report must still not make the master panic).
        let sources: Vec<(PeerId, u128)> = holders
            .iter()
            .filter_map(|h| {
                let ht = reports[h].tensors.iter().find(|x| x.name == t.name)?;
                Some((*h, ht.hash))
            })
            .collect();
        fetch.push(Fetch {
            name: t.name.clone(),
            sources: source_order(&sources, rank, j),
        });
    }
    Some(fetch)
}

/// The holder-designation rule: the order in which a receiver tries the holders of one
/// tensor. Receivers are spread over holders by rotating the holder list (in id order)
/// by the receiver's rank plus the tensor's index; the first is the designated source,
/// the rest are fallbacks.
///
/// `receiver_rank` is the receiver's position, by id, among the group's peers whose
/// report passed the revision rule; `tensor_index` is the tensor's position in the
/// receiver's report.
#[doc(hidden)]
pub fn source_order<T: Clone>(holders: &[T], receiver_rank: usize, tensor_index: usize) -> Vec<T> {
    let mut order = holders.to_vec();
    if !order.is_empty() {
        let by = (receiver_rank + tensor_index) % order.len();
        order.rotate_left(by);
    }
    order
}

/// The holder that `receiver` fetches its `tensor_index`-th tensor from first, by
/// [`source_order`], when every peer in `reporters` (`receiver` among them) passed the
/// revision rule and `holders` hold the elected state. `None` if `receiver` is not
/// among `reporters` or there are no holders.
#[doc(hidden)]
pub fn designated_source(
    reporters: &[PeerId],
    holders: &[PeerId],
    receiver: PeerId,
    tensor_index: usize,
) -> Option<PeerId> {
    let mut reporters = reporters.to_vec();
    reporters.sort();
    let rank = reporters.iter().position(|p| *p == receiver)?;
    let mut holders = holders.to_vec();
    holders.sort();
    source_order(&holders, rank, tensor_index).first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::DataType;

    fn t(name: &str, hash: u128, ineq: bool) -> TensorReport {
        TensorReport {
            name: name.into(),
            dtype: DataType::F32,
            count: 4,
            hash,
            allow_content_inequality: ineq,
        }
    }

    fn rep(revision: u64, strategy: SyncStrategy, tensors: Vec<TensorReport>) -> Report {
        Report {
            revision,
            strategy,
            tensors,
        }
    }

    fn p(i: u8) -> PeerId {
        PeerId([i; 16])
    }

    #[test]
    fn majority_wins_and_losers_fetch_only_what_differs() {
        let e = SyncStrategy::EnforcePopular;
        let reports = BTreeMap::from([
            (p(1), rep(5, e, vec![t("a", 1, false), t("b", 2, false)])),
            (p(2), rep(5, e, vec![t("a", 1, false), t("b", 2, false)])),
            (p(3), rep(5, e, vec![t("a", 1, false), t("b", 9, false)])),
        ]);
        let d = elect(&reports, &History::default());
        // Both holders serve p3 its "b" (index 1 of their reports), nothing else.
        for h in [p(1), p(2)] {
            assert_eq!(
                d[&h],
                Decision::Plan {
                    revision: 5,
                    fetch: vec![],
                    serve: vec![Serve {
                        peer: p(3),
                        tensors: vec![1]
                    }]
                }
            );
        }
        let Decision::Plan { fetch, .. } = &d[&p(3)] else {
            panic!()
        };
        assert_eq!(fetch.len(), 1);
        assert_eq!(fetch[0].name, "b");
        assert_eq!(fetch[0].sources.len(), 2);
    }

    #[test]
    fn revision_rule_send_only_and_receive_only() {
        let history = History {
            members: BTreeSet::from([p(1), p(2)]),
            revision: Some(7),
        };
        let e = SyncStrategy::EnforcePopular;
        let reports = BTreeMap::from([
            (p(1), rep(8, e, vec![t("a", 1, false)])),
            (p(2), rep(9, e, vec![t("a", 1, false)])),
            (
                p(3),
                rep(100, SyncStrategy::SendOnly, vec![t("a", 5, false)]),
            ),
            (
                p(4),
                rep(0, SyncStrategy::ReceiveOnly, vec![t("a", 6, false)]),
            ),
        ]);
        let d = elect(&reports, &history);
        assert!(matches!(
            d[&p(2)],
            Decision::Refuse(SyncRefusal::InvalidUsage, _)
        ));
        // p1 (8) and p3 (100) have one vote each: the higher revision wins the tie.
        assert!(!matches!(d[&p(1)], Decision::Refuse(..)));
        let serve_p1_p4 = vec![
            Serve {
                peer: p(1),
                tensors: vec![0],
            },
            Serve {
                peer: p(4),
                tensors: vec![0],
            },
        ];
        assert_eq!(
            d[&p(3)],
            Decision::Plan {
                revision: 100,
                fetch: vec![],
                serve: serve_p1_p4
            }
        );
        for r in [p(1), p(4)] {
            let Decision::Plan {
                revision, fetch, ..
            } = &d[&r]
            else {
                panic!()
            };
            assert_eq!((*revision, fetch.len()), (100, 1));
        }
    }

    #[test]
    fn a_receive_only_peer_with_another_layout_refuses_the_whole_group_alike() {
        let e = SyncStrategy::EnforcePopular;
        let reports = BTreeMap::from([
            (p(1), rep(3, e, vec![t("a", 1, false)])),
            (p(2), rep(3, e, vec![t("a", 1, false)])),
            (
                p(3),
                rep(0, SyncStrategy::ReceiveOnly, vec![t("a", 6, true)]),
            ),
        ]);
        let d = elect(&reports, &History::default());
        let first = &d[&p(1)];
        assert!(
            matches!(first, Decision::Refuse(SyncRefusal::InvalidUsage, why) if why.contains("layouts")),
            "{first:?}"
        );
        assert!(d.values().all(|x| x == first), "{d:?}");
    }

    #[test]
    fn nobody_offering_a_state_is_an_error() {
        let reports = BTreeMap::from([(p(1), rep(0, SyncStrategy::ReceiveOnly, vec![]))]);
        let d = elect(&reports, &History::default());
        assert!(matches!(
            d[&p(1)],
            Decision::Refuse(SyncRefusal::NoSharedState, _)
        ));
    }

    #[test]
    fn inequality_tensors_go_only_to_newcomers() {
        let e = SyncStrategy::EnforcePopular;
        let history = History {
            members: BTreeSet::from([p(1), p(2)]),
            revision: Some(1),
        };
        let reports = BTreeMap::from([
            (p(1), rep(2, e, vec![t("w", 1, false), t("rng", 10, true)])),
            (p(2), rep(2, e, vec![t("w", 2, false), t("rng", 20, true)])),
            (p(3), rep(2, e, vec![t("w", 1, false), t("rng", 30, true)])),
            (
                p(4),
                rep(
                    0,
                    SyncStrategy::ReceiveOnly,
                    vec![t("w", 0, false), t("rng", 0, true)],
                ),
            ),
        ]);
        let d = elect(&reports, &history);
        // p1 and p3 agree; p2 is a veteran loser: only "w"; p3 is a newcomer holder: nothing;
        // p4 is a newcomer: both.
        let names = |peer| match &d[&peer] {
            Decision::Plan { fetch, .. } => {
                fetch.iter().map(|f| f.name.clone()).collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(names(p(2)), vec!["w"]);
        assert!(names(p(3)).is_empty());
        assert_eq!(names(p(4)), vec!["w", "rng"]);
    }

    #[test]
    fn holders_with_different_inequality_tensors_refuse_the_whole_group_alike() {
        // p1 and p2 hold the winning "w"; only p1 has "rng" (which allows inequality, so
        // it is no part of the vote). This once panicked the master ("same layout"), then
        // refused p2 while still listing it as a source of "w" for p3. Now nobody is
        // served, everyone gets the same refusal, and nobody is anybody's source.
        let e = SyncStrategy::EnforcePopular;
        let reports = BTreeMap::from([
            (p(1), rep(1, e, vec![t("w", 1, false), t("rng", 10, true)])),
            (p(2), rep(1, e, vec![t("w", 1, false)])),
            (
                p(3),
                rep(
                    0,
                    SyncStrategy::ReceiveOnly,
                    vec![t("w", 0, false), t("rng", 0, true)],
                ),
            ),
        ]);
        let d = elect(&reports, &History::default());
        assert_eq!(d.len(), 3);
        let first = &d[&p(1)];
        assert!(
            matches!(first, Decision::Refuse(SyncRefusal::InvalidUsage, why) if why.contains("2 different")),
            "{first:?}"
        );
        assert!(d.values().all(|x| x == first), "{d:?}");
    }

    #[test]
    fn the_first_source_of_every_fetch_is_the_designated_one() {
        // Three holders, three receivers with two tensors each: every receiver's plan
        // starts each fetch at `designated_source`, and the designations are spread.
        let e = SyncStrategy::EnforcePopular;
        let good = || vec![t("a", 1, false), t("b", 2, false)];
        let mut reports = BTreeMap::new();
        for i in [2, 5, 7] {
            reports.insert(p(i), rep(3, e, good()));
        }
        for i in [1, 4, 9] {
            reports.insert(p(i), rep(3, e, vec![t("a", 8, false), t("b", 9, false)]));
        }
        let d = elect(&reports, &History::default());
        let all: Vec<PeerId> = reports.keys().copied().collect();
        let holders = [p(2), p(5), p(7)];
        let mut used = BTreeSet::new();
        for r in [p(1), p(4), p(9)] {
            let Decision::Plan { fetch, .. } = &d[&r] else {
                panic!("{:?}", d[&r])
            };
            assert_eq!(fetch.len(), 2);
            for (j, f) in fetch.iter().enumerate() {
                let first = f.sources[0].0;
                assert_eq!(Some(first), designated_source(&all, &holders, r, j));
                used.insert(first);
            }
        }
        assert_eq!(used.len(), 3, "receivers are spread over every holder");
    }
}
