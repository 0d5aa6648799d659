//! Seeded random shared-state syncs through the master's state machine, checking the
//! plans it sends: every source of every fetch is a holder that got a plan (never a
//! refused peer), holders' serve lists are exactly the inverse of the receivers' fetch
//! lists, and a layout conflict refuses every peer of the sync with the same error.
//!
//! Replay: the test prints `sync plans seed = N`; `PCCL_SEED=N` replays it.

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Res;
use super::harness::Harness;
use crate::master::state::ConnId;
use crate::types::{DataType, PeerId, SyncStrategy};
use crate::wire::{FromMaster, TensorReport, ToMaster};

const RUNS: u64 = 400;

/// What one peer reported and what the master answered it.
struct Round {
    reports: BTreeMap<ConnId, (u64, Vec<TensorReport>)>,
    answers: BTreeMap<ConnId, FromMaster>,
}

/// A random report: one of two layouts (mostly the first), hashes from a small set so
/// that peers agree often, any strategy.
fn report(rng: &mut ChaCha8Rng, revision: u64) -> (ToMaster, Vec<TensorReport>) {
    let odd_layout = rng.gen_ratio(1, 6);
    let mut tensors = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        tensors.push(TensorReport {
            name: (*name).into(),
            dtype: DataType::F32,
            count: 4 + i as u64,
            hash: rng.gen_range(1..=3),
            allow_content_inequality: false,
        });
    }
    tensors.push(TensorReport {
        name: if odd_layout { "rng_b" } else { "rng_a" }.into(),
        dtype: DataType::U64,
        count: 2,
        hash: rng.r#gen(),
        allow_content_inequality: true,
    });
    // Report order need not be the same on every peer.
    if rng.gen_bool(0.5) {
        tensors.reverse();
    }
    let strategy = SyncStrategy::from_u8(rng.gen_range(0..3)).unwrap_or_default();
    let msg = ToMaster::SyncReport {
        revision,
        strategy,
        tensors: tensors.clone(),
    };
    (msg, tensors)
}

/// Every peer of `conns` reports; returns the reports and each peer's one answer.
fn round(
    h: &mut Harness,
    rng: &mut ChaCha8Rng,
    conns: &[ConnId],
    last: u64,
) -> Result<Round, String> {
    let mut reports = BTreeMap::new();
    for &c in conns {
        // Mostly the next revision; sometimes one that breaks the revision rule.
        let revision = if rng.gen_ratio(1, 8) {
            last + 5
        } else {
            last + 1
        };
        let (msg, tensors) = report(rng, revision);
        h.msg(c, msg);
        reports.insert(c, (revision, tensors));
    }
    let mut answers = BTreeMap::new();
    for &c in conns {
        let msgs: Vec<FromMaster> = h
            .take_quiet(c)
            .into_iter()
            .filter(|m| {
                matches!(
                    m,
                    FromMaster::SyncPlan { .. } | FromMaster::SyncRefused { .. }
                )
            })
            .collect();
        ensure!(
            msgs.len() == 1,
            "conn {c} got {} answers: {msgs:?}",
            msgs.len()
        );
        answers.insert(
            c,
            msgs.into_iter().next().unwrap_or(FromMaster::HeartbeatAck),
        );
    }
    Ok(Round { reports, answers })
}

fn layout(t: &[TensorReport]) -> Vec<(String, u8, u64, bool)> {
    let mut l: Vec<_> = t
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.dtype as u8,
                t.count,
                t.allow_content_inequality,
            )
        })
        .collect();
    l.sort();
    l
}

/// What a round exercised: a layout conflict, and how many (holder, receiver, tensor)
/// permissions were handed out.
#[derive(Default)]
struct Seen {
    conflicts: usize,
    permits: usize,
}

