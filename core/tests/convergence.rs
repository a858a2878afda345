//! Convergence: replicas (forks of one origin) make random concurrent edits (JSON Patch
//! list inserts and deletes, text splices, counter increments, conflicting sets of one
//! field, whole-value writes from stale versions) and exchange their changes over a network
//! that reorders, duplicates and drops messages, with every dropped message redelivered at
//! the end. All replicas must end with the same version and value, and nothing anyone wrote
//! may be lost: every added key is there and the counter is the sum of every increment.
//!
//! The network and the edits live in `tests/common/replicas.rs`, shared with the end-to-end
//! variant in `tests/convergence.rs` of the workspace's test crate.

#[path = "common/replicas.rs"]
mod replicas;

use proptest::prelude::*;
use replicas::{arb_run, Run};

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge_under_reorder_duplicates_and_drops(run in arb_run(3, 40)) {
        let mut world = Run::start(&run);
        world.play(&run);
        world.settle();
        world.assert_converged();
    }

    #[test]
    fn two_replicas_converge_with_many_stale_writes(run in arb_run(2, 60)) {
        let mut world = Run::start(&run);
        world.play(&run);
        world.settle();
        world.assert_converged();
    }
}
