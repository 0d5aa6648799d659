//! Shared-state election (DESIGN §6), as a pure function of the group's reports and its
//! sync history.
//!
//! The content a peer votes for is its revision plus the (name, type, count, hash) of
//! every tensor that does not allow content inequality. Peers with a valid revision and a
//! strategy other than receive-only vote; the content with most votes wins, ties going to
//! the higher revision, then to the smaller content digest, so every master elects the
//! same. Losers fetch only the tensors whose hash differs; newcomers also fetch the
//! tensors that allow inequality, which nobody else ever receives.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::{PeerId, SyncStrategy};
use crate::wire::{Fetch, SyncRefusal, TensorReport};

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
    /// Adopt `revision`; fetch these tensors (none for holders).
    Plan {
        revision: u64,
        fetch: Vec<Fetch>,
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
    let mut out = BTreeMap::new();
    let mut valid = Vec::new();
    for (peer, r) in reports {
        let veteran = history.members.contains(peer);
        match history.revision {
            Some(last) if veteran && r.revision != last.wrapping_add(1) => {
                out.insert(
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
    // Count votes per content.
    let mut votes: BTreeMap<Content, Vec<PeerId>> = BTreeMap::new();
    for p in &valid {
        let r = &reports[p];
        if r.strategy != SyncStrategy::ReceiveOnly {
            votes.entry(content(r)).or_default().push(*p);
        }
    }
    let Some((winner, holders)) = votes
        .into_iter()
        .max_by_key(|(c, h)| (h.len(), c.0, std::cmp::Reverse(digest(c))))
    else {
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
    let model_layout = layout(model);
    for (i, p) in valid.iter().enumerate() {
        let r = &reports[p];
        if layout(r) != model_layout {
            out.insert(
                *p,
                Decision::Refuse(
                    SyncRefusal::InvalidUsage,
                    "this peer's shared state has different tensor names, types or counts than the elected one".into(),
                ),
            );
            continue;
        }
        let mine = content(r) == winner;
        if r.strategy == SyncStrategy::SendOnly && !mine {
            out.insert(
                *p,
                Decision::Refuse(
                    SyncRefusal::InvalidUsage,
                    "send-only peer: its content did not win the election, nothing was overwritten"
                        .into(),
                ),
            );
            continue;
        }
        let newcomer = !history.members.contains(p);
        let mut fetch = Vec::new();
        if !holders.contains(p) {
            for (j, t) in r.tensors.iter().enumerate() {
                let want = model
                    .tensors
                    .iter()
                    .find(|m| m.name == t.name)
                    .expect("same layout");
                let needed = if t.allow_content_inequality {
                    newcomer
                } else {
                    t.hash != want.hash
                };
                if !needed {
                    continue;
                }
                // Spread receivers over holders: rotate the list per (receiver, tensor).
                let mut sources: Vec<(PeerId, u128)> = holders
                    .iter()
                    .map(|h| {
                        let ht = reports[h]
                            .tensors
                            .iter()
                            .find(|x| x.name == t.name)
                            .expect("same layout");
                        (*h, ht.hash)
                    })
                    .collect();
                sources.rotate_left((i + j) % holders.len());
                fetch.push(Fetch {
                    name: t.name.clone(),
                    sources,
                });
            }
        }
        out.insert(
            *p,
            Decision::Plan {
                revision: winner.0,
                fetch,
            },
        );
    }
    out
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
        assert_eq!(
            d[&p(1)],
            Decision::Plan {
                revision: 5,
                fetch: vec![]
            }
        );
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
                rep(0, SyncStrategy::ReceiveOnly, vec![t("a", 6, true)]),
            ),
        ]);
        let d = elect(&reports, &history);
        assert!(matches!(
            d[&p(2)],
            Decision::Refuse(SyncRefusal::InvalidUsage, _)
        ));
        // p1 (8) and p3 (100) have one vote each: the higher revision wins the tie.
        assert!(!matches!(d[&p(1)], Decision::Refuse(..)));
        assert_eq!(
            d[&p(3)],
            Decision::Plan {
                revision: 100,
                fetch: vec![]
            }
        );
        let Decision::Plan { revision, fetch } = &d[&p(1)] else {
            panic!()
        };
        assert_eq!((*revision, fetch.len()), (100, 1));
        // The receive-only newcomer's layout differs (its tensor allows inequality).
        assert!(matches!(
            d[&p(4)],
            Decision::Refuse(SyncRefusal::InvalidUsage, _)
        ));
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
}
