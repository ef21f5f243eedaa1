//! Vigil's native JSON metrics snapshot (`POST /api/telemetry/ingest`): what an agent sees of
//! its host, mapped to node_exporter's series names where one exists so existing dashboards
//! work, plus custom metrics.
//!
//! | JSON field | series |
//! |---|---|
//! | `cpu.seconds.<mode>` | `node_cpu_seconds_total{cpu="all",mode}` |
//! | `cpu.load1/5/15` | `node_load1`, `node_load5`, `node_load15` |
//! | `cpu.usage_percent`, `cpu.cores` | `vigil_cpu_usage_percent`, `vigil_cpu_cores` |
//! | `memory.total_bytes`, `available_bytes`, `free_bytes`, `cached_bytes`, `buffers_bytes`, `swap_total_bytes`, `swap_free_bytes` | `node_memory_{MemTotal,MemAvailable,MemFree,Cached,Buffers,SwapTotal,SwapFree}_bytes` |
//! | `memory.used_bytes` | `vigil_memory_used_bytes` |
//! | `disks[].total_bytes/free_bytes/avail_bytes` | `node_filesystem_{size,free,avail}_bytes{mountpoint,device,fstype}` |
//! | `disks[].read_bytes/written_bytes` | `node_disk_{read,written}_bytes_total{device}` |
//! | `network[].rx_bytes/tx_bytes/rx_packets/tx_packets/rx_errors/tx_errors/rx_dropped/tx_dropped` | `node_network_{receive,transmit}_{bytes,packets,errs,drop}_total{device}` |
//! | `metrics[]` | `name{labels}` as given |
//!
//! Every series also gets `agent` and `instance` (the agent id), `job="vigil-agent"` and the
//! snapshot's `labels`.

use std::collections::BTreeMap;

use serde::Deserialize;
use vigil_tsdb::WriteBatch;

use crate::{DecodeError, Limits, Summary};

/// The snapshot.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// The agent's id (1–128 characters).
    pub agent_id: String,
    /// When the snapshot was taken (ms); the server's time when absent.
    pub timestamp_ms: Option<i64>,
    /// Labels added to every series.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// CPU figures.
    pub cpu: Option<Cpu>,
    /// Memory figures.
    pub memory: Option<Memory>,
    /// Per-mount filesystem figures.
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// Per-interface network counters.
    #[serde(default)]
    pub network: Vec<Net>,
    /// Custom metrics.
    #[serde(default)]
    pub metrics: Vec<Custom>,
}

/// CPU figures.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cpu {
    /// Busy percentage 0–100.
    pub usage_percent: Option<f64>,
    /// Logical cores.
    pub cores: Option<f64>,
    /// Load averages.
    pub load1: Option<f64>,
    /// Load averages.
    pub load5: Option<f64>,
    /// Load averages.
    pub load15: Option<f64>,
    /// Cumulative seconds per mode (`user`, `system`, `idle`, `iowait`, …).
    #[serde(default)]
    pub seconds: BTreeMap<String, f64>,
}

/// Memory figures in bytes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Memory {
    pub total_bytes: Option<f64>,
    pub available_bytes: Option<f64>,
    pub used_bytes: Option<f64>,
    pub free_bytes: Option<f64>,
    pub cached_bytes: Option<f64>,
    pub buffers_bytes: Option<f64>,
    pub swap_total_bytes: Option<f64>,
    pub swap_free_bytes: Option<f64>,
}

/// One mounted filesystem.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Disk {
    pub mountpoint: String,
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub fstype: String,
    pub total_bytes: Option<f64>,
    pub free_bytes: Option<f64>,
    pub avail_bytes: Option<f64>,
    pub read_bytes: Option<f64>,
    pub written_bytes: Option<f64>,
}

/// One network interface's counters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Net {
    pub interface: String,
    pub rx_bytes: Option<f64>,
    pub tx_bytes: Option<f64>,
    pub rx_packets: Option<f64>,
    pub tx_packets: Option<f64>,
    pub rx_errors: Option<f64>,
    pub tx_errors: Option<f64>,
    pub rx_dropped: Option<f64>,
    pub tx_dropped: Option<f64>,
}

/// A custom metric.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Custom {
    /// Metric name (Prometheus rules).
    pub name: String,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
    /// Its own timestamp, if different from the snapshot's.
    pub timestamp_ms: Option<i64>,
}

struct Emit<'a> {
    batch: &'a mut WriteBatch,
    limits: &'a Limits,
    common: Vec<(String, String)>,
    ts: i64,
    sum: Summary,
}

impl Emit<'_> {
    fn series(
        &mut self,
        field: &'static str,
        name: &str,
        labels: &[(&str, &str)],
        v: Option<f64>,
        ts: Option<i64>,
    ) -> Result<(), DecodeError> {
        let Some(v) = v else { return Ok(()) };
        self.batch.push_label("__name__", name);
        for (k, val) in labels {
            self.batch.push_label(k, val);
        }
        for (k, val) in &self.common {
            if !labels.iter().any(|l| l.0 == k) {
                self.batch.push_label(k, val);
            }
        }
        self.batch.push_sample(ts.unwrap_or(self.ts), v);
        let idx = self.sum.series;
        self.batch
            .finish_series(&self.limits.labels)
            .map_err(|e| DecodeError::Field {
                series: idx,
                field,
                reason: e.to_string(),
            })?;
        self.sum.series += 1;
        self.limits.check_expansion(self.batch)?;
        self.sum.samples += 1;
        Ok(())
    }
}

