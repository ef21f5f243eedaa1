//! Failure detection for Vigil's agents.
//!
//! [`Detector`] keeps ~100 bytes per agent: inter-arrival statistics (EWMA mean and variance),
//! connection quality (loss from `seq` gaps, jitter, clock offset, restarts) and deadlines.
//! Each heartbeat turns the phi-accrual thresholds into two moments — suspect and failed —
//! and a timer wheel fires them; nothing scans all agents. An agent is failed no later than
//! `hard_bound_intervals` × its interval after its last heartbeat. When a large share of a
//! zone turns suspect together, the zone is reported as a suspected partition and its silent
//! agents as unreachable, not failed; once the zone is heard from again, those still silent
//! after their next expected heartbeat are failed.

pub mod detector;
pub mod phi;
pub mod wheel;

pub use detector::{Agent, Beat, Detector, DetectorConfig, Event, EventKind, State};
