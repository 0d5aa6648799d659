//! The ring schedules of the collectives, as pure functions of (kind, world size, rank,
//! count, slice size) (docs/ARCHITECTURE.md §5, §5.1).
//!
//! The op's buffer (`count` elements) is split into one chunk per rank, chunk `c` owned by
//! rank `c`. An all-reduce runs global steps `g` = 0..2n-2: at step `g` rank `r` sends
//! chunk `(r - 1 - g) mod n` and receives chunk `(r - 2 - g) mod n`. Steps 0..n-1 are the
//! reduce-scatter: chunk `c` starts at rank `c + 1`, each following rank reduces its own
//! data into it, and rank `c` receives it last and holds the final value. Steps n-1..2n-2
//! are the all-gather: the owners' final values go round the ring.
//!
//! The other collectives are the halves: a reduce-scatter is global steps 0..n-1, an
//! all-gather global steps n-1..2n-2 (numbered 0..n-1 on the wire) with each rank's input
//! as its owned chunk. So a reduce-scatter gives rank `r` exactly the bits an all-reduce
//! of the same inputs leaves in chunk `r`, and an all-gather moves chunks exactly as the
//! all-reduce's second half does. A broadcast is one chunk (the whole buffer) passed down
//! the ring from the root: the rank `d` hops after the root receives it at step `d - 1`;
//! the last rank also sends slice 0 on to the root (step n-1), so that every rank
//! receives at least one frame and checks a peer's call against its own (a root that
//! received nothing could not tell that another rank broadcasts from another root).
//!
//! Each chunk is cut into slices of at most `slice_elems` elements; slices move
//! independently, so they pipeline.

use std::ops::Range;

use crate::types::Collective;

/// One rank's view of the ring schedule of one op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Schedule {
    pub(crate) kind: Collective,
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
    /// Reduce with the local data: this is the final value; store it (reduce-scatter).
    ReduceKeep,
    /// Store the final value and send it on.
    StoreForward,
    /// Store the final value; the slice has gone round.
    Store,
}

impl Action {
    /// Whether the slice is combined with the local data.
    pub(crate) fn reduces(self) -> bool {
        matches!(
            self,
            Self::ReduceForward | Self::ReduceFinal | Self::ReduceKeep
        )
    }

    /// Whether the slice is a final value after this action (and so is stored).
    pub(crate) fn stores(self) -> bool {
        self != Self::ReduceForward
    }

    /// Whether the slice is sent on.
    pub(crate) fn forwards(self) -> bool {
        matches!(
            self,
            Self::ReduceForward | Self::ReduceFinal | Self::StoreForward
        )
    }
}

impl Schedule {
    pub(crate) fn new(
        kind: Collective,
        n: usize,
        rank: usize,
        count: usize,
        slice_elems: usize,
    ) -> Self {
        debug_assert!(n >= 1 && rank < n && slice_elems >= 1);
        debug_assert!((kind.root() as usize) < n);
        Self {
            kind,
            n,
            rank,
            count,
            slice_elems,
        }
    }

    /// Number of steps.
    pub(crate) fn steps(&self) -> usize {
        match self.kind {
            Collective::AllReduce => 2 * (self.n - 1),
            Collective::Broadcast { .. } => self.n,
            _ => self.n - 1,
        }
    }

    /// The all-reduce step that step `step` of this op is (all-gather steps are its
    /// second half).
    fn global(&self, step: usize) -> usize {
        match self.kind {
            Collective::AllGather => step + self.n - 1,
            _ => step,
        }
    }

    /// Hops from the broadcast root to this rank.
    fn hops_from_root(&self) -> usize {
        (self.rank + self.n - self.kind.root() as usize) % self.n
    }

    /// Elements of chunk `c`: an even split, the first `count % n` chunks one larger (a
    /// broadcast has one chunk, the whole buffer).
    pub(crate) fn chunk(&self, c: usize) -> Range<usize> {
        if matches!(self.kind, Collective::Broadcast { .. }) {
            return 0..self.count;
        }
        let base = self.count / self.n;
        let rem = self.count % self.n;
        let start = c * base + c.min(rem);
        start..start + base + usize::from(c < rem)
    }

    /// The chunk this rank sends from its own input at step 0, if any.
    pub(crate) fn first_chunk(&self) -> Option<usize> {
        match self.kind {
            Collective::Broadcast { .. } => (self.hops_from_root() == 0).then_some(0),
            _ => Some((self.rank + 2 * self.n - 1 - self.global(0) % self.n) % self.n),
        }
    }

    /// The chunk this rank receives at `step`, if it receives one then.
    pub(crate) fn recv_chunk(&self, step: usize) -> Option<usize> {
        if step >= self.steps() {
            return None;
        }
        match self.kind {
            Collective::Broadcast { .. } => {
                ((self.hops_from_root() + self.n - 1) % self.n == step).then_some(0)
            }
            _ => Some((self.rank + 2 * self.n - 2 - self.global(step) % self.n) % self.n),
        }
    }