/// Decodes a snapshot.
pub fn decode(
    body: &[u8],
    now_ms: i64,
    limits: &Limits,
    batch: &mut WriteBatch,
) -> Result<Summary, DecodeError> {
    limits.check_body(body.len())?;
    let s: Snapshot = serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))?;
    if s.agent_id.is_empty() || s.agent_id.len() > 128 {
        return Err(DecodeError::Field {
            series: 0,
            field: "agent_id",
            reason: "must be 1–128 characters".into(),
        });
    }
    let mut common: Vec<(String, String)> = s
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    common.push(("agent".into(), s.agent_id.clone()));
    common.push(("instance".into(), s.agent_id.clone()));
    if !s.labels.contains_key("job") {
        common.push(("job".into(), "vigil-agent".into()));
    }
    let mut e = Emit {
        batch,
        limits,
        common,
        ts: s.timestamp_ms.unwrap_or(now_ms),
        sum: Summary::default(),
    };
    if let Some(c) = &s.cpu {
        e.series(
            "cpu.usage_percent",
            "vigil_cpu_usage_percent",
            &[],
            c.usage_percent,
            None,
        )?;
        e.series("cpu.cores", "vigil_cpu_cores", &[], c.cores, None)?;
        e.series("cpu.load1", "node_load1", &[], c.load1, None)?;
        e.series("cpu.load5", "node_load5", &[], c.load5, None)?;
        e.series("cpu.load15", "node_load15", &[], c.load15, None)?;
        for (mode, v) in &c.seconds {
            e.series(
                "cpu.seconds",
                "node_cpu_seconds_total",
                &[("cpu", "all"), ("mode", mode)],
                Some(*v),
                None,
            )?;
        }
    }
    if let Some(m) = &s.memory {
        for (f, n, v) in [
            (
                "memory.total_bytes",
                "node_memory_MemTotal_bytes",
                m.total_bytes,
            ),
            (
                "memory.available_bytes",
                "node_memory_MemAvailable_bytes",
                m.available_bytes,
            ),
            (
                "memory.free_bytes",
                "node_memory_MemFree_bytes",
                m.free_bytes,
            ),
            (
                "memory.cached_bytes",
                "node_memory_Cached_bytes",
                m.cached_bytes,
            ),
            (
                "memory.buffers_bytes",
                "node_memory_Buffers_bytes",
                m.buffers_bytes,
            ),
            (
                "memory.swap_total_bytes",
                "node_memory_SwapTotal_bytes",
                m.swap_total_bytes,
            ),
            (
                "memory.swap_free_bytes",
                "node_memory_SwapFree_bytes",
                m.swap_free_bytes,
            ),
            ("memory.used_bytes", "vigil_memory_used_bytes", m.used_bytes),
        ] {
            e.series(f, n, &[], v, None)?;
        }
    }
    for d in &s.disks {
        let fl = [
            ("mountpoint", d.mountpoint.as_str()),
            ("device", d.device.as_str()),
            ("fstype", d.fstype.as_str()),
        ];
        e.series(
            "disks.total_bytes",
            "node_filesystem_size_bytes",
            &fl,
            d.total_bytes,
            None,
        )?;
        e.series(
            "disks.free_bytes",
            "node_filesystem_free_bytes",
            &fl,
            d.free_bytes,
            None,
        )?;
        e.series(
            "disks.avail_bytes",
            "node_filesystem_avail_bytes",
            &fl,
            d.avail_bytes,
            None,
        )?;
        let dl = [("device", d.device.as_str())];
        e.series(
            "disks.read_bytes",
            "node_disk_read_bytes_total",
            &dl,
            d.read_bytes,
            None,
        )?;
        e.series(
            "disks.written_bytes",
            "node_disk_written_bytes_total",
            &dl,
            d.written_bytes,
            None,
        )?;
    }
    for n in &s.network {
        let l = [("device", n.interface.as_str())];
        for (f, name, v) in [
            (
                "network.rx_bytes",
                "node_network_receive_bytes_total",
                n.rx_bytes,
            ),
            (
                "network.tx_bytes",
                "node_network_transmit_bytes_total",
                n.tx_bytes,
            ),
            (
                "network.rx_packets",
                "node_network_receive_packets_total",
                n.rx_packets,
            ),
            (
                "network.tx_packets",
                "node_network_transmit_packets_total",
                n.tx_packets,
            ),
            (
                "network.rx_errors",
                "node_network_receive_errs_total",
                n.rx_errors,
            ),
            (
                "network.tx_errors",
                "node_network_transmit_errs_total",
                n.tx_errors,
            ),
            (
                "network.rx_dropped",
                "node_network_receive_drop_total",
                n.rx_dropped,
            ),
            (
                "network.tx_dropped",
                "node_network_transmit_drop_total",
                n.tx_dropped,
            ),
        ] {
            e.series(f, name, &l, v, None)?;
        }
    }
    for m in &s.metrics {
        let l: Vec<(&str, &str)> = m
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        e.series("metrics", &m.name, &l, Some(m.value), m.timestamp_ms)?;
    }
    limits.check_samples(e.sum.samples)?;
    Ok(e.sum)
}