/// The checks on one round's answers.
fn check(h: &Harness, r: &Round, seen: &mut Seen) -> Res {
    let conn_of: BTreeMap<PeerId, ConnId> = h.ids.iter().map(|(c, p)| (*p, *c)).collect();
    let refused_by_revision: BTreeSet<ConnId> = r
        .answers
        .iter()
        .filter(|(_, a)| matches!(a, FromMaster::SyncRefused { reason, .. } if reason.contains("took part in the last sync")))
        .map(|(c, _)| *c)
        .collect();
    let valid: Vec<ConnId> = r
        .answers
        .keys()
        .filter(|c| !refused_by_revision.contains(c))
        .copied()
        .collect();
    let layouts: BTreeSet<_> = valid.iter().map(|c| layout(&r.reports[c].1)).collect();
    if layouts.len() > 1 {
        // The layout rule: one identical refusal for every peer it judged.
        let first = &r.answers[&valid[0]];
        ensure!(
            matches!(first, FromMaster::SyncRefused { reason, .. } if reason.contains("layouts")),
            "layouts conflict but conn {} got {first:?}",
            valid[0]
        );
        for c in &valid {
            ensure!(
                r.answers[c] == *first,
                "conn {c} got {:?}, conn {} got {first:?}",
                r.answers[c],
                valid[0]
            );
        }
        seen.conflicts += 1;
        return Ok(());
    }
    let mut revisions = BTreeSet::new();
    let mut holders = BTreeSet::new();
    let mut served: BTreeSet<(ConnId, ConnId, u32)> = BTreeSet::new();
    for (c, a) in &r.answers {
        if let FromMaster::SyncRefused { reason, .. } = a {
            ensure!(
                !reason.contains("layouts"),
                "conn {c} refused for layouts that agree: {reason}"
            );
        }
        let FromMaster::SyncPlan {
            revision,
            fetch,
            serve,
            ..
        } = a
        else {
            continue;
        };
        revisions.insert(*revision);
        if fetch.is_empty() {
            holders.insert(*c);
        } else {
            ensure!(serve.is_empty(), "receiver {c} was told to serve {serve:?}");
        }
        for s in serve {
            let Some(&rc) = conn_of.get(&s.peer) else {
                return Err(format!("holder {c} told to serve unknown peer {}", s.peer));
            };
            for &i in &s.tensors {
                served.insert((*c, rc, i));
            }
        }
    }
    ensure!(
        revisions.len() <= 1,
        "plans with different revisions: {revisions:?}"
    );
    // What the receivers' fetch lists imply: each source serves each of its receivers
    // the tensor, at its index in the source's own report.
    let mut fetched: BTreeSet<(ConnId, ConnId, u32)> = BTreeSet::new();
    for (c, a) in &r.answers {
        let FromMaster::SyncPlan { fetch, .. } = a else {
            continue;
        };
        for f in fetch {
            ensure!(
                !f.sources.is_empty(),
                "conn {c} fetches {} from nobody",
                f.name
            );
            for (src, _) in &f.sources {
                let Some(&sc) = conn_of.get(src) else {
                    return Err(format!("conn {c} fetches from unknown peer {src}"));
                };
                ensure!(
                    holders.contains(&sc),
                    "conn {c} fetches {} from conn {sc}, which got {:?}",
                    f.name,
                    r.answers[&sc]
                );
                let Some(i) = r.reports[&sc].1.iter().position(|t| t.name == f.name) else {
                    return Err(format!("source {sc} lacks {}", f.name));
                };
                fetched.insert((sc, *c, i as u32));
            }
        }
    }
    ensure!(
        served == fetched,
        "serve lists differ from the fetch lists: served but not fetched {:?}, fetched but not served {:?}",
        served.difference(&fetched).collect::<Vec<_>>(),
        fetched.difference(&served).collect::<Vec<_>>()
    );
    seen.permits += served.len();
    Ok(())
}

/// One run: 2..7 peers, two sync rounds (the second against the first's history).
fn run_once(seed: u64, seen: &mut Seen) -> Res {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = rng.gen_range(2..=7);
    let mut h = Harness::new().accepted(n);
    let conns: Vec<ConnId> = (0..n).collect();
    let mut last = 0;
    for _ in 0..2 {
        let r = round(&mut h, &mut rng, &conns, last)?;
        check(&h, &r, seen)?;
        for (c, a) in &r.answers {
            if let FromMaster::SyncPlan { revision, .. } = a {
                last = *revision;
                h.msg(*c, ToMaster::SyncDone { ok: true });
            }
        }
        for c in &conns {
            h.take_quiet(*c);
        }
    }
    Ok(())
}

#[test]
fn plans_to_holders_are_the_inverse_of_receivers_fetch_lists() {
    let seed = std::env::var("PCCL_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("sync plans seed = {seed}");
    let mut seen = Seen::default();
    for run in 0..RUNS {
        let s = seed.wrapping_add(run);
        if let Err(e) = run_once(s, &mut seen) {
            panic!("run seed {s} (PCCL_SEED={s}): {e}");
        }
    }
    eprintln!(
        "{} layout conflicts, {} serve permissions checked",
        seen.conflicts, seen.permits
    );
    assert!(
        seen.conflicts > 0 && seen.permits > 0,
        "the runs missed a case"
    );
}
