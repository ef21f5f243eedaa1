//! `vigil serve`: the HTTP server that wires the store, metadata, auth and ingestion together.
//!
//! Owns: configuration ([`config`]), tokens and roles ([`auth`]), the router and handlers
//! ([`http`]), self-metrics ([`metrics`]), TLS ([`tls`]). Domain crates below it know nothing
//! of HTTP; nothing depends on this crate but the `vigil` binary.
//!
//! Start-up order: bind the listener (so `/healthz` answers at once), open the metadata store,
//! create the signing key and the admin token on first start, then open the time-series store
//! (WAL replay) in the background; `/readyz` turns 200 and ingest accepts writes when it is done.

pub mod alerting;
pub mod auth;
pub mod config;
pub mod health;
pub mod http;
pub mod metrics;
pub mod recovery;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use vigil_meta::Meta;
use vigil_model::{Clock, SystemClock};
use vigil_tsdb::Db;

use crate::auth::{Authn, Envs, Role};
use crate::config::Resolved;
use crate::http::state::{AppState, Inner};

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Could not bind the listen address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Data directory problem.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Metadata store problem.
    #[error(transparent)]
    Meta(#[from] vigil_meta::Error),
    /// Time-series store problem.
    #[error(transparent)]
    Store(#[from] vigil_tsdb::Error),
    /// TLS set-up problem.
    #[error("TLS: {0}")]
    Tls(String),
    /// Auth set-up problem.
    #[error("auth: {0}")]
    Auth(String),
    /// Alerting set-up problem (a bad rule file, routing file or stored rule).
    #[error("alerting: {0}")]
    Alerting(String),
    /// Serving failed.
    #[error("server: {0}")]
    Serve(std::io::Error),
}

/// A bound, not yet running server.
pub struct Server {
    cfg: Resolved,
    listener: std::net::TcpListener,
    state: AppState,
    /// Where the admin token was written on first start.
    pub admin_token_path: Option<PathBuf>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listen", &self.listener.local_addr().ok())
            .finish()
    }
}

/// Runs an accept loop as a task on a runtime worker and waits for it. `Server::run` is
/// usually awaited by `block_on` on a thread that is not a worker: an accept loop there hands
/// every connection across threads (the worker polling epoll wakes that thread, which spawns
/// the connection task remotely and wakes a worker again). On a worker, the thread that sees
/// the connection accepts it and runs its task next, from the LIFO slot. Dropping the
/// returned future stops the loop, as dropping the loop itself would.
async fn on_worker<T: Send + 'static>(
    accept_loop: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, ServeError> {
    struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
    impl<T> Drop for AbortOnDrop<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut task = AbortOnDrop(tokio::spawn(accept_loop));
    (&mut task.0)
        .await
        .map_err(|e| ServeError::Serve(std::io::Error::other(format!("accept loop: {e}"))))
}

/// The admin token file in a data directory.
pub fn admin_token_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("admin.token")
}

