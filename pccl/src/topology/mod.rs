//! Topology optimisation (docs/ARCHITECTURE.md §7): bandwidth tests between peers and the ring solver.

pub(crate) mod bandwidth;
pub(crate) mod solver;
