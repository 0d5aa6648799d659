//! Starting the run's processes: the master (in the hub namespace in WAN mode) and one
//! worker per slot, on a free network seat in WAN mode, with the scenario's settings.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rand::Rng;

use super::fates::{Fate, Peer};
use super::{Harness, MASTER_TAG};
use crate::procs::Proc;
use crate::worker;

impl Harness {
    pub(super) fn start_master(&mut self, rx: &mpsc::Receiver<(u32, String)>) -> Result<()> {
        self.spawn_master()?;
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            let Ok((MASTER_TAG, line)) = rx.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            if let Some(a) = line.strip_prefix("MASTER ") {
                self.master_addr = a.trim().parse()?;
                self.master_port = self.master_addr.port();
                println!("master at {}", self.master_addr);
                return Ok(());
            }
        }
        bail!("the master did not start in 20 s")
    }

    /// Starts a master process: on a free port the first time, then on the same address
    /// (a restart; its `MASTER` line then goes through `Harness::line`).
    fn spawn_master(&mut self) -> Result<()> {
        let hb = self.scenario.heartbeat_timeout_ms.to_string();
        let listen = if self.wan.is_some() {
            "0.0.0.0:29500".to_string() // wan::MASTER_PORT
        } else {
            format!("127.0.0.1:{}", self.master_port)
        };
        let mut cmd = match &self.wan {
            Some(w) => w.hub_cmd(&self.exe),
            None => Command::new(&self.exe),
        };
        self.child_env(&mut cmd);
        cmd.args([
            "--master-proc",
            "--listen",
            &listen,
            "--heartbeat-ms",
            &hb,
            "--run-id",
            &self.run_id,
        ]);
        let m = Proc::spawn(
            cmd,
            MASTER_TAG,
            self.lines_tx.clone(),
            &self.dir.join("master.err"),
        )?;
        self.master = Some(m);
        Ok(())
    }

    /// Whether the master is down now or came back less than 10 s ago (its recovery
    /// window, 5 s, plus the heartbeat timeout): a long freeze starting then may be
    /// outlived by the peer (see `Fate::Evicting`).
    pub(super) fn master_outage_near(&self, now: Instant) -> bool {
        self.master_up_at.is_some()
            || self
                .master_restarted_at
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
    }

    /// The `master_restarts` events, called from the main loop: kills the master with
    /// SIGKILL when its time comes, and starts a new one on the same address when the
    /// outage is over. While it is down, `self.master` is `None`.
    pub(super) fn master_restart_tick(&mut self, now: Instant) -> Result<()> {
        let Some(m) = self.scenario.master_restarts.clone() else {
            return Ok(());
        };
        let mut draw =
            |[lo, hi]: [u64; 2]| Duration::from_millis(self.master_rng.gen_range(lo..=hi));
        match self.master_up_at {
            Some(up) if now >= up => {
                self.master_up_at = None;
                self.master_down_at = Some(now + draw(m.interval_ms));
                self.spawn_master()?;
                self.master_restarted_at = Some(now);
                self.counts.master_restarts += 1;
                self.timeline.mark("master_up");
                println!("master restarted on {}", self.master_addr);
            }
            Some(_) => {}
            None => match self.master_down_at {
                None => self.master_down_at = Some(now + draw(m.interval_ms)),
                Some(down) if now >= down => {
                    let outage = draw(m.outage_ms);
                    self.master_up_at = Some(now + outage);
                    if let Some(mut p) = self.master.take() {
                        p.kill(Duration::from_secs(5));
                    }
                    self.timeline.mark("master_down");
                    for p in self.peers.values_mut() {
                        if let Fate::Evicting { may_stay, .. } = &mut p.fate {
                            *may_stay = true;
                        }
                    }
                    println!(
                        "master killed (SIGKILL), down for {} ms",
                        outage.as_millis()
                    );
                }
                Some(_) => {}
            },
        }
        Ok(())
    }

    /// The run-secret environment of a master or worker process: this run's
    /// (`security_env`), never the harness's own.
    fn child_env(&self, cmd: &mut Command) {
        use pccl::secure::{ENCRYPT_VAR, SECRET_FILE_VAR, SECRET_VAR};
        for v in [SECRET_VAR, SECRET_FILE_VAR, ENCRYPT_VAR] {
            cmd.env_remove(v);
        }
        cmd.envs(self.security_env.iter().map(|(k, v)| (k, v)));
    }

    fn worker_args(
        &self,
        slot: u32,
        master: SocketAddr,
        bind: Option<std::net::IpAddr>,
    ) -> Vec<String> {
        let o = &self.scenario.ops;
        worker::Args {
            master: Some(master),
            slot,
            count: o.count,
            concurrent: o.concurrent,
            state_elems: o.state_elems,
            pool: o.pool,
            api: o.api.clone(),
            bind,
            slice_bytes: o.slice_bytes,
            step_pause_ms: o.step_pause_ms,
            pace: self.pace_for(slot),
            quantize: o.quantize,
            run_id: self.run_id.clone(),
        }
        .to_args()
    }

    /// Loopback fallback of a WAN scenario: the slot's region rate as a pacing cap.
    fn pace_for(&self, slot: u32) -> u64 {
        let Some(w) = self.scenario.wan.as_ref().filter(|_| self.wan.is_none()) else {
            return 0;
        };
        let seats: Vec<u64> = w
            .regions
            .iter()
            .flat_map(|r| std::iter::repeat_n(r.rate_mbit, r.seats))
            .collect();
        seats[slot as usize % seats.len()] * 1_000_000 / 8
    }

    /// Starts slot's worker; false when no network seat is free (WAN), so it waits.
    pub(super) fn try_join(&mut self, slot: u32) -> Result<bool> {
        // Disruptions the run skipped (see `fates.rs`) leave processes the schedule's model
        // counts as gone: a join waits for a free place then, as a WAN join waits for a seat.
        let procs = self.peers.values().filter(|p| p.fate != Fate::Gone).count();
        if procs >= self.scenario.max_peers {
            return Ok(false);
        }
        let free = match &self.wan {
            None => None,
            Some(w) => {
                let used: BTreeSet<usize> = self
                    .peers
                    .values()
                    .filter(|p| p.fate != Fate::Gone)
                    .filter_map(|p| p.seat)
                    .collect();
                match (0..w.seats()).find(|s| !used.contains(s)) {
                    Some(s) => Some(s),
                    None => return Ok(false),
                }
            }
        };
        debug_assert!(self.wan.is_none() || free.is_some());
        self.spawn(slot)?;
        self.counts.joins += 1;
        Ok(true)
    }

    pub(super) fn spawn(&mut self, slot: u32) -> Result<()> {
        let seat = self.wan.as_ref().and_then(|w| {
            let used: BTreeSet<usize> = self
                .peers
                .values()
                .filter(|p| p.fate != Fate::Gone)
                .filter_map(|p| p.seat)
                .collect();
            (0..w.seats()).find(|s| !used.contains(s))
        });
        let (mut cmd, master, bind) = match (&self.wan, seat) {
            (Some(w), Some(s)) => (
                w.seat_cmd(s, &self.exe),
                SocketAddr::new(w.gateway(s), self.master_port),
                Some(w.addr(s)),
            ),
            (Some(_), None) => bail!("no free network seat for slot {slot}"),
            _ => (Command::new(&self.exe), self.master_addr, None),
        };
        self.child_env(&mut cmd);
        cmd.args(self.worker_args(slot, master, bind));
        let err_path = self.dir.join(format!("slot-{slot}.err"));
        let proc = Proc::spawn(cmd, slot, self.lines_tx.clone(), &err_path)?;
        self.peers.insert(
            slot,
            Peer {
                proc,
                seat,
                fate: Fate::Running,
                joined: false,
                started: Instant::now(),
                frozen_until: None,
                healed_at: None,
                gone_at: None,
                err_path,
            },
        );
        Ok(())
    }
}
