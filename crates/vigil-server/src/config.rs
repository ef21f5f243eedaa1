//! Server configuration: a serde struct read from TOML (every field has a documented default),
//! then overridden by `VIGIL_*` environment variables and flags in the binary, then checked
//! once into the values the server uses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Top-level configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on (default `127.0.0.1:9700`).
    pub listen: String,
    /// Data directory (default `./vigil-data`).
    pub data_dir: PathBuf,
    /// Authentication.
    pub auth: AuthConfig,
    /// TLS; off unless `cert` and `key` are set.
    pub tls: TlsConfig,
    /// Request limits.
    pub limits: LimitsConfig,
    /// The time-series store.
    pub tsdb: TsdbConfig,
    /// `[query]`: PromQL engine limits.
    pub query: QueryConfig,
    /// `[health]`: heartbeats and failure detection.
    pub health: HealthConfig,
    /// `[alerting]`: rules, notification routing, delivery.
    pub alerting: AlertingConfig,
    /// Seconds to finish in-flight requests on shutdown (default 10).
    pub shutdown_timeout: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9700".into(),
            data_dir: PathBuf::from("./vigil-data"),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            tsdb: TsdbConfig::default(),
            query: QueryConfig::default(),
            health: HealthConfig::default(),
            alerting: AlertingConfig::default(),
            shutdown_timeout: "10s".into(),
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require a token on every call except `/healthz` and `/readyz` (default true). Turning it
    /// off logs a warning at every start.
    pub enabled: bool,
    /// PEM files of RS256 or EdDSA public keys whose tokens are accepted too.
    pub public_keys: Vec<PathBuf>,
    /// Lifetime of the admin token written on first start (default `365d`).
    pub admin_token_ttl: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            public_keys: Vec::new(),
            admin_token_ttl: "365d".into(),
        }
    }
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Private key (PEM).
    pub key: Option<PathBuf>,
    /// Also accept TLS 1.2 (default: TLS 1.3 only).
    pub allow_tls12: bool,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body as sent (default 16 MiB).
    pub max_body_bytes: usize,
    /// Largest body after decompression (default 64 MiB).
    pub max_decompressed_bytes: usize,
    /// Most samples in one request (default 2,000,000).
    pub max_samples_per_request: usize,
    /// Most labels per series (default 40).
    pub max_labels_per_series: usize,
    /// Longest label name (default 256).
    pub max_label_name_length: usize,
    /// Longest label value (default 2048).
    pub max_label_value_length: usize,
    /// Active series per environment (default unlimited).
    pub max_series_per_environment: Option<usize>,
    /// Ingest requests processed at once; more get 429 with `Retry-After` (default 16).
    pub max_inflight_writes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
            max_samples_per_request: 2_000_000,
            max_labels_per_series: 40,
            max_label_name_length: 256,
            max_label_value_length: 2048,
            max_series_per_environment: None,
            max_inflight_writes: 16,
        }
    }
}

/// `[tsdb]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TsdbConfig {
    /// `always`, `interval` or `never` (default `interval`).
    pub sync: String,
    /// Sync period under `interval` (default `200ms`).
    pub sync_interval: String,
    /// Raw data retention (default `15d`).
    pub retention: String,
    /// Size cap of blocks + WAL in bytes (default none).
    pub retention_bytes: Option<u64>,
    /// Retention per environment, e.g. `{ ci = "2d" }`.
    pub env_retention: BTreeMap<String, String>,
    /// Out-of-order window (default `10m`).
    pub ooo_window: String,
    /// Age after which rollups are made (default `1h`: as soon as a 2 h block is cut;
    /// `off` disables).
    pub downsample_after: String,
    /// Rollup retention (default `400d`).
    pub rollup_retention: String,
}

