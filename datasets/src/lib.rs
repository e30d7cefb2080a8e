//! Engram's data: fact sets in, experiments out.
//!
//! - [`facts`]: CounterFact (ROME and EasyEdit forms), `known_1000.json`, zsRE, user facts.
//! - [`corpus`]: a streaming text corpus for statistics and key-trigger search.
//! - [`store`]: the run store, one directory of parquet tables per run, written atomically.
//! - [`table`]: typed rows ⇄ polars DataFrames.
//! - [`summary`]: means with confidence intervals, and LaTeX tables.
//! - [`figures`]: plotters figures drawn from stored tables.
//! - [`export`]: a run's tables and figure exported, two runs compared, curves over runs.
//! - [`merge`]: `--shard K/N` and joining the shards' runs into one.

pub mod corpus;
pub mod demo;
pub mod error;
pub mod export;
pub mod facts;
pub mod figures;
pub mod merge;
pub mod records;
pub mod store;
pub mod summary;
pub mod table;

pub use error::{DatasetError, Result};
pub use records::{Loaded, OnBadRecord};
pub use store::{RunInfo, RunParams, RunStore, RunWriter};

pub use polars;