impl Server {
    /// Binds the listener and prepares the metadata store, keys and admin token.
    pub fn bind(cfg: Resolved) -> Result<Self, ServeError> {
        let dd = &cfg.data_dir;
        std::fs::create_dir_all(dd).map_err(|e| ServeError::DataDir {
            path: dd.clone(),
            reason: e.to_string(),
        })?;
        let meta = Arc::new(Meta::open(&dd.join("meta.db"))?);
        // The agent registry: known agents start `unknown` and are judged only after their
        // next expected heartbeats, so a restart does not declare the fleet dead.
        let fleet = Arc::new(health::Fleet::load(
            meta.clone(),
            vigil_health::DetectorConfig::default(),
            SystemClock.now_ms(),
        )?);
        let (key, _created) = auth::load_or_create_key(dd).map_err(|e| ServeError::DataDir {
            path: dd.clone(),
            reason: format!("signing key: {e}"),
        })?;
        let mut written_token = None;
        let tok_path = admin_token_path(dd);
        if !tok_path.exists() {
            let (token, rec) = auth::mint(
                &meta,
                &key,
                "admin",
                Role::Admin,
                Envs::All("*".into()),
                cfg.admin_token_ttl,
                SystemClock.now_ms(),
            )
            .map_err(ServeError::Auth)?;
            auth::write_token_file(&tok_path, &token).map_err(|e| ServeError::DataDir {
                path: tok_path.clone(),
                reason: e.to_string(),
            })?;
            tracing::info!(path = %tok_path.display(), jti = %rec.jti, "Admin token written (mode 0600).");
            written_token = Some(tok_path);
        }
        let authn = if cfg.auth_enabled {
            Some(Authn::new(&key, &cfg.public_keys, meta.clone()).map_err(ServeError::Auth)?)
        } else {
            tracing::warn!(
                "Authentication is switched off ([auth].enabled = false): every call is accepted as admin."
            );
            None
        };
        let listener =
            std::net::TcpListener::bind(cfg.listen).map_err(|source| ServeError::Bind {
                addr: cfg.listen,
                source,
            })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ServeError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let labels = cfg.tsdb.label_limits;
        let known = meta
            .environments()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut alert_opts = cfg.alerting.clone();
        if alert_opts.external_url_auto
            && let Ok(a) = listener.local_addr()
        {
            let scheme = if cfg.tls.is_some() { "https" } else { "http" };
            alert_opts.external_url = format!("{scheme}://{a}");
        }
        let alerting = alerting::Alerting::load(meta.clone(), alert_opts, Arc::new(SystemClock))
            .map_err(ServeError::Alerting)?;
        let state = AppState(Arc::new(Inner {
            alerting,
            db: OnceLock::new(),
            authn,
            meta,
            limits: http::ingest::limits_from(&cfg.limits, labels),
            max_body_bytes: cfg.limits.max_body_bytes,
            write_slots: tokio::sync::Semaphore::new(cfg.limits.max_inflight_writes),
            metrics: metrics::Metrics::default(),
            known_envs: parking_lot::RwLock::new(known),
            engine: Arc::new(vigil_promql::Engine::new(cfg.query.clone())),
            fleet,
            health: cfg.health.clone(),
        }));
        Ok(Self {
            cfg,
            listener,
            state,
            admin_token_path: written_token,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.cfg.listen)
    }

    /// Whether the server speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.cfg.tls.is_some()
    }