impl Default for TsdbConfig {
    fn default() -> Self {
        Self {
            sync: "interval".into(),
            sync_interval: "200ms".into(),
            retention: "15d".into(),
            retention_bytes: None,
            env_retention: BTreeMap::new(),
            ooo_window: "10m".into(),
            downsample_after: "1h".into(),
            rollup_retention: "400d".into(),
        }
    }
}

/// `[query]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// How far back an instant selector looks (default `5m`).
    pub lookback_delta: String,
    /// Most samples one query may load (default 50,000,000).
    pub max_samples: usize,
    /// Longest a query may run (default `2m`).
    pub timeout: String,
    /// Most queries evaluated at once (default 20); more get 503.
    pub max_concurrent: usize,
    /// Step of subqueries written without one (default `1m`).
    pub default_subquery_step: String,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            lookback_delta: "5m".into(),
            max_samples: 50_000_000,
            timeout: "2m".into(),
            max_concurrent: 20,
            default_subquery_step: "1m".into(),
        }
    }
}

/// `[health]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Environments where a metrics push counts as a heartbeat of the agent it names
    /// (`["*"]` for all; default none).
    pub metrics_heartbeat_envs: Vec<String>,
    /// The label naming the agent in pushed metrics (default `agent`).
    pub metrics_heartbeat_label: String,
    /// The heartbeat interval assumed for such agents (default `10s`).
    pub metrics_heartbeat_interval: String,
    /// Recovery actions (`[[health.recovery]]`).
    pub recovery: Vec<crate::recovery::RecoveryConfig>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            metrics_heartbeat_envs: Vec::new(),
            metrics_heartbeat_label: "agent".into(),
            metrics_heartbeat_interval: "10s".into(),
            recovery: Vec::new(),
        }
    }
}

/// `[alerting]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// Prometheus rule files (also `--rules PATH`, repeatable); reloaded on change and SIGHUP.
    pub rule_files: Vec<PathBuf>,
    /// Environment the rule files evaluate in (default `default`).
    pub rules_env: String,
    /// Interval of rule groups that set none (default `15s`).
    pub evaluation_interval: String,
    /// Alertmanager-format routing file (also `--notify-config PATH`); empty = built-in default
    /// (group by alertname, no channels, zone partitions inhibit agent failures).
    pub notify_config: Option<PathBuf>,
    /// Base URL put in notifications (default `http://<listen>`).
    pub external_url: String,
    /// Per-attempt delivery timeout (default `10s`).
    pub delivery_timeout: String,
    /// Attempts before a notification is dead-lettered (default 8).
    pub delivery_max_attempts: u32,
    /// First retry delay; doubles per attempt with ±20% jitter (default `1s`).
    pub delivery_backoff: String,
    /// Longest retry delay (default `5m`).
    pub delivery_backoff_max: String,
    /// Built-in health alerts.
    pub health: HealthAlertsConfig,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        Self {
            rule_files: Vec::new(),
            rules_env: "default".into(),
            evaluation_interval: "15s".into(),
            notify_config: None,
            external_url: String::new(),
            delivery_timeout: "10s".into(),
            delivery_max_attempts: 8,
            delivery_backoff: "1s".into(),
            delivery_backoff_max: "5m".into(),
            health: HealthAlertsConfig::default(),
        }
    }
}

/// `[alerting.health]`: the built-in health rules.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthAlertsConfig {
    /// `AgentFailed` when the detector declares an agent failed (default true).
    pub agent_failed: bool,
    /// `ZonePartitionSuspected` when a zone or segment goes silent together (default true).
    pub partition: bool,
    /// `AgentCheckFailing` when an agent reports failing checks (default true).
    pub check_failing: bool,
    /// `AvailabilityBelowSLO` when an environment's fleet availability over
    /// `availability_window` drops below this ratio (default 0 = off; e.g. 0.99).
    pub availability_slo: f64,
    /// Window of the availability SLO (default `1h`).
    pub availability_window: String,
    /// Severity of `AgentFailed` (default `critical`).
    pub agent_failed_severity: String,
}

