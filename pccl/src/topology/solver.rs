//! Ring order that maximises the ring's bottleneck bandwidth (docs/ARCHITECTURE.md §7): an asymmetric
//! bottleneck TSP. Exact (all orders with the first node fixed) up to `EXACT_MAX` nodes.
//! Beyond that, a threshold search: a ring has bottleneck at least `t` exactly when the
//! graph of links of at least `t` has a Hamiltonian cycle, so the solver binary-searches
//! `t` over the measured link values, from a greedy ring's bottleneck up to a bound no
//! ring can beat, and looks for each cycle with a pruned depth-first search that gives up
//! after `SEARCH_BUDGET` steps (then that `t` counts as infeasible). Measured quality is
//! in the tests: the exact optimum on every random matrix up to 8 nodes, the planted
//! optimum of 16-64 node matrices unless the fast links are sparse (then within 0.9).
//! Pure and deterministic: the same matrix always gives the same ring.

/// Largest ring solved exactly (7! = 5040 orders to try).
const EXACT_MAX: usize = 8;
/// Search steps the heuristic may spend on one threshold, over all its restarts; bounds
/// the master's time in `optimize_topology` (about 13 thresholds for 64 nodes).
const SEARCH_BUDGET: usize = 20_000;
/// Restarts per threshold, each from another node with its own tie-breaking: a search
/// stuck in a bad subtree is abandoned early rather than exhausting the whole budget.
const RESTARTS: usize = 8;

/// The ring's bottleneck: the slowest of its directed links `order[i] -> order[i+1]`.
pub(crate) fn bottleneck(order: &[usize], bw: &impl Fn(usize, usize) -> f64) -> f64 {
    if order.len() < 2 {
        return f64::INFINITY;
    }
    (0..order.len())
        .map(|i| bw(order[i], order[(i + 1) % order.len()]))
        .fold(f64::INFINITY, f64::min)
}

/// The best ring over nodes `0..n`, starting from node 0. `bw(a, b)` is the measured
/// throughput from a to b. Returns `current` unless another order is strictly better, so
/// an unchanged matrix never re-wires the ring.
pub(crate) fn best_ring(current: &[usize], bw: &impl Fn(usize, usize) -> f64) -> Vec<usize> {
    let n = current.len();
    if n < 3 {
        return current.to_vec();
    }
    let candidate = if n <= EXACT_MAX {
        exact(n, bw)
    } else {
        heuristic(n, bw)
    };
    if bottleneck(&candidate, bw) > bottleneck(current, bw) {
        candidate
    } else {
        current.to_vec()
    }
}

fn exact(n: usize, bw: &impl Fn(usize, usize) -> f64) -> Vec<usize> {
    let mut rest: Vec<usize> = (1..n).collect();
    let mut best = (f64::NEG_INFINITY, Vec::new());
    permute(&mut rest, 0, &mut |perm| {
        let mut order = Vec::with_capacity(n);
        order.push(0);
        order.extend_from_slice(perm);
        let b = bottleneck(&order, bw);
        if b > best.0 {
            best = (b, order);
        }
    });
    best.1
}

/// Heap's-free simple recursive permutation in lexicographic-ish swap order.
fn permute(v: &mut [usize], k: usize, f: &mut impl FnMut(&[usize])) {
    if k == v.len() {
        f(v);
        return;
    }
    for i in k..v.len() {
        v.swap(k, i);
        permute(v, k + 1, f);
        v.swap(k, i);
    }
}

