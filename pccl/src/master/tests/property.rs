//! The property test: thousands of seeded random runs of the simulator, each checked
//! after every step, then settled and checked quiet.
//!
//! Replay: every run prints `master sim seed = N`; `PCCL_SEED=N` replays the same runs,
//! and a failure message names the seed that replays only the failing run
//! (`PCCL_SEED=M PCCL_SIM_RUNS=1`), with a trace of its last events.

use std::panic::{AssertUnwindSafe, catch_unwind};

use rand::Rng;

use super::Res;
use super::sim::{Sim, Stats};

const RUNS: u64 = 3000;
const STEPS: usize = 300;

/// One random run: 2..8 peers, up to `STEPS` steps with a check after each, then the
/// cluster settles and must have nothing left open.
fn run_once(seed: u64, trace: bool, adversarial: bool) -> (Res, Option<Vec<String>>, Stats) {
    let mut sim = Sim::new(seed, trace);
    sim.adversarial = adversarial;
    let result = catch_unwind(AssertUnwindSafe(|| -> Res {
        let n = sim.rng.gen_range(2..=8);
        for _ in 0..n {
            sim.spawn()?;
        }
        if adversarial {
            for _ in 0..sim.rng.gen_range(1..=2) {
                sim.spawn_hostile()?;
            }
        }
        let steps = sim.rng.gen_range(STEPS / 3..=STEPS);
        for _ in 0..steps {
            sim.stats.steps += 1;
            sim.step()?;
            sim.check()?;
            sim.check_transitions()?;
        }
        sim.quiesce()?;
        sim.check_transitions()
    }));
    let result = result.unwrap_or_else(|e| {
        let what = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(format!("panic (master or simulator): {what}"))
    });
    if let Some(t) = &mut sim.trace {
        // A legend for the trace, which names peers by connection.
        for p in &sim.peers {
            t.push(format!(
                "legend: conn {} = peer {} group {} {:?}{}",
                p.conn,
                p.id,
                p.group,
                p.life,
                if p.accepted { " accepted" } else { "" }
            ));
        }
    }
    (result, sim.trace, sim.stats)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn random_clusters_keep_invariants() {
    run_many(false);
}

/// Honest peers mixed with adversaries that send any well-formed message in any order
/// and state (see `master::drive::message`): the master must not panic, must queue a
/// bounded number of outputs per message, and the honest peers' invariants must hold;
/// once the adversaries have gone the honest cluster settles.
#[test]
fn adversarial_peers_cannot_break_the_master() {
    run_many(true);
}

fn run_many(adversarial: bool) {
    let seed = env_u64("PCCL_SEED").unwrap_or_else(rand::random);
    let runs = env_u64("PCCL_SIM_RUNS").unwrap_or(RUNS);
    eprintln!("master sim seed = {seed} (adversarial: {adversarial})");
    let mut total = Stats::default();
    for run in 0..runs {
        let run_seed = seed.wrapping_add(run);
        let (res, _, s) = run_once(run_seed, false, adversarial);
        total.steps += s.steps;
        total.admitted += s.admitted;
        total.updates_ok += s.updates_ok;
        total.updates_failed += s.updates_failed;
        total.peers_pending_answers += s.peers_pending_answers;
        total.verdicts_ok += s.verdicts_ok;
        total.verdicts_failed += s.verdicts_failed;
        total.timeouts += s.timeouts;
        total.closes += s.closes;
        total.phase_changes += s.phase_changes;
        total.hostile_messages += s.hostile_messages;
        total.hostile_admitted += s.hostile_admitted;
        if let Err(why) = res {
            // Replay the failing run with tracing on: deterministic, so it fails again.
            let (again, trace, _) = run_once(run_seed, true, adversarial);
            let trace = trace.unwrap_or_default();
            let tail = trace[trace.len().saturating_sub(100)..].join("\n");
            panic!(
                "master sim failed (seed {seed}, run {run}): {why}\n\
                 replay: PCCL_SEED={seed}, or this run alone: PCCL_SEED={run_seed} PCCL_SIM_RUNS=1\n\
                 (replay {})\nlast events:\n{tail}",
                if again.is_err() {
                    "fails the same way"
                } else {
                    "did NOT fail: nondeterminism"
                }
            );
        }
    }
    eprintln!("master sim: {runs} runs, {total:?}");
    // Only meaningful over many runs (a single replayed run may exercise little).
    if runs >= 100 {
        let t = total;
        for (what, n) in [
            ("admissions", t.admitted),
            ("successful updates", t.updates_ok),
            ("failed updates", t.updates_failed),
            ("PeersPending answers", t.peers_pending_answers),
            ("success verdicts", t.verdicts_ok),
            ("failure verdicts", t.verdicts_failed),
            ("heartbeat timeouts", t.timeouts),
            ("phase changes", t.phase_changes),
            (
                "adversary messages",
                if adversarial {
                    t.hostile_messages
                } else {
                    runs
                },
            ),
        ] {
            assert!(
                n >= runs / 20,
                "the simulation exercised too few {what}: {t:?}"
            );
        }
    }
}