impl Default for HealthAlertsConfig {
    fn default() -> Self {
        Self {
            agent_failed: true,
            partition: true,
            check_failing: true,
            availability_slo: 0.0,
            availability_window: "1h".into(),
            agent_failed_severity: "critical".into(),
        }
    }
}

/// Checked `[alerting]` settings.
#[derive(Debug, Clone)]
pub struct AlertingOptions {
    /// Rule files.
    pub rule_files: Vec<PathBuf>,
    /// Their environment.
    pub rules_env: String,
    /// Default group interval, ms.
    pub evaluation_interval_ms: i64,
    /// Routing configuration (already parsed and checked) and where it came from.
    pub notify: vigil_alert::NotifyConfig,
    /// Path of the routing file, for reloads.
    pub notify_path: Option<PathBuf>,
    /// External URL.
    pub external_url: String,
    /// Whether the external URL was derived from the listen address (the server replaces it
    /// with the bound address, e.g. after listening on port 0).
    pub external_url_auto: bool,
    /// Delivery timeout.
    pub delivery_timeout: Duration,
    /// Attempts before dead-lettering.
    pub delivery_max_attempts: u32,
    /// First retry delay.
    pub delivery_backoff: Duration,
    /// Longest retry delay.
    pub delivery_backoff_max: Duration,
    /// Health rules.
    pub health: HealthAlertsConfig,
    /// Availability window, ms.
    pub availability_window_ms: i64,
}

impl AlertingConfig {
    fn resolve(&self, listen: &SocketAddr, tls: bool) -> Result<AlertingOptions, ConfigError> {
        let notify = match &self.notify_config {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    bad("[alerting].notify_config", format!("{}: {e}", p.display()))
                })?;
                vigil_alert::NotifyConfig::parse(&text)
                    .map_err(|e| bad("[alerting].notify_config", format!("{}: {e}", p.display())))?
            }
            None => vigil_alert::NotifyConfig::default_config(),
        };
        let ev = dur("[alerting].evaluation_interval", &self.evaluation_interval)?;
        if ev.as_millis() < 1000 {
            return Err(bad("[alerting].evaluation_interval", "must be at least 1s"));
        }
        if self.delivery_max_attempts == 0 {
            return Err(bad(
                "[alerting].delivery_max_attempts",
                "must be at least 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.health.availability_slo) {
            return Err(bad(
                "[alerting.health].availability_slo",
                "must be between 0 and 1",
            ));
        }
        if vigil_model::EnvId::new(&self.rules_env).is_err() {
            return Err(bad(
                "[alerting].rules_env",
                "is not a valid environment name",
            ));
        }
        Ok(AlertingOptions {
            rule_files: self.rule_files.clone(),
            rules_env: self.rules_env.clone(),
            evaluation_interval_ms: ev.as_millis() as i64,
            notify,
            notify_path: self.notify_config.clone(),
            external_url_auto: self.external_url.is_empty(),
            external_url: if self.external_url.is_empty() {
                format!("{}://{listen}", if tls { "https" } else { "http" })
            } else {
                self.external_url.trim_end_matches('/').to_string()
            },
            delivery_timeout: dur("[alerting].delivery_timeout", &self.delivery_timeout)?,
            delivery_max_attempts: self.delivery_max_attempts,
            delivery_backoff: dur("[alerting].delivery_backoff", &self.delivery_backoff)?,
            delivery_backoff_max: dur(
                "[alerting].delivery_backoff_max",
                &self.delivery_backoff_max,
            )?,
            availability_window_ms: dur(
                "[alerting.health].availability_window",
                &self.health.availability_window,
            )?
            .as_millis() as i64,
            health: self.health.clone(),
        })
    }
}