fn heuristic(n: usize, bw: &impl Fn(usize, usize) -> f64) -> Vec<usize> {
    let mut best = greedy(n, bw);
    let mut best_b = bottleneck(&best, bw);
    // No ring beats any node's fastest outgoing or fastest incoming link.
    let fastest_out = (0..n).map(|a| max_link((0..n).filter(|b| *b != a).map(|b| bw(a, b))));
    let fastest_in = (0..n).map(|b| max_link((0..n).filter(|a| *a != b).map(|a| bw(a, b))));
    let upper = fastest_out.chain(fastest_in).fold(f64::INFINITY, f64::min);
    let mut values: Vec<f64> = (0..n)
        .flat_map(|a| (0..n).filter(move |b| *b != a).map(move |b| (a, b)))
        .map(|(a, b)| bw(a, b))
        .filter(|v| *v > best_b && *v <= upper)
        .collect();
    values.sort_by(f64::total_cmp);
    values.dedup();
    let (mut lo, mut hi) = (0, values.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        match find_cycle(n, bw, values[mid]) {
            Some(ring) => {
                best_b = bottleneck(&ring, bw);
                best = ring;
                lo = values.partition_point(|v| *v <= best_b);
            }
            None => hi = mid,
        }
    }
    best
}

/// A fixed hash of (salt, v): each restart breaks ties in its own order, the same
/// order every time.
fn mix(salt: u64, v: u64) -> u64 {
    let mut x = salt.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ v.wrapping_add(0x632b_e59b_d9b4_e019);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn max_link(links: impl Iterator<Item = f64>) -> f64 {
    links.fold(f64::NEG_INFINITY, f64::max)
}

/// From node 0, always take the fastest link to an unvisited node.
fn greedy(n: usize, bw: &impl Fn(usize, usize) -> f64) -> Vec<usize> {
    let mut order = vec![0];
    let mut used = vec![false; n];
    used[0] = true;
    while order.len() < n {
        let last = order[order.len() - 1];
        let Some(next) = (0..n)
            .filter(|j| !used[*j])
            .max_by(|a, b| bw(last, *a).total_cmp(&bw(last, *b)).then(b.cmp(a)))
        else {
            break; // unreachable: fewer than n nodes are placed
        };
        used[next] = true;
        order.push(next);
    }
    order
}

/// A Hamiltonian cycle using only links of at least `t`, starting at node 0; `None` if
/// none was found within the budget. Restarts from the most constrained nodes first.
fn find_cycle(n: usize, bw: &impl Fn(usize, usize) -> f64, t: f64) -> Option<Vec<usize>> {
    let mut search = Search::new(n, bw, t);
    let mut roots: Vec<usize> = (0..n).collect();
    roots.sort_by_key(|v| (search.out[*v].len().min(search.inn[*v].len()), *v));
    for (restart, root) in roots.into_iter().cycle().take(RESTARTS).enumerate() {
        if let Some(mut cycle) = search.run(root, restart as u64) {
            let zero = cycle.iter().position(|v| *v == 0)?;
            cycle.rotate_left(zero);
            return Some(cycle);
        }
    }
    None
}

/// A set of nodes `0..n`.
#[derive(Clone)]
struct Nodes(Vec<u64>);

impl Nodes {
    fn empty(n: usize) -> Self {
        Self(vec![0; n.div_ceil(64)])
    }
    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn remove(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
    fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    /// Members of `self & other`, up to two (enough to tell none, one or several).
    fn common(&self, other: &Self) -> (usize, Option<usize>) {
        let mut count = 0;
        let mut first = None;
        for (w, (a, b)) in self.0.iter().zip(&other.0).enumerate() {
            let x = a & b;
            if x != 0 {
                first.get_or_insert_with(|| w * 64 + x.trailing_zeros() as usize);
                count += x.count_ones() as usize;
                if count > 1 {
                    break;
                }
            }
        }
        (count, first)
    }
    fn len(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }
    fn count_common(&self, other: &Self) -> u32 {
        self.0
            .iter()
            .zip(&other.0)
            .map(|(a, b)| (a & b).count_ones())
            .sum()
    }
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, word)| {
            (0..64)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| w * 64 + b)
        })
    }
}

