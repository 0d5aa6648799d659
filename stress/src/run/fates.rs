//! What the harness does to its peers and what it expects of them: the schedule's actions
//! (kill -9, SIGSTOP/SIGCONT, SIGTERM, resets, partitions) applied to a peer, and the
//! classification of every exit against the fate those actions gave the peer.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Harness;
use crate::procs::{Proc, describe};
use crate::scenario::Action;

#[derive(Debug, PartialEq)]
pub(super) enum Fate {
    Running,
    /// Killed with -9 by the schedule.
    Killed,
    /// Frozen or partitioned past the heartbeat timeout: must be removed and exit, unless
    /// `may_stay`: the master was killed during the freeze or shortly before it, so no
    /// master may have watched the whole silence, and a new master rightly takes the peer
    /// back when it returns within the recovery window (ARCHITECTURE.md §14). One kept
    /// 30 s past its thaw is then killed (see `reap`).
    Evicting {
        thaw: Instant,
        may_stay: bool,
    },
    /// Sent SIGTERM: must close and exit 0.
    Leaving {
        since: Instant,
    },
    Gone,
}

#[derive(Debug)]
pub(super) struct Peer {
    pub(super) proc: Proc,
    pub(super) seat: Option<usize>,
    pub(super) fate: Fate,
    pub(super) joined: bool,
    pub(super) started: Instant,
    pub(super) frozen_until: Option<Instant>,
    pub(super) healed_at: Option<Instant>,
    pub(super) gone_at: Option<Instant>,
    pub(super) err_path: PathBuf,
}

impl Harness {
    /// Applies one schedule action to its peer. An action the harness could not carry out
    /// is not counted as done (that would make the run look more abusive than it was): it is
    /// a violation of its own.
    pub(super) fn act(&mut self, a: &Action) {
        if let Err(e) = self.try_act(a) {
            self.checker.violation(e);
        }
    }

