//! Shared state of every handler: cheap to clone, `Arc` inside.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use tokio::sync::Semaphore;
use vigil_meta::Meta;
use vigil_tsdb::Db;

use crate::auth::Authn;
use crate::http::error::ApiError;
use crate::metrics::Metrics;

/// Handler state.
#[derive(Clone, Debug)]
pub struct AppState(pub(crate) Arc<Inner>);

/// What the state holds.
#[derive(Debug)]
pub struct Inner {
    /// The store, once opened (WAL replay may still be running when requests arrive).
    pub db: OnceLock<Arc<Db>>,
    /// Token verification; `None` when auth is switched off.
    pub authn: Option<Authn>,
    /// Metadata store.
    pub meta: Arc<Meta>,
    /// Decoder limits.
    pub limits: vigil_ingest::Limits,
    /// Largest body as sent.
    pub max_body_bytes: usize,
    /// Ingest admission: one permit per request being processed.
    pub write_slots: Semaphore,
    /// Self-metrics.
    pub metrics: Metrics,
    /// Environments already recorded in the metadata store.
    pub known_envs: RwLock<HashSet<String>>,
    /// The PromQL engine (limits and the concurrency gate).
    pub engine: Arc<vigil_promql::Engine>,
    /// Agent registry and failure detection.
    pub fleet: Arc<crate::health::Fleet>,
    /// Heartbeat settings.
    pub health: crate::config::HealthOptions,
    /// Rules, alerts, routing and delivery.
    pub alerting: Arc<crate::alerting::Alerting>,
}

impl AppState {
    /// The store, or 503 while it is still opening.
    pub fn db(&self) -> Result<Arc<Db>, ApiError> {
        self.0.db.get().cloned().ok_or_else(|| {
            ApiError::unavailable("the store is still opening (WAL replay); retry shortly")
        })
    }

    /// Records an environment in the metadata store the first time it is written to.
    pub fn note_env(&self, env: &str, now_ms: i64) {
        if self.0.known_envs.read().contains(env) {
            return;
        }
        if self.0.meta.ensure_environment(env, now_ms).is_ok() {
            self.0.known_envs.write().insert(env.to_string());
        }
    }
}