/// Checked `[health]` settings.
#[derive(Debug, Clone)]
pub struct HealthOptions {
    /// Environments where metrics count as heartbeats (`*` = all).
    pub metrics_heartbeat_envs: Vec<String>,
    /// Label naming the agent.
    pub metrics_heartbeat_label: String,
    /// Assumed interval, ms.
    pub metrics_heartbeat_interval_ms: u32,
    /// Recovery actions.
    pub recovery: Vec<crate::recovery::Rule>,
}

impl HealthOptions {
    /// Whether a metrics push into `env` counts as a heartbeat.
    pub fn metrics_count_in(&self, env: &str) -> bool {
        self.metrics_heartbeat_envs
            .iter()
            .any(|e| e == "*" || e == env)
    }
}

/// A configuration value that does not parse; names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration {key}: {reason}")]
pub struct ConfigError {
    /// The key, e.g. `[tsdb].retention`.
    pub key: String,
    /// Why.
    pub reason: String,
}

fn bad(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Parses a duration like `200ms`, `30s`, `10m`, `2h`, `15d`, `1w`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        "y" => 365 * 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(n.checked_mul(ms)?))
}

fn dur(key: &str, v: &str) -> Result<Duration, ConfigError> {
    parse_duration(v).ok_or_else(|| {
        bad(
            key,
            format!("{v:?} is not a duration like 200ms, 30s, 10m, 2h, 15d"),
        )
    })
}

/// Checked configuration.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Auth on?
    pub auth_enabled: bool,
    /// Extra public keys.
    pub public_keys: Vec<PathBuf>,
    /// Admin token lifetime.
    pub admin_token_ttl: Duration,
    /// TLS cert and key.
    pub tls: Option<(PathBuf, PathBuf, bool)>,
    /// Limits.
    pub limits: LimitsConfig,
    /// Store options (clock and maintenance at defaults).
    pub tsdb: vigil_tsdb::Options,
    /// Shutdown grace period.
    pub shutdown_timeout: Duration,
    /// PromQL engine options.
    pub query: vigil_promql::EngineOptions,
    /// Heartbeat settings.
    pub health: HealthOptions,
    /// Alerting settings.
    pub alerting: AlertingOptions,
}

impl Config {
    fn query_options(&self) -> Result<vigil_promql::EngineOptions, ConfigError> {
        let q = &self.query;
        if q.max_concurrent == 0 {
            return Err(bad("[query].max_concurrent", "must be at least 1"));
        }
        if q.max_samples == 0 {
            return Err(bad("[query].max_samples", "must be at least 1"));
        }
        let lookback = dur("[query].lookback_delta", &q.lookback_delta)?;
        if lookback.is_zero() {
            return Err(bad("[query].lookback_delta", "must be positive"));
        }
        Ok(vigil_promql::EngineOptions {
            lookback_delta: lookback,
            max_samples: q.max_samples,
            timeout: dur("[query].timeout", &q.timeout)?,
            max_concurrent: q.max_concurrent,
            default_subquery_step: dur("[query].default_subquery_step", &q.default_subquery_step)?,
            ..vigil_promql::EngineOptions::default()
        })
    }