    /// Opens the store and serves until `shutdown` resolves; then stops accepting, lets
    /// in-flight requests finish (bounded by the configured timeout), and closes the store
    /// (flushing the WAL).
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Server {
            cfg,
            listener,
            state,
            ..
        } = self;
        let dd = cfg.data_dir.clone();
        let opts = cfg.tsdb.clone();
        let st = state.clone();
        let opener = tokio::task::spawn_blocking(move || -> Result<(), ServeError> {
            let db = Db::open(&dd, opts)?;
            let rep = db.open_report();
            tracing::info!(
                blocks = rep.blocks,
                wal_records = rep.replay.records,
                repairs = rep.replay.repairs.len(),
                quarantined = rep.quarantined.len(),
                "Store ready."
            );
            let _ = st.0.db.set(Arc::new(db));
            Ok(())
        });
        // Failure detection runs on a 100 ms ticker; the registry and the state history are
        // written to the metadata store every 2 s and at shutdown.
        let fleet = state.0.fleet.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticker = {
            let (fleet, stop) = (fleet.clone(), stop.clone());
            let st = state.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(100));
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    every.tick().await;
                    fleet.tick(SystemClock.now_ms());
                    n += 1;
                    if n % 100 == 10
                        && let Some(db) = st.0.db.get().cloned()
                    {
                        // Every 10 s: the fleet as series in the store.
                        let batches = fleet.fleet_series(SystemClock.now_ms(), &st.0.limits.labels);
                        let r = tokio::task::spawn_blocking(move || {
                            batches.iter().try_for_each(|b| db.write(b).map(|_| ()))
                        })
                        .await;
                        if let Ok(Err(e)) = r {
                            tracing::error!(error = %e, "Could not write the fleet series.");
                        }
                    }
                    if n.is_multiple_of(20) {
                        let f = fleet.clone();
                        match tokio::task::spawn_blocking(move || f.flush()).await {
                            Ok(Err(e)) => {
                                tracing::error!(error = %e, "Could not save the agent registry.")
                            }
                            Err(e) => tracing::error!(error = %e, "Registry flush task failed."),
                            Ok(Ok(_)) => {}
                        }
                    }
                }
            })
        };
        let recovery = recovery::spawn(fleet.clone(), cfg.health.recovery.clone());
        // Alerting: evaluation loop (own thread), health-event feed and delivery worker.
        let alerting = state.0.alerting.clone();
        let alert_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (alert_thread, alert_events, alert_delivery) =
            alerting.spawn(state.clone(), alert_stop.clone());
        #[cfg(unix)]
        let sighup = {
            let al = alerting.clone();
            tokio::spawn(async move {
                let Ok(mut hup) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                else {
                    return;
                };
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading rule files and the routing configuration.");
                    al.request_reload();
                }
            })
        };
        let app = http::router::router(state.clone());
        let timeout = cfg.shutdown_timeout;
        let served = if let Some((cert, key, tls12)) = &cfg.tls {
            let rustls_cfg = tls::server_config(cert, key, *tls12).map_err(ServeError::Tls)?;
            let handle = axum_server::Handle::new();
            let h2 = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                h2.graceful_shutdown(Some(timeout));
            });
            let server = axum_server::from_tcp_rustls(
                listener,
                axum_server::tls_rustls::RustlsConfig::from_config(rustls_cfg),
            )
            .map_err(ServeError::Serve)?
            .handle(handle);
            on_worker(server.serve(app.into_make_service()))
                .await
                .and_then(|r| r.map_err(ServeError::Serve))
        } else {
            let listener =
                tokio::net::TcpListener::from_std(listener).map_err(ServeError::Serve)?;
            on_worker(http::serve::serve_plain(listener, app, shutdown, timeout)).await
        };
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = ticker.await;
        alert_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        alerting.request_reload_stop();
        let _ = tokio::task::spawn_blocking(move || alert_thread.join()).await;
        alert_events.abort();
        alert_delivery.abort();
        #[cfg(unix)]
        sighup.abort();
        drop(alerting);
        if let Some(r) = recovery {
            r.abort();
        }
        match tokio::task::spawn_blocking(move || fleet.flush_final()).await {
            Ok(Err(e)) => tracing::error!(error = %e, "Could not save the agent registry."),
            Err(e) => tracing::error!(error = %e, "Registry flush task failed."),
            Ok(Ok((agents, events))) => tracing::info!(agents, events, "Agent registry saved."),
        }
        match opener.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(ServeError::Serve(std::io::Error::other(e.to_string()))),
        }
        // Requests are done; wait briefly for their last references to the store to drop,
        // then close it (flushing and syncing the WAL).
        let started = std::time::Instant::now();
        while Arc::strong_count(&state.0) > 1 && started.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(db) = Arc::into_inner(state.0)
            .and_then(|i| i.db.into_inner())
            .and_then(Arc::into_inner)
        {
            db.close()?;
            tracing::info!("Store closed.");
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An accept loop moved onto a worker runs there, gives back its result, and is stopped
    /// when the future waiting for it is dropped.
    #[test]
    fn accept_loops_run_on_a_worker_and_stop_with_their_caller() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("worker")
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let on = on_worker(async { std::thread::current().name().map(str::to_owned) });
            let name = on.await.unwrap();
            assert_eq!(name.as_deref(), Some("worker"));

            struct Dropped(Option<tokio::sync::oneshot::Sender<()>>);
            impl Drop for Dropped {
                fn drop(&mut self) {
                    let _ = self.0.take().map(|t| t.send(()));
                }
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let guard = Dropped(Some(tx));
            let waiting = on_worker(async move {
                let _guard = guard;
                std::future::pending::<()>().await
            });
            // Polled once (the loop starts), then dropped.
            let _ = tokio::time::timeout(Duration::from_millis(20), waiting).await;
            tokio::time::timeout(Duration::from_secs(10), rx)
                .await
                .expect("the accept loop kept running after its caller was dropped")
                .unwrap();
        });
    }
}
