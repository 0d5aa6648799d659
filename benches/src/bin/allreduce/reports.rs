//! The workers' report lines, parent side: `T bytes iter nanos`, `CRC bytes crc32`,
//! `CPU bytes nanos` and `RSS bytes kib` (`meter.rs`, `benches/gloo_worker.py`), collected
//! per worker and reduced per size: time = median over iterations of the slowest worker's
//! time, CPU = sum over workers, peak RSS = max over workers, crc32 = every worker's (they
//! must agree).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use benches::{fmt_size, median};

/// One implementation's figures for one world and size.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Measured {
    pub(crate) time: Duration,
    /// The result's crc32 (all-reduces only; every worker's is the same).
    pub(crate) crc: Option<u32>,
    /// User + system CPU time of all workers over the timed iterations.
    pub(crate) cpu: Duration,
    /// Largest peak resident set of one worker while the size ran, in KiB.
    pub(crate) rss_kib: u64,
}

/// Everything the `n` workers of one world reported.
pub(crate) struct Reports {
    n: usize,
    iters: usize,
    times: BTreeMap<usize, Vec<Vec<Option<Duration>>>>,
    crcs: BTreeMap<usize, Vec<Option<u32>>>,
    cpu: BTreeMap<usize, Vec<Option<Duration>>>,
    rss: BTreeMap<usize, Vec<Option<u64>>>,
}

impl Reports {
    pub(crate) fn new(n: usize, iters: usize) -> Self {
        Self {
            n,
            iters,
            times: BTreeMap::new(),
            crcs: BTreeMap::new(),
            cpu: BTreeMap::new(),
            rss: BTreeMap::new(),
        }
    }

    /// Records one line of worker `w`; lines of other kinds are ignored.
    pub(crate) fn line(&mut self, w: usize, line: &str) -> Result<()> {
        let mut p = line.split_whitespace();
        let kind = p.next().unwrap_or("");
        if !matches!(kind, "T" | "CRC" | "CPU" | "RSS") {
            return Ok(());
        }
        let mut field = |radix: u32| -> Result<u64> {
            let f = p.next().ok_or_else(|| anyhow!("short line {line:?}"))?;
            u64::from_str_radix(f, radix).with_context(|| format!("bad line {line:?}"))
        };
        let bytes = field(10)? as usize;
        let n = self.n;
        match kind {
            "T" => {
                let (iter, nanos) = (field(10)? as usize, field(10)?);
                ensure!(iter < self.iters, "iteration {iter} out of range");
                let per = self
                    .times
                    .entry(bytes)
                    .or_insert_with(|| vec![vec![None; self.iters]; n]);
                per[w][iter] = Some(Duration::from_nanos(nanos));
            }
            "CRC" => slot(&mut self.crcs, bytes, n)[w] = Some(field(16)? as u32),
            "CPU" => slot(&mut self.cpu, bytes, n)[w] = Some(Duration::from_nanos(field(10)?)),
            _ => slot(&mut self.rss, bytes, n)[w] = Some(field(10)?),
        }
        Ok(())
    }

    /// Per size of `sizes`: the reduced figures. `parity` demands a crc32 from every worker
    /// and fails unless they are all equal.
    pub(crate) fn summarize(
        &self,
        sizes: &[usize],
        parity: bool,
    ) -> Result<BTreeMap<usize, Measured>> {
        let mut out = BTreeMap::new();
        for &bytes in sizes {
            let size = fmt_size(bytes);
            let per = self
                .times
                .get(&bytes)
                .ok_or_else(|| anyhow!("no timings for {size}"))?;
            let mut worst = Vec::with_capacity(self.iters);
            for k in 0..self.iters {
                let mut m = Duration::ZERO;
                for (w, its) in per.iter().enumerate() {
                    let d = its[k].ok_or_else(|| anyhow!("worker {w} missed iteration {k}"))?;
                    m = m.max(d);
                }
                worst.push(m);
            }
            let cpu = all(&self.cpu, bytes, "CPU")?.into_iter().sum();
            let rss_kib = all(&self.rss, bytes, "RSS")?.into_iter().max().unwrap_or(0);
            let crc = if parity {
                let c = all(&self.crcs, bytes, "CRC")?;
                for (w, &x) in c.iter().enumerate() {
                    ensure!(
                        x == c[0],
                        "PARITY FAILURE: world {}, {size}: worker {w} crc {x:08x} != worker 0 crc {:08x}",
                        self.n,
                        c[0]
                    );
                }
                Some(c[0])
            } else {
                None
            };
            let time = median(&worst).expect("iters >= 1");
            out.insert(
                bytes,
                Measured {
                    time,
                    crc,
                    cpu,
                    rss_kib,
                },
            );
        }
        Ok(out)
    }
}

fn slot<T: Clone>(
    m: &mut BTreeMap<usize, Vec<Option<T>>>,
    bytes: usize,
    n: usize,
) -> &mut [Option<T>] {
    m.entry(bytes).or_insert_with(|| vec![None; n])
}

/// Every worker's value for `bytes`, or which worker did not send its `what` line.
fn all<T: Copy>(m: &BTreeMap<usize, Vec<Option<T>>>, bytes: usize, what: &str) -> Result<Vec<T>> {
    let per = m
        .get(&bytes)
        .ok_or_else(|| anyhow!("no {what} line for {}", fmt_size(bytes)))?;
    per.iter()
        .enumerate()
        .map(|(w, v)| v.ok_or_else(|| anyhow!("worker {w} sent no {what} line")))
        .collect()
}