    /// Checks every value, naming the key of the first bad one.
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        let listen: SocketAddr = self
            .listen
            .parse()
            .map_err(|e| bad("listen", format!("{:?}: {e}", self.listen)))?;
        let sync = match self.tsdb.sync.as_str() {
            "always" => vigil_tsdb::SyncPolicy::Always,
            "never" => vigil_tsdb::SyncPolicy::Never,
            "interval" => vigil_tsdb::SyncPolicy::Interval(dur(
                "[tsdb].sync_interval",
                &self.tsdb.sync_interval,
            )?),
            other => {
                return Err(bad(
                    "[tsdb].sync",
                    format!("{other:?} is not one of always, interval, never"),
                ));
            }
        };
        let mut env_retention = std::collections::HashMap::new();
        for (env, v) in &self.tsdb.env_retention {
            env_retention.insert(env.clone(), dur(&format!("[tsdb].env_retention.{env}"), v)?);
        }
        let downsample_after = match self.tsdb.downsample_after.as_str() {
            "off" | "" => None,
            v => Some(dur("[tsdb].downsample_after", v)?),
        };
        let l = &self.limits;
        if l.max_inflight_writes == 0 {
            return Err(bad("[limits].max_inflight_writes", "must be at least 1"));
        }
        let tsdb = vigil_tsdb::Options {
            sync,
            retention: dur("[tsdb].retention", &self.tsdb.retention)?,
            retention_bytes: self.tsdb.retention_bytes,
            env_retention,
            ooo_window: dur("[tsdb].ooo_window", &self.tsdb.ooo_window)?,
            downsample_after,
            rollup_retention: dur("[tsdb].rollup_retention", &self.tsdb.rollup_retention)?,
            label_limits: vigil_model::LabelLimits {
                max_labels: l.max_labels_per_series,
                max_name_len: l.max_label_name_length,
                max_value_len: l.max_label_value_length,
            },
            max_series_per_env: l.max_series_per_environment,
            ..vigil_tsdb::Options::default()
        };
        let tls = match (&self.tls.cert, &self.tls.key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone(), self.tls.allow_tls12)),
            (None, None) => None,
            _ => return Err(bad("[tls]", "set both cert and key, or neither")),
        };
        let tls_on = tls.is_some();
        Ok(Resolved {
            listen,
            data_dir: self.data_dir.clone(),
            auth_enabled: self.auth.enabled,
            public_keys: self.auth.public_keys.clone(),
            admin_token_ttl: dur("[auth].admin_token_ttl", &self.auth.admin_token_ttl)?,
            tls,
            limits: self.limits.clone(),
            tsdb,
            shutdown_timeout: dur("shutdown_timeout", &self.shutdown_timeout)?,
            query: self.query_options()?,
            alerting: self.alerting.resolve(&listen, tls_on)?,
            health: {
                let iv = dur(
                    "[health].metrics_heartbeat_interval",
                    &self.health.metrics_heartbeat_interval,
                )?;
                if !(1_000..=60_000).contains(&iv.as_millis()) {
                    return Err(bad(
                        "[health].metrics_heartbeat_interval",
                        "must be between 1s and 60s",
                    ));
                }
                if !vigil_model::is_valid_label_name(&self.health.metrics_heartbeat_label) {
                    return Err(bad(
                        "[health].metrics_heartbeat_label",
                        "is not a valid label name",
                    ));
                }
                HealthOptions {
                    metrics_heartbeat_envs: self.health.metrics_heartbeat_envs.clone(),
                    metrics_heartbeat_label: self.health.metrics_heartbeat_label.clone(),
                    metrics_heartbeat_interval_ms: iv.as_millis() as u32,
                    recovery: self
                        .health
                        .recovery
                        .iter()
                        .enumerate()
                        .map(|(i, r)| r.check(i))
                        .collect::<Result<_, _>>()?,
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_matches_defaults() {
        let text = include_str!("../../../config/vigil.example.toml");
        let c: Config = toml::from_str(text).unwrap();
        assert_eq!(c, Config::default());
        c.resolve().unwrap();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("200ms"), Some(Duration::from_millis(200)));
        assert_eq!(parse_duration("15d"), Some(Duration::from_secs(15 * 86400)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("5x"), None);
    }

    #[test]
    fn errors_name_the_key() {
        let c: Config = toml::from_str("[tsdb]\nretention = \"forever\"").unwrap();
        assert!(
            c.resolve()
                .unwrap_err()
                .to_string()
                .contains("[tsdb].retention")
        );
        let e = toml::from_str::<Config>("[tsdb]\nretension = \"1d\"").unwrap_err();
        assert!(e.to_string().contains("retension"), "{e}");
        let c: Config = toml::from_str("[tls]\ncert = \"a.pem\"").unwrap();
        assert!(c.resolve().unwrap_err().to_string().contains("[tls]"));
    }
}
