//! `canary`: progressive delivery with analysis that is sound at any traffic level.
//!
//! The pure core (`analysis` judges, later `rollout::plan`) takes everything as arguments,
//! including the time; adapters (`metrics`, later `routing`, `workload`, `controller`) do I/O.

pub mod analysis;
pub mod api;
pub mod cli;
pub mod controller;
pub mod convert;
pub mod metrics;
pub mod rollout;
pub mod routing;
pub mod workload;
