//! Vigil's shared domain vocabulary: [`Labels`], [`Sample`], [`EnvId`], [`Matcher`] and
//! [`Clock`].
//!
//! This crate owns the data model every other crate speaks. It does no I/O, has no async and
//! knows nothing of storage or HTTP. Validation of label names and values (Prometheus' rules plus
//! configurable limits) lives here so that every ingest path and the store agree on it.
//!
//! ```
//! use vigil_model::{Labels, Matcher, MatchOp};
//! let l = Labels::from_pairs([("__name__", "up"), ("job", "node")]);
//! let m = Matcher::new(MatchOp::Re, "job", "no.*").unwrap();
//! assert!(m.matches(l.get("job").unwrap_or("")));
//! assert_eq!(l.metric_name(), Some("up"));
//! ```

mod clock;
mod env;
mod labels;
mod matcher;
mod sample;
mod validate;

pub use clock::{Clock, ManualClock, SystemClock};
pub use env::{EnvId, EnvIdError};
pub use labels::{Label, LabelStr, Labels, METRIC_NAME, hash_pairs};
pub use matcher::{MatchOp, Matcher, MatcherError};
pub use sample::{STALE_NAN_BITS, Sample, is_stale_marker, stale_marker};
pub use validate::{LabelError, LabelLimits, is_valid_label_name, is_valid_metric_name};
