//! The durable stores: [`sqlite`], the embedded one, and [`postgres`], the one several
//! nodes share. Both write through one group-commit queue (`queue`): the grouping, the
//! savepoint per operation, the one commit per group and the typed answer of each operation
//! are written once there. What a write batch and a compaction do is written once too
//! (`apply`); each store brings its SQL.

mod apply;
pub mod postgres;
mod queue;
pub mod sqlite;
