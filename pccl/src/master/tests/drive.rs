//! The `master_state` fuzz target's logic over seeded random byte strings, so that CI
//! runs it without cargo-fuzz: no input sequence may panic the master or make one input
//! queue unboundedly many outputs.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::master::drive::drive;

#[test]
fn random_input_sequences_never_panic_the_master() {
    let seed = std::env::var("PCCL_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("master drive seed = {seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for run in 0..4000 {
        let len = rng.gen_range(0..2048);
        let data: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
        let outcome = std::panic::catch_unwind(|| drive(&data));
        assert!(
            outcome.is_ok(),
            "run {run} of seed {seed} panicked; its input ({} bytes): {data:?}",
            data.len()
        );
    }
}