/// Depth-first search for a Hamiltonian cycle from a root using only links of at
/// least `t`, pruned by a necessary condition (every unplaced node keeps a possible
/// predecessor and successor; at most one of them can only be reached from the path's
/// end, and then it goes next), candidates tried fewest-onward-links first.
struct Search<'a, F> {
    n: usize,
    bw: &'a F,
    out: Vec<Nodes>,
    inn: Vec<Nodes>,
    path: Vec<usize>,
    free: Nodes,
    /// Steps left for this restart.
    steps: usize,
    /// Salt of this restart's tie-breaking.
    salt: u64,
}

impl<'a, F: Fn(usize, usize) -> f64> Search<'a, F> {
    fn new(n: usize, bw: &'a F, t: f64) -> Self {
        let mut out = vec![Nodes::empty(n); n];
        let mut inn = vec![Nodes::empty(n); n];
        for (a, links) in out.iter_mut().enumerate() {
            for b in (0..n).filter(|b| *b != a) {
                if bw(a, b) >= t {
                    links.insert(b);
                    inn[b].insert(a);
                }
            }
        }
        Self {
            n,
            bw,
            out,
            inn,
            path: Vec::with_capacity(n),
            free: Nodes::empty(n),
            steps: 0,
            salt: 0,
        }
    }

    /// One restart from `root`, with its share of the budget.
    fn run(&mut self, root: usize, salt: u64) -> Option<Vec<usize>> {
        self.path.clear();
        self.path.push(root);
        self.free = Nodes::empty(self.n);
        (0..self.n)
            .filter(|v| *v != root)
            .for_each(|v| self.free.insert(v));
        self.steps = SEARCH_BUDGET / RESTARTS;
        self.salt = salt;
        self.extend().then(|| self.path.clone())
    }

    /// Extends the path to a cycle; false if there is none (or the budget ran out).
    fn extend(&mut self) -> bool {
        let end = self.path[self.path.len() - 1];
        let root = self.path[0];
        if self.path.len() == self.n {
            return self.out[end].contains(root);
        }
        if self.steps == 0 {
            return false;
        }
        self.steps -= 1;
        let Some(candidates) = self.candidates(end) else {
            return false;
        };
        for next in candidates {
            self.free.remove(next);
            self.path.push(next);
            if self.extend() {
                return true;
            }
            self.path.pop();
            self.free.insert(next);
        }
        false
    }