    fn try_act(&mut self, a: &Action) -> Result<(), String> {
        let mut slot = match a {
            Action::Join(s) | Action::Kill(s) | Action::Leave(s) | Action::Reset(s) => *s,
            Action::Freeze { slot, .. } | Action::Partition { slot, .. } => *slot,
        };
        // Master outages delay admissions past the model's 2 s, so the run can drift from
        // the schedule's model: disruptions aimed at slots that never started (their joins
        // wait for a place) would be skipped while the processes the model counts as gone
        // hold those places, and the churn would stop for good. With `master_restarts`, a
        // disruption aimed at a slot not running goes to the newest running, accepted,
        // unfrozen peer instead (counted as retargeted), which frees a place again.
        let eligible = |p: &Peer| p.fate == Fate::Running && p.joined && p.frozen_until.is_none();
        if self.scenario.master_restarts.is_some()
            && !matches!(a, Action::Join(_))
            && !self.peers.get(&slot).is_some_and(eligible)
            && let Some((s, _)) = self.peers.iter().rev().find(|(_, p)| eligible(p))
        {
            slot = *s;
            self.counts.events_retargeted += 1;
        }
        // The schedule's model counts a newcomer as a member 2 s after its start; one that
        // takes longer to be accepted (turned away while a stranger holds its successor's
        // pending slots) is not one yet. So a disruption is also checked against the peers
        // actually accepted, running and unfrozen: it must leave `min_peers` of them, or
        // the run could lose every member and restart from step 0.
        if !matches!(a, Action::Join(_)) {
            let others = self
                .peers
                .iter()
                .filter(|(s, p)| {
                    **s != slot && p.fate == Fate::Running && p.joined && p.frozen_until.is_none()
                })
                .count();
            if others < self.scenario.min_peers {
                self.counts.events_skipped += 1;
                return Ok(());
            }
        }
        let seat = self.peers.get(&slot).and_then(|p| p.seat);
        let now = Instant::now();
        let may_stay = self.master_outage_near(now);
        let Some(p) = self
            .peers
            .get_mut(&slot)
            .filter(|p| p.fate == Fate::Running)
        else {
            self.counts.events_skipped += 1;
            return Ok(());
        };
        let send = |p: &Peer, sig: i32, name: &str| match p.proc.signal(sig) {
            true => Ok(()),
            false => Err(format!("slot {slot}: sending {name} failed")),
        };
        match a {
            Action::Join(_) => {}
            Action::Kill(_) => {
                send(p, libc::SIGKILL, "SIGKILL")?;
                p.fate = Fate::Killed;
                self.counts.kills += 1;
            }
            Action::Freeze { ms, long, .. } => {
                let until = now + Duration::from_millis(*ms);
                if p.frozen_until.is_some() {
                    self.counts.events_skipped += 1;
                    return Ok(());
                }
                send(p, libc::SIGSTOP, "SIGSTOP")?;
                p.frozen_until = Some(until);
                if *long {
                    p.fate = Fate::Evicting {
                        thaw: until,
                        may_stay,
                    };
                    self.counts.freezes_long += 1;
                } else {
                    self.counts.freezes_short += 1;
                }
            }
            Action::Leave(_) => {
                send(p, libc::SIGTERM, "SIGTERM")?;
                p.fate = Fate::Leaving { since: now };
            }
            Action::Reset(_) => {
                if let (Some(w), Some(s)) = (&self.wan, seat) {
                    w.reset(s)
                        .map_err(|e| format!("reset of slot {slot}: {e:#}"))?;
                    self.counts.resets += 1;
                }
            }
            Action::Partition { ms, long, .. } => {
                if let (Some(w), Some(s)) = (&self.wan, seat) {
                    let until = now + Duration::from_millis(*ms);
                    // Heal at `until` even if only some rules went in (`partition` tries all).
                    p.healed_at = Some(until);
                    w.partition(s, true)
                        .map_err(|e| format!("partition of slot {slot}: {e:#}"))?;
                    if *long {
                        p.fate = Fate::Evicting {
                            thaw: until,
                            may_stay,
                        };
                        self.counts.partitions_long += 1;
                    } else {
                        self.counts.partitions_short += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// SIGCONT for freezes that are over, heal partitions that are over.
    pub(super) fn thaw(&mut self, now: Instant) {
        let mut bad = Vec::new();
        for p in self.peers.values_mut() {
            // A SIGCONT to a process that is gone fails harmlessly; one that is alive and
            // stays stopped is caught by the eviction/progress checks.
            if p.frozen_until.is_some_and(|t| t <= now) {
                p.frozen_until = None;
                p.proc.signal(libc::SIGCONT);
            }
            if p.healed_at.is_some_and(|t| t <= now) {
                p.healed_at = None;
                let healed = match (&self.wan, p.seat) {
                    (Some(w), Some(s)) => w.partition(s, false).map_err(|e| (s, e)),
                    _ => Ok(()),
                };
                if let Err((s, e)) = healed {
                    bad.push(format!("healing the partition of seat {s}: {e:#}"));
                }
            }
        }
        for b in bad {
            self.checker.violation(b);
        }
    }

    /// Classifies every child that has exited; enforces eviction and leave deadlines.
    pub(super) fn reap(&mut self, now: Instant) {
        let mut bad = Vec::new();
        for (slot, p) in &mut self.peers {
            if p.fate == Fate::Gone {
                continue;
            }
            if let Some(st) = p.proc.exited() {
                match p.fate {
                    // Killed by us means ended by SIGKILL: a worker that died on its own
                    // just before the kill landed must not pass as killed.
                    Fate::Killed if st.signal() == Some(libc::SIGKILL) => {}
                    Fate::Evicting { .. } => self.counts.evicted += 1,
                    Fate::Leaving { .. } if st.success() => {}
                    _ => {
                        self.counts.unexpected_exits += 1;
                        bad.push(format!(
                            "slot {slot} exited unexpectedly ({}; joined {}): {}",
                            describe(&st),
                            p.joined,
                            tail(&p.err_path)
                        ));
                    }
                }
                p.fate = Fate::Gone;
                p.gone_at = Some(now);
                continue;
            }
            let limit = match p.fate {
                Fate::Evicting {
                    thaw,
                    may_stay: true,
                } if now > thaw + Duration::from_secs(30) => {
                    // Kept by a new master. The schedule's model counts the peer as gone
                    // since its freeze; left running, it would hold a place the model's
                    // later joins need (they would wait, and disruptions aimed at them be
                    // skipped, for the rest of the run). So it ends here, by SIGKILL.
                    p.proc.kill(Duration::from_secs(5));
                    p.fate = Fate::Killed;
                    self.counts.evictions_excused += 1;
                    None
                }
                Fate::Evicting { thaw, .. } if now > thaw + Duration::from_secs(30) => {
                    Some("was not removed after a freeze/partition past the heartbeat timeout")
                }
                Fate::Leaving { since } if now > since + Duration::from_secs(30) => {
                    Some("did not leave within 30 s of SIGTERM")
                }
                Fate::Killed if p.proc.wait(Duration::from_secs(2)).is_none() => {
                    Some("survived kill -9")
                }
                _ => None,
            };
            if let Some(why) = limit {
                self.counts.unexpected_exits += 1;
                bad.push(format!("slot {slot} {why}: {}", tail(&p.err_path)));
                p.proc.kill(Duration::from_secs(5));
                p.fate = Fate::Gone;
                p.gone_at = Some(now);
            }
        }
        for b in bad {
            self.checker.violation(b);
        }
    }

    /// A violation per worker still running, never accepted, started over `limit` ago: its
    /// admission is stuck (the progress deadline bounds how long a step, and so the next
    /// `update_topology`, may take).
    pub(super) fn never_accepted(&mut self, limit: Duration) {
        let mut bad = Vec::new();
        for (slot, p) in &self.peers {
            if p.fate == Fate::Running && !p.joined && p.started.elapsed() > limit {
                bad.push(format!(
                    "slot {slot} ran {:.0} s without being accepted: {}",
                    p.started.elapsed().as_secs_f64(),
                    tail(&p.err_path)
                ));
            }
        }
        self.counts.joins_never_accepted = bad.len() as u64;
        for b in bad {
            self.checker.violation(b);
        }
    }

    /// Prints where every live worker is blocked (for stalls).
    pub(super) fn dump_stacks(&self) {
        for (slot, p) in &self.peers {
            if p.fate == Fate::Gone {
                continue;
            }
            // Diagnostics for a stall already recorded as a violation: a field the process
            // took with it (it exited meanwhile) prints as `?` and hides nothing.
            let wchan = std::fs::read_to_string(format!("/proc/{}/wchan", p.proc.pid))
                .unwrap_or_else(|_| "?".into());
            let state = std::fs::read_to_string(format!("/proc/{}/stat", p.proc.pid))
                .ok()
                .and_then(|s| {
                    s.split(") ")
                        .nth(1)
                        .map(|r| r.chars().take(1).collect::<String>())
                })
                .unwrap_or_else(|| "?".into());
            eprintln!(
                "slot {slot}: fate {:?} state {state} wchan {wchan}; stderr tail: {}",
                p.fate,
                tail(&p.err_path)
            );
        }
    }
}

/// The last lines of a child's stderr, on one line.
fn tail(path: &Path) -> String {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return format!("(stderr {} unreadable: {e})", path.display()),
    };
    let lines: Vec<&str> = text.lines().rev().take(4).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
