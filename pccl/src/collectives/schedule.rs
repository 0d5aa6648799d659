//! The ring schedule, as a pure function of (world size, rank, count, slice size).
//!
//! The buffer is split into one chunk per rank. At global step `g` (0..2n-2) rank `r`
//! sends chunk `(r - g) mod n` and receives chunk `(r - g - 1) mod n`; steps 0..n-1 are the
//! reduce-scatter, after which rank `r` owns the fully reduced chunk `(r + 1) mod n`, and
//! steps n-1..2n-2 are the all-gather. Each chunk is cut into slices of at most
//! `slice_elems` elements; slices move independently, so they pipeline.

use std::ops::Range;

/// One rank's view of the ring schedule of one op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Schedule {
    pub(crate) n: usize,
    pub(crate) rank: usize,
    pub(crate) count: usize,
    pub(crate) slice_elems: usize,
}

/// What a rank does with a slice it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Reduce with the local data and send on.
    ReduceForward,
    /// Reduce with the local data: this is the final value; store it and send it on.
    ReduceFinal,
    /// Store the final value and send it on.
    StoreForward,
    /// Store the final value; the slice has gone round.
    Store,
}

impl Schedule {
    pub(crate) fn new(n: usize, rank: usize, count: usize, slice_elems: usize) -> Self {
        debug_assert!(n >= 1 && rank < n && slice_elems >= 1);
        Self {
            n,
            rank,
            count,
            slice_elems,
        }
    }

    /// Number of global steps.
    pub(crate) fn steps(&self) -> usize {
        2 * (self.n - 1)
    }

    /// Elements of chunk `c`: an even split, the first `count % n` chunks one larger.
    pub(crate) fn chunk(&self, c: usize) -> Range<usize> {
        let base = self.count / self.n;
        let rem = self.count % self.n;
        let start = c * base + c.min(rem);
        start..start + base + usize::from(c < rem)
    }

    pub(crate) fn send_chunk(&self, step: usize) -> usize {
        (self.rank + 2 * self.n - step % self.n) % self.n
    }

    pub(crate) fn recv_chunk(&self, step: usize) -> usize {
        (self.rank + 2 * self.n - step % self.n - 1) % self.n
    }

    /// Slices in chunk `c` (0 for an empty chunk).
    pub(crate) fn slices(&self, c: usize) -> usize {
        self.chunk(c).len().div_ceil(self.slice_elems)
    }

    /// Elements of slice `k` of chunk `c`.
    pub(crate) fn slice(&self, c: usize, k: usize) -> Range<usize> {
        let ch = self.chunk(c);
        let start = ch.start + k * self.slice_elems;
        start..(start + self.slice_elems).min(ch.end)
    }

    /// What to do with a slice received at `step`.
    pub(crate) fn action(&self, step: usize) -> Action {
        let last_rs = self.n - 2;
        match step {
            s if s < last_rs => Action::ReduceForward,
            s if s == last_rs => Action::ReduceFinal,
            s if s + 1 < self.steps() => Action::StoreForward,
            _ => Action::Store,
        }
    }

    /// Frames this rank receives in the whole op.
    pub(crate) fn expected_frames(&self) -> usize {
        (0..self.steps())
            .map(|g| self.slices(self.recv_chunk(g)))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates the schedule with sets of contributions and checks that every rank ends
    /// with every chunk reduced over all ranks exactly once.
    fn simulate(n: usize, count: usize, slice: usize) {
        let scheds: Vec<_> = (0..n).map(|r| Schedule::new(n, r, count, slice)).collect();
        // Per rank, per element: the set of ranks whose data is in the value (bitmask) and
        // whether the value is final.
        let mut held: Vec<Vec<u64>> = (0..n).map(|r| vec![1u64 << r; count]).collect();
        let mut result: Vec<Vec<Option<u64>>> = vec![vec![None; count]; n];
        let all = (1u64 << n) - 1;
        // in_flight[r] = slices rank r sends at the current step, as (range, value mask).
        let mut sends: Vec<Vec<(Range<usize>, Vec<u64>)>> = (0..n)
            .map(|r| {
                let s = &scheds[r];
                let c = s.send_chunk(0);
                (0..s.slices(c))
                    .map(|k| {
                        let rg = s.slice(c, k);
                        (rg.clone(), held[r][rg].to_vec())
                    })
                    .collect()
            })
            .collect();
        for g in 0..scheds[0].steps() {
            let mut next: Vec<Vec<(Range<usize>, Vec<u64>)>> = vec![Vec::new(); n];
            for r in 0..n {
                let to = (r + 1) % n;
                let s = &scheds[to];
                let c = s.recv_chunk(g);
                assert_eq!(c, scheds[r].send_chunk(g), "n={n} g={g}");
                assert_eq!(sends[r].len(), s.slices(c));
                for (rg, vals) in std::mem::take(&mut sends[r]) {
                    let v: Vec<u64> = match s.action(g) {
                        Action::ReduceForward | Action::ReduceFinal => rg
                            .clone()
                            .zip(&vals)
                            .map(|(i, v)| {
                                assert_eq!(v & held[to][i], 0, "reduced twice");
                                v | held[to][i]
                            })
                            .collect(),
                        Action::StoreForward | Action::Store => vals,
                    };
                    if matches!(
                        s.action(g),
                        Action::ReduceFinal | Action::StoreForward | Action::Store
                    ) {
                        for (i, val) in rg.clone().zip(&v) {
                            assert_eq!(*val, all);
                            result[to][i] = Some(*val);
                        }
                    }
                    for (i, val) in rg.clone().zip(&v) {
                        held[to][i] = *val;
                    }
                    if s.action(g) != Action::Store {
                        next[to].push((rg, v));
                    }
                }
            }
            sends = next;
        }
        for (r, res) in result.iter().enumerate() {
            for (i, v) in res.iter().enumerate() {
                assert_eq!(*v, Some(all), "n={n} count={count} rank={r} elem={i}");
            }
            let received: usize = (0..scheds[r].steps())
                .map(|g| scheds[r].slices(scheds[r].recv_chunk(g)))
                .sum();
            assert_eq!(scheds[r].expected_frames(), received);
        }
    }

    #[test]
    fn every_small_case_reduces_each_element_once() {
        for n in 2..=6 {
            for count in [1, 2, 3, 5, 7, 16, 33] {
                for slice in [1, 2, 3, 64] {
                    simulate(n, count, slice);
                }
            }
        }
    }

    #[test]
    fn chunks_partition_the_buffer() {
        for n in 1..=7 {
            for count in 0..40 {
                let s = Schedule::new(n, 0, count, 4);
                let mut next = 0;
                for c in 0..n {
                    assert_eq!(s.chunk(c).start, next);
                    next = s.chunk(c).end;
                }
                assert_eq!(next, count);
            }
        }
    }
}
