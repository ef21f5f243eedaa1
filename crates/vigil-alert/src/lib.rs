//! Vigil's alerting domain, free of I/O: Prometheus rule files and their evaluation,
//! threshold rules evaluated on ingest, the alert lifecycle, and notification routing
//! (Alertmanager's route tree, grouping, silences, inhibition) with escalation policies.
//! Time is always passed in (milliseconds), so every timeline is testable with an injected
//! clock; the server owns the clocks, the store, the outbox and the network.

pub mod alert;
pub mod config;
pub mod dispatch;
pub mod duration;
pub mod payload;
pub mod rulefile;
pub mod rules;
pub mod silence;
pub mod template;
pub mod threshold;
pub mod timeint;

pub use alert::{Alert, AlertState, ENV_LABEL, LabelMap, Transition, fingerprint};
pub use config::NotifyConfig;
pub use dispatch::{Dispatcher, Notification};
pub use duration::PromDuration;
pub use rulefile::{RuleFile, RuleFileErrors};
pub use rules::{RecordSink, RuleGroup, alerts_series};
pub use silence::{Silence, Silences};
pub use threshold::{ThresholdEngine, ThresholdRule};
