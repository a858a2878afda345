//! The durable stores: [`sqlite`], the embedded one, and [`postgres`], the one several
//! nodes share. Both write through one group-commit queue (`queue`).

pub mod postgres;
pub mod sqlite;