    /// The nodes to try after `end`, best first; `None` if the path cannot be completed.
    fn candidates(&self, end: usize) -> Option<Vec<usize>> {
        let mut preds = self.free.clone();
        preds.insert(end);
        let mut succs = self.free.clone();
        succs.insert(self.path[0]);
        let mut forced = None;
        for v in self.free.iter() {
            match self.inn[v].common(&preds) {
                (0, _) => return None,
                // Two nodes that only `end` can precede: one of them is lost.
                (1, Some(only)) if only == end && forced.replace(v).is_some() => return None,
                _ => {}
            }
            if self.out[v].common(&succs).0 == 0 {
                return None;
            }
        }
        if let Some(v) = forced {
            return Some(vec![v]);
        }
        let mut next: Vec<usize> = self
            .free
            .iter()
            .filter(|v| self.out[end].contains(*v))
            .collect();
        next.sort_by(|a, b| {
            let onward = |v: usize| self.out[v].count_common(&self.free);
            let mix = |v: usize| mix(self.salt, v as u64);
            onward(*a)
                .cmp(&onward(*b))
                .then((self.bw)(end, *b).total_cmp(&(self.bw)(end, *a)))
                .then(mix(*a).cmp(&mix(*b)))
        });
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn finds_the_fast_ring_among_slow_links() {
        // Fast links 0->2->1->3->0; everything else slow.
        let fast = [(0, 2), (2, 1), (1, 3), (3, 0)];
        let bw = |a: usize, b: usize| if fast.contains(&(a, b)) { 100.0 } else { 1.0 };
        let ring = best_ring(&[0, 1, 2, 3], &bw);
        assert_eq!(ring, vec![0, 2, 1, 3]);
        assert_eq!(bottleneck(&ring, &bw), 100.0);
        // Already optimal: unchanged.
        assert_eq!(best_ring(&[0, 2, 1, 3], &bw), vec![0, 2, 1, 3]);
    }

    fn seed() -> u64 {
        let seed = std::env::var("PCCL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(7);
        eprintln!("solver seed = {seed} (PCCL_SEED=N to replay another)");
        seed
    }

    fn is_ring_from_zero(order: &[usize], n: usize) -> bool {
        let mut sorted = order.to_vec();
        sorted.sort();
        order.first() == Some(&0) && sorted == (0..n).collect::<Vec<_>>()
    }

    /// On random asymmetric matrices the search is exhaustive within its budget for up to
    /// 8 nodes, so it must reach the exact optimum every time (the greedy-plus-2-opt
    /// heuristic it replaced did so for 16% of 8-node matrices).
    #[test]
    fn heuristic_reaches_the_exact_optimum_up_to_8_nodes() {
        let mut rng = ChaCha8Rng::seed_from_u64(seed());
        for n in 3..=8 {
            for trial in 0..300 {
                let m: Vec<Vec<f64>> = (0..n)
                    .map(|_| (0..n).map(|_| rng.gen_range(1.0..100.0)).collect())
                    .collect();
                let bw = |a: usize, b: usize| m[a][b];
                let h = heuristic(n, &bw);
                assert!(is_ring_from_zero(&h, n), "{h:?}");
                let (got, want) = (bottleneck(&h, &bw), bottleneck(&exact(n, &bw), &bw));
                assert_eq!(got, want, "n = {n}, trial {trial}: {m:?}");
            }
        }
    }

    /// A matrix whose best ring is known: a random ring of links of exactly 50; from one
    /// node of it every other link is below 50, so no ring can do better than 50, and
    /// only rings through the planted links reach it. Elsewhere each node has about
    /// `decoys` links above 50 (to lure a greedy search away) and the rest below.
    fn planted(rng: &mut ChaCha8Rng, n: usize, decoys: f64) -> Vec<Vec<f64>> {
        let mut ring: Vec<usize> = (0..n).collect();
        ring.shuffle(rng);
        let bounded = ring[0];
        let p = (decoys / n as f64).min(1.0);
        let mut m = vec![vec![0.0; n]; n];
        for (a, row) in m.iter_mut().enumerate() {
            for (b, link) in row.iter_mut().enumerate() {
                if a != b {
                    *link = if a != bounded && rng.gen_bool(p) {
                        rng.gen_range(50.5..100.0)
                    } else {
                        rng.gen_range(1.0..49.5)
                    };
                }
            }
        }
        for i in 0..n {
            m[ring[i]][ring[(i + 1) % n]] = 50.0;
        }
        m
    }

    /// Beyond 8 nodes (`best_ring` takes the heuristic path): with no decoys or with
    /// about 8 per node, the heuristic finds the planted optimum (measured: 200 of 200
    /// matrices for each n and density, seed 7). With sparse decoys (3 per node) the
    /// search runs out of budget more often: measured optimal for 200/200 at n = 16,
    /// 188/200 at 32 and 15/200 at 64, never below 0.91 of the optimum, so the bound
    /// asserted there is 0.8.
    #[test]
    fn heuristic_finds_planted_rings_of_16_to_64_nodes() {
        let mut rng = ChaCha8Rng::seed_from_u64(seed());
        for n in [16, 32, 64] {
            for (decoys, bound) in [(0.0, 1.0), (8.0, 1.0), (3.0, 0.8)] {
                for trial in 0..10 {
                    let m = planted(&mut rng, n, decoys);
                    let bw = |a: usize, b: usize| m[a][b];
                    let current: Vec<usize> = (0..n).collect();
                    let ring = best_ring(&current, &bw);
                    assert!(is_ring_from_zero(&ring, n), "{ring:?}");
                    let got = bottleneck(&ring, &bw);
                    assert!(
                        got >= bound * 50.0,
                        "n = {n}, decoys {decoys}, trial {trial}: bottleneck {got}, optimum 50"
                    );
                }
            }
        }
    }
}
