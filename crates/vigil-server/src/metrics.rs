//! Vigil's metrics about itself, rendered in the Prometheus text format at `GET /metrics`.
//!
//! Counters are kept per (bounded) label set behind short mutexes; request latency is a
//! fixed-bucket histogram per route. Store and process figures are read at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Hist {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// Everything recorded per route: requests by status and the latency histogram.
#[derive(Default)]
struct RouteStats {
    by_status: BTreeMap<u16, u64>,
    latency: Hist,
}

/// Self-metrics registry.
#[derive(Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<String, RouteStats>>,
    ingested: Mutex<BTreeMap<&'static str, u64>>,
    rejected: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Ingest requests being processed now.
    pub inflight_writes: AtomicI64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Records one finished request.
    /// One lock and, once a route is known, no allocation.
    pub fn request(&self, route: &str, status: u16, took: Duration) {
        let s = took.as_secs_f64();
        let mut routes = self.routes.lock();
        if !routes.contains_key(route) {
            routes.insert(route.to_string(), RouteStats::default());
        }
        let Some(r) = routes.get_mut(route) else {
            return;
        };
        *r.by_status.entry(status).or_default() += 1;
        let h = &mut r.latency;
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += s;
        h.count += 1;
    }

    /// Records samples stored for a protocol.
    pub fn ingested(&self, protocol: &'static str, n: usize) {
        *self.ingested.lock().entry(protocol).or_default() += n as u64;
    }

    /// Records samples refused for a protocol and reason.
    pub fn rejected(&self, protocol: &'static str, reason: &'static str, n: usize) {
        if n > 0 {
            *self.rejected.lock().entry((protocol, reason)).or_default() += n as u64;
        }
    }

    /// Renders everything, with store figures when the store is open.
    pub fn render(&self, store: Option<&vigil_tsdb::Stats>) -> String {
        let mut o = String::with_capacity(4096);
        o.push_str("# HELP vigil_http_requests_total HTTP requests by route and status.\n# TYPE vigil_http_requests_total counter\n");
        let routes = self.routes.lock();
        for (route, r) in routes.iter() {
            for (status, n) in &r.by_status {
                let _ = writeln!(
                    o,
                    "vigil_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        o.push_str("# HELP vigil_http_request_duration_seconds HTTP request latency by route.\n# TYPE vigil_http_request_duration_seconds histogram\n");
        for (route, h) in routes.iter().map(|(k, r)| (k, &r.latency)) {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "vigil_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                o,
                "vigil_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                o,
                "vigil_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                o,
                "vigil_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        o.push_str("# HELP vigil_ingest_samples_total Samples stored, by protocol.\n# TYPE vigil_ingest_samples_total counter\n");
        for (p, n) in self.ingested.lock().iter() {
            let _ = writeln!(o, "vigil_ingest_samples_total{{protocol=\"{p}\"}} {n}");
        }
        o.push_str("# HELP vigil_ingest_rejected_samples_total Samples refused, by protocol and reason.\n# TYPE vigil_ingest_rejected_samples_total counter\n");
        for ((p, r), n) in self.rejected.lock().iter() {
            let _ = writeln!(
                o,
                "vigil_ingest_rejected_samples_total{{protocol=\"{p}\",reason=\"{r}\"}} {n}"
            );
        }
        o.push_str("# HELP vigil_ingest_queue_depth Ingest requests being processed.\n# TYPE vigil_ingest_queue_depth gauge\n");
        let _ = writeln!(
            o,
            "vigil_ingest_queue_depth {}",
            self.inflight_writes.load(Ordering::Relaxed)
        );
        if let Some(s) = store {
            let g = |o: &mut String, name: &str, help: &str, v: f64| {
                let _ = write!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n");
            };
            g(
                &mut o,
                "vigil_tsdb_head_series",
                "Series in the head.",
                s.head_series as f64,
            );
            g(
                &mut o,
                "vigil_tsdb_head_bytes",
                "Approximate heap bytes of the head.",
                s.head_bytes as f64,
            );
            g(
                &mut o,
                "vigil_tsdb_blocks",
                "Blocks on disk.",
                s.blocks.len() as f64,
            );
            g(
                &mut o,
                "vigil_tsdb_block_bytes",
                "Bytes of raw blocks.",
                s.block_bytes as f64,
            );
            g(
                &mut o,
                "vigil_tsdb_wal_bytes",
                "Bytes of WAL files.",
                s.wal_bytes as f64,
            );
            g(
                &mut o,
                "vigil_tsdb_wal_sync_mean_seconds",
                "Mean WAL fsync latency.",
                s.wal_sync_mean_micros / 1e6,
            );
            g(
                &mut o,
                "vigil_tsdb_corrupt_files_seen",
                "Damaged files found (repaired or quarantined).",
                s.corrupt_files_seen as f64,
            );
            let _ = write!(
                o,
                "# HELP vigil_tsdb_wal_syncs_total WAL fsyncs.\n# TYPE vigil_tsdb_wal_syncs_total counter\nvigil_tsdb_wal_syncs_total {}\n",
                s.wal_syncs
            );
        }
        let (rss, cpu) = process_figures();
        let _ = write!(
            o,
            "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}\n"
        );
        let _ = write!(
            o,
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}\n"
        );
        o
    }
}

/// (RSS bytes, CPU seconds) of this process, from /proc.
pub fn process_figures() -> (u64, f64) {
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|x| x.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 4096;
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ut: f64 = f.get(11)?.parse().ok()?;
            let st: f64 = f.get(12)?.parse().ok()?;
            Some((ut + st) / 100.0)
        })
        .unwrap_or(0.0);
    (rss, cpu)
}