    /// Slices this rank receives at `step`: every slice of the chunk it receives then,
    /// except at a broadcast root, which gets slice 0 back only.
    pub(crate) fn recv_slices(&self, step: usize) -> usize {
        match self.recv_chunk(step) {
            None => 0,
            Some(_) if self.returns_to_root(step) => self.slices(0).min(1),
            Some(c) => self.slices(c),
        }
    }

    /// Whether `step` is the broadcast's closing hop, last rank to root.
    fn returns_to_root(&self, step: usize) -> bool {
        matches!(self.kind, Collective::Broadcast { .. }) && step == self.n - 1
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

    /// What to do with slice `slice` received at `step`.
    pub(crate) fn action(&self, step: usize, slice: usize) -> Action {
        let last = step + 1 == self.steps();
        match self.kind {
            Collective::AllReduce => {
                let last_rs = self.n - 2;
                match step {
                    s if s < last_rs => Action::ReduceForward,
                    s if s == last_rs => Action::ReduceFinal,
                    _ if !last => Action::StoreForward,
                    _ => Action::Store,
                }
            }
            Collective::ReduceScatter if last => Action::ReduceKeep,
            Collective::ReduceScatter => Action::ReduceForward,
            Collective::AllGather if last => Action::Store,
            Collective::AllGather => Action::StoreForward,
            // The last rank sends only slice 0 on to the root; the root stores it back
            // (the same bits it holds) and the op ends.
            Collective::Broadcast { .. } if last || (step + 2 == self.steps() && slice > 0) => {
                Action::Store
            }
            Collective::Broadcast { .. } => Action::StoreForward,
        }
    }

    /// The step whose frames pace this rank's step-0 sends (docs/ARCHITECTURE.md §5,
    /// "Memory"): the last, whose every slice set out as some rank's step-0 slice. `None`
    /// for a broadcast, a chain with one sender, where nothing comes back to pace by.
    pub(crate) fn pace_step(&self) -> Option<usize> {
        match self.kind {
            Collective::Broadcast { .. } => None,
            _ => Some(self.steps() - 1),
        }
    }

    /// Frames this rank receives in the whole op.
    pub(crate) fn expected_frames(&self) -> usize {
        (0..self.steps()).map(|g| self.recv_slices(g)).sum()
    }

    /// Where this rank's input sits in the op's buffer: all of it, or (all-gather) the
    /// rank's own chunk. Its length is what the send buffer must hold.
    pub(crate) fn input(&self) -> Range<usize> {
        match self.kind {
            Collective::AllGather => self.chunk(self.rank),
            _ => 0..self.count,
        }
    }

    /// Where this rank's result sits in the op's buffer: all of it, or (reduce-scatter)
    /// the rank's own chunk. Its length is what the receive buffer must hold.
    pub(crate) fn output(&self) -> Range<usize> {
        match self.kind {
            Collective::ReduceScatter => self.chunk(self.rank),
            _ => 0..self.count,
        }
    }

    /// The part of this rank's result that is its own input, unchanged: its chunk of an
    /// all-gather, a broadcast root's whole buffer.
    pub(crate) fn kept_input(&self) -> Option<Range<usize>> {
        match self.kind {
            Collective::AllGather => Some(self.chunk(self.rank)),
            Collective::Broadcast { .. } if self.hops_from_root() == 0 => Some(0..self.count),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [Collective; 3] = [
        Collective::AllReduce,
        Collective::ReduceScatter,
        Collective::AllGather,
    ];

    /// A slice in flight: its chunk, its elements, and per element the set of ranks whose
    /// data is in it (a bitmask).
    type Frame = (usize, Range<usize>, Vec<u64>);

    /// Simulates one op with sets of contributions: every rank's input element holds its
    /// own bit, reduce actions join sets (a rank's bit may join a set only once), store
    /// actions record the set as the rank's result. Returns each rank's result.
    fn simulate(kind: Collective, n: usize, count: usize, slice: usize) -> Vec<Vec<Option<u64>>> {
        let scheds: Vec<_> = (0..n)
            .map(|r| Schedule::new(kind, n, r, count, slice))
            .collect();
        let mut result: Vec<Vec<Option<u64>>> = vec![vec![None; count]; n];
        let mut sends: Vec<Vec<Frame>> = vec![Vec::new(); n];
        for (r, s) in scheds.iter().enumerate() {
            if let Some(kept) = s.kept_input() {
                for i in kept {
                    result[r][i] = Some(1 << r);
                }
            }
            if let Some(c) = s.first_chunk() {
                for k in 0..s.slices(c) {
                    let rg = s.slice(c, k);
                    assert!(
                        rg.start >= s.input().start && rg.end <= s.input().end,
                        "{kind:?} n={n}: step 0 reads outside the input"
                    );
                    sends[r].push((c, rg.clone(), vec![1u64 << r; rg.len()]));
                }
            }
        }
        let mut received = vec![0usize; n];
        for g in 0..scheds[0].steps() {
            let mut next: Vec<Vec<Frame>> = vec![Vec::new(); n];
            for (r, sent) in sends.iter_mut().enumerate() {
                let to = (r + 1) % n;
                let s = &scheds[to];
                let frames = std::mem::take(sent);
                assert_eq!(frames.len(), s.recv_slices(g), "{kind:?} n={n} g={g}");
                for (c, rg, vals) in frames {
                    assert_eq!(s.recv_chunk(g), Some(c), "{kind:?} n={n} g={g}");
                    let k = (rg.start - s.chunk(c).start) / slice;
                    assert_eq!(s.slice(c, k), rg);
                    received[to] += 1;
                    let action = s.action(g, k);
                    let v: Vec<u64> = if action.reduces() {
                        vals.iter()
                            .map(|v| {
                                assert_eq!(v & (1 << to), 0, "reduced twice");
                                v | (1 << to)
                            })
                            .collect()
                    } else {
                        vals
                    };
                    if action.stores() {
                        for (i, val) in rg.clone().zip(&v) {
                            assert!(s.output().contains(&i), "{kind:?}: store outside output");
                            assert!(
                                result[to][i].is_none_or(|old| old == *val),
                                "{kind:?}: a stored value changed"
                            );
                            result[to][i] = Some(*val);
                        }
                    }
                    if action.forwards() {
                        next[to].push((c, rg, v));
                    }
                }
            }
            sends = next;
        }
        assert!(
            sends.iter().all(Vec::is_empty),
            "frames left after the last step"
        );
        for (r, s) in scheds.iter().enumerate() {
            assert_eq!(s.expected_frames(), received[r], "{kind:?} n={n} rank={r}");
            if matches!(kind, Collective::Broadcast { .. } | Collective::AllReduce) {
                assert!(received[r] >= 1, "{kind:?} n={n}: rank {r} checks no frame");
            }
        }
        result
    }

    #[test]
    fn every_small_case_gives_each_kind_its_result() {
        for n in 2..=6 {
            let all = (1u64 << n) - 1;
            for count in [1, 2, 3, 5, 7, 16, 33] {
                for slice in [1, 2, 3, 64] {
                    for kind in KINDS {
                        let res = simulate(kind, n, count, slice);
                        let s0 = Schedule::new(kind, n, 0, count, slice);
                        for (r, res) in res.iter().enumerate() {
                            for (i, got) in res.iter().enumerate() {
                                let owner = (0..n).find(|c| s0.chunk(*c).contains(&i));
                                let want = match kind {
                                    Collective::AllReduce => Some(all),
                                    Collective::ReduceScatter => (owner == Some(r)).then_some(all),
                                    Collective::AllGather => owner.map(|c| 1 << c),
                                    Collective::Broadcast { .. } => unreachable!(),
                                };
                                assert_eq!(*got, want, "{kind:?} n={n} count={count} r={r} i={i}");
                            }
                        }
                    }
                    for root in 0..n {
                        let kind = Collective::Broadcast { root: root as u32 };
                        for res in simulate(kind, n, count, slice) {
                            assert!(res.iter().all(|v| *v == Some(1 << root)), "{kind:?} n={n}");
                        }
                    }
                }
            }
        }
    }

    /// The halves are the all-reduce's: a reduce-scatter's steps are the all-reduce's
    /// first n-1, an all-gather's its last n-1, chunk for chunk.
    #[test]
    fn reduce_scatter_and_all_gather_are_the_all_reduce_halves() {
        for n in 2..=5 {
            for r in 0..n {
                let ar = Schedule::new(Collective::AllReduce, n, r, 40, 3);
                let rs = Schedule::new(Collective::ReduceScatter, n, r, 40, 3);
                let ag = Schedule::new(Collective::AllGather, n, r, 40, 3);
                assert_eq!(rs.first_chunk(), ar.first_chunk());
                for g in 0..n - 1 {
                    assert_eq!(rs.recv_chunk(g), ar.recv_chunk(g));
                    assert_eq!(ag.recv_chunk(g), ar.recv_chunk(g + n - 1));
                }
                assert_eq!(rs.recv_chunk(n - 2), Some(r), "rank r owns chunk r");
                assert_eq!(ag.first_chunk(), Some(r));
            }
        }
    }

    #[test]
    fn chunks_partition_the_buffer() {
        for n in 1..=7 {
            for count in 0..40 {
                let s = Schedule::new(Collective::AllReduce, n, 0, count, 4);
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
