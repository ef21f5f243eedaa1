//! The reference fleet dataset: N agents × ~100 node_exporter-like series at a fixed interval,
//! generated deterministically from a seed.
//!
//! Benchmarks (ingestion, storage size, queries), the simulator and tests share this data so
//! their numbers are comparable. The same seed always gives the same labels, timestamps and
//! values on every platform. The generator is a plain iterator over scrapes; it does no I/O.
//!
//! The data is meant to look like a real fleet, not like a compression demo: CPU-seconds
//! counters with two decimals, memory and filesystem gauges in whole kibibytes that wander,
//! network and disk byte counters with occasional resets, load averages, temperatures,
//! full-precision timing gauges, a few constants, and scrape timestamps with a per-agent phase
//! and a few milliseconds of jitter.
//!
//! ```
//! use vigil_fleet::{Fleet, FleetSpec};
//! let mut fleet = Fleet::new(FleetSpec { agents: 3, ..FleetSpec::default() });
//! let mut out = Vec::new();
//! fleet.next_step(&mut out);
//! assert_eq!(out.len(), fleet.series().len());
//! assert_eq!(fleet.series().len(), 3 * vigil_fleet::SERIES_PER_AGENT);
//! ```

use vigil_model::Labels;

/// Number of series each agent exposes.
pub const SERIES_PER_AGENT: usize = 106;

/// What to generate.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Number of agents.
    pub agents: usize,
    /// Seed; the same seed gives the same dataset.
    pub seed: u64,
    /// Timestamp of the first scrape round, in ms.
    pub start_ms: i64,
    /// Scrape interval in ms.
    pub interval_ms: i64,
    /// Maximum absolute per-sample timestamp jitter in ms.
    pub jitter_ms: i64,
    /// Value of the `env` label.
    pub env: String,
    /// Number of zones agents are spread over (`zone-a`, `zone-b`, …).
    pub zones: usize,
}

impl Default for FleetSpec {
    fn default() -> Self {
        Self {
            agents: 1_000,
            seed: 42,
            // 2026-01-01T00:00:00Z
            start_ms: 1_767_225_600_000,
            interval_ms: 10_000,
            jitter_ms: 5,
            env: "prod".to_string(),
            zones: 4,
        }
    }
}

/// One generated sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FleetSample {
    /// Index into [`Fleet::series`].
    pub series: u32,
    /// Timestamp in ms.
    pub ts_ms: i64,
    /// Value.
    pub value: f64,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Never changes.
    Const,
    /// Monotonic counter: per second increase `rate` ± `noise` (relative), rounded to
    /// `quantum`, reset to 0 with probability `reset_p` per scrape.
    Counter {
        rate: f64,
        noise: f64,
        quantum: f64,
        reset_p: f64,
    },
    /// Random walk around `mean` with relative step `step`, within [lo, hi], rounded to `quantum`.
    Gauge {
        mean: f64,
        step: f64,
        lo: f64,
        hi: f64,
        quantum: f64,
    },
    /// Fresh noise every scrape around `mean` (relative spread `spread`), full precision.
    Noise { mean: f64, spread: f64 },
    /// Exponential moving average of a random walk, like the kernel's load averages.
    Load { alpha: f64 },
    /// The scrape timestamp in seconds with millisecond precision (node_time_seconds).
    Clock,
}

#[derive(Debug, Clone, Copy)]
struct SeriesState {
    kind: Kind,
    value: f64,
}

/// A deterministic generator of the reference fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    spec: FleetSpec,
    series: Vec<Labels>,
    state: Vec<SeriesState>,
    /// Per agent: phase offset within the interval, in ms.
    phase: Vec<i64>,
    /// Per agent: latent "busyness" driving the load averages.
    busy: Vec<f64>,
    rng: Rng,
    step: i64,
}

impl Fleet {
    /// Builds the fleet's series and initial state.
    pub fn new(spec: FleetSpec) -> Self {
        let mut rng = Rng::new(spec.seed);
        let mut series = Vec::with_capacity(spec.agents * SERIES_PER_AGENT);
        let mut state = Vec::with_capacity(spec.agents * SERIES_PER_AGENT);
        let mut phase = Vec::with_capacity(spec.agents);
        let mut busy = Vec::with_capacity(spec.agents);
        for a in 0..spec.agents {
            let before = series.len();
            build_agent(&spec, a, &mut rng, &mut series, &mut state);
            debug_assert_eq!(series.len() - before, SERIES_PER_AGENT);
            phase.push((rng.next_u64() % spec.interval_ms.max(1) as u64) as i64);
            busy.push(rng.uniform(0.05, 0.6));
        }
        Self {
            spec,
            series,
            state,
            phase,
            busy,
            rng,
            step: 0,
        }
    }

    /// The label sets of all series; a sample's `series` indexes this slice.
    pub fn series(&self) -> &[Labels] {
        &self.series
    }

    /// The spec this fleet was built from.
    pub fn spec(&self) -> &FleetSpec {
        &self.spec
    }

    /// Number of scrape rounds generated so far.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// Generates the next scrape round: one sample for every series, agent by agent, appended
    /// to `out` (which the caller clears and reuses).
    pub fn next_step(&mut self, out: &mut Vec<FleetSample>) {
        let base = self.spec.start_ms + self.step * self.spec.interval_ms;
        let interval_s = self.spec.interval_ms as f64 / 1000.0;
        out.reserve(self.series.len());
        for a in 0..self.spec.agents {
            let j = self.spec.jitter_ms;
            let jitter = if j > 0 {
                (self.rng.next_u64() % (2 * j as u64 + 1)) as i64 - j
            } else {
                0
            };
            let ts = base + self.phase[a] + jitter;
            self.busy[a] = (self.busy[a] + self.rng.normal() * 0.05).clamp(0.0, 1.0);
            let busy = self.busy[a];
            let first = a * SERIES_PER_AGENT;
            for s in first..first + SERIES_PER_AGENT {
                let v = advance(
                    &mut self.state[s],
                    &mut self.rng,
                    interval_s,
                    ts,
                    busy,
                    self.step == 0,
                );
                out.push(FleetSample {
                    series: s as u32,
                    ts_ms: ts,
                    value: v,
                });
            }
        }
        self.step += 1;
    }
}

fn quantize(v: f64, q: f64) -> f64 {
    if q <= 0.0 {
        return v;
    }
    let n = (v / q).round();
    if q >= 1.0 {
        n * q
    } else {
        // n / 10^k is the double nearest the decimal n·10^-k, exactly what an exporter's
        // printed value parses back to (no format/parse round trip on the hot path).
        n / (1.0 / q).round()
    }
}

fn advance(st: &mut SeriesState, rng: &mut Rng, dt: f64, ts: i64, busy: f64, first: bool) -> f64 {
    match st.kind {
        Kind::Const => {}
        Kind::Counter {
            rate,
            noise,
            quantum,
            reset_p,
        } => {
            if !first {
                if reset_p > 0.0 && rng.unit() < reset_p {
                    st.value = 0.0;
                } else {
                    let r = rate * (1.0 + noise * rng.normal()).max(0.0);
                    st.value = quantize(st.value + r * dt, quantum);
                }
            }
        }
        Kind::Gauge {
            mean,
            step,
            lo,
            hi,
            quantum,
        } => {
            if !first {
                let pull = (mean - st.value) * 0.02;
                let v = st.value + pull + mean * step * rng.normal();
                st.value = quantize(v.clamp(lo, hi), quantum);
            }
        }
        Kind::Noise { mean, spread } => {
            st.value = (mean * (1.0 + spread * rng.normal())).abs();
        }
        Kind::Load { alpha } => {
            let target = busy * 4.0;
            st.value = quantize(st.value + alpha * (target - st.value), 0.01);
        }
        Kind::Clock => {
            st.value = ts as f64 / 1000.0;
        }
    }
    st.value
}

fn build_agent(
    spec: &FleetSpec,
    a: usize,
    rng: &mut Rng,
    series: &mut Vec<Labels>,
    state: &mut Vec<SeriesState>,
) {
    let agent = format!("agent-{a:05}");
    let zone = format!(
        "zone-{}",
        (b'a' + (a % spec.zones.clamp(1, 26)) as u8) as char
    );
    let instance = format!("{agent}:9100");
    let env = spec.env.clone();
    let mut push = |name: &str, extra: &[(&str, &str)], kind: Kind, value: f64| {
        let mut pairs: Vec<(String, String)> = vec![
            ("__name__".into(), name.into()),
            ("env".into(), env.clone()),
            ("agent".into(), agent.clone()),
            ("zone".into(), zone.clone()),
            ("job".into(), "node".into()),
            ("instance".into(), instance.clone()),
        ];
        pairs.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        series.push(Labels::from_pairs(pairs));
        state.push(SeriesState { kind, value });
    };
    let counter = |rate: f64, noise: f64, quantum: f64, reset_p: f64| Kind::Counter {
        rate,
        noise,
        quantum,
        reset_p,
    };
    let uptime = rng.uniform(3_600.0, 90.0 * 86_400.0);
    let q = |v: f64, qq: f64| quantize(v, qq);

    // CPU: 2 cpus × 8 modes = 16 counters (USER_HZ → two decimals).
    let modes = [
        ("idle", 0.70),
        ("user", 0.15),
        ("system", 0.08),
        ("iowait", 0.02),
        ("irq", 0.004),
        ("softirq", 0.01),
        ("steal", 0.0),
        ("nice", 0.001),
    ];
    for cpu in ["0", "1"] {
        for (mode, frac) in modes {
            let kind = if frac == 0.0 {
                Kind::Const
            } else {
                counter(frac, 0.3, 0.01, 0.0)
            };
            push(
                "node_cpu_seconds_total",
                &[("cpu", cpu), ("mode", mode)],
                kind,
                q(uptime * frac, 0.01),
            );
        }
    }
    // Memory: 10 series, /proc/meminfo is in kB.
    let total = [8.0, 16.0, 32.0][a % 3] * 1024.0 * 1024.0 * 1024.0;
    let kib = 1024.0;
    let mem_gauge = |frac: f64, step: f64| Kind::Gauge {
        mean: total * frac,
        step,
        lo: 0.0,
        hi: total,
        quantum: kib,
    };
    push("node_memory_MemTotal_bytes", &[], Kind::Const, total);
    push(
        "node_memory_MemFree_bytes",
        &[],
        mem_gauge(0.2, 0.01),
        q(total * 0.2, kib),
    );
    push(
        "node_memory_MemAvailable_bytes",
        &[],
        mem_gauge(0.55, 0.005),
        q(total * 0.55, kib),
    );
    push(
        "node_memory_Buffers_bytes",
        &[],
        mem_gauge(0.02, 0.002),
        q(total * 0.02, kib),
    );
    push(
        "node_memory_Cached_bytes",
        &[],
        mem_gauge(0.35, 0.003),
        q(total * 0.35, kib),
    );
    push(
        "node_memory_SwapTotal_bytes",
        &[],
        Kind::Const,
        2.0 * 1024.0 * 1024.0 * 1024.0,
    );
    push(
        "node_memory_SwapFree_bytes",
        &[],
        mem_gauge(0.09, 0.0001),
        q(total * 0.09, kib),
    );
    push(
        "node_memory_Active_bytes",
        &[],
        mem_gauge(0.3, 0.004),
        q(total * 0.3, kib),
    );
    push(
        "node_memory_Inactive_bytes",
        &[],
        mem_gauge(0.25, 0.004),
        q(total * 0.25, kib),
    );
    push(
        "node_memory_Dirty_bytes",
        &[],
        mem_gauge(0.0005, 0.0003),
        q(total * 0.0005, kib),
    );
    // Filesystems: 3 mounts × 5 = 15.
    for (mp, dev, size_gb) in [
        ("/", "/dev/sda1", 50.0),
        ("/var", "/dev/sda2", 200.0),
        ("/boot", "/dev/sda3", 1.0),
    ] {
        let size = size_gb * 1024.0 * 1024.0 * 1024.0;
        let l = [("device", dev), ("fstype", "ext4"), ("mountpoint", mp)];
        let fill = rng.uniform(0.1, 0.8);
        let free_gauge = Kind::Gauge {
            mean: size * (1.0 - fill),
            step: 0.0002,
            lo: 0.0,
            hi: size,
            quantum: 4096.0,
        };
        push("node_filesystem_size_bytes", &l, Kind::Const, size);
        push(
            "node_filesystem_free_bytes",
            &l,
            free_gauge,
            q(size * (1.0 - fill), 4096.0),
        );
        push(
            "node_filesystem_avail_bytes",
            &l,
            free_gauge,
            q(size * (0.95 - fill).max(0.0), 4096.0),
        );
        push(
            "node_filesystem_files",
            &l,
            Kind::Const,
            (size / 16384.0).round(),
        );
        push(
            "node_filesystem_files_free",
            &l,
            Kind::Gauge {
                mean: size / 16384.0 * 0.9,
                step: 0.00005,
                lo: 0.0,
                hi: size / 16384.0,
                quantum: 1.0,
            },
            (size / 16384.0 * 0.9).round(),
        );
    }
    // Network: 2 devices × 8 counters = 16, with rare resets.
    for (dev, scale) in [("eth0", 1.0), ("lo", 0.1)] {
        let l = [("device", dev)];
        let bw = rng.uniform(1e4, 5e6) * scale;
        for (name, rate, noise) in [
            ("node_network_receive_bytes_total", bw, 0.5),
            ("node_network_transmit_bytes_total", bw * 0.6, 0.5),
            ("node_network_receive_packets_total", bw / 900.0, 0.4),
            ("node_network_transmit_packets_total", bw / 1100.0, 0.4),
            ("node_network_receive_errs_total", 0.0005, 3.0),
            ("node_network_transmit_errs_total", 0.0002, 3.0),
            ("node_network_receive_drop_total", 0.002, 2.0),
            ("node_network_transmit_drop_total", 0.0, 0.0),
        ] {
            let kind = if rate == 0.0 {
                Kind::Const
            } else {
                counter(rate, noise, 1.0, 2e-5)
            };
            push(name, &l, kind, (rate * uptime).round());
        }
    }
    // Disks: 2 × 5 = 10.
    for dev in ["sda", "sdb"] {
        let l = [("device", dev)];
        let io = rng.uniform(1e4, 2e6);
        push(
            "node_disk_read_bytes_total",
            &l,
            counter(io, 0.8, 512.0, 0.0),
            q(io * uptime, 512.0),
        );
        push(
            "node_disk_written_bytes_total",
            &l,
            counter(io * 1.5, 0.8, 512.0, 0.0),
            q(io * 1.5 * uptime, 512.0),
        );
        push(
            "node_disk_reads_completed_total",
            &l,
            counter(io / 16384.0, 0.8, 1.0, 0.0),
            (io / 16384.0 * uptime).round(),
        );
        push(
            "node_disk_writes_completed_total",
            &l,
            counter(io / 8192.0, 0.8, 1.0, 0.0),
            (io / 8192.0 * uptime).round(),
        );
        push(
            "node_disk_io_time_seconds_total",
            &l,
            counter(0.05, 0.8, 0.001, 0.0),
            q(0.05 * uptime, 0.001),
        );
    }
    // Load averages: 3.
    push("node_load1", &[], Kind::Load { alpha: 0.15 }, 0.5);
    push("node_load5", &[], Kind::Load { alpha: 0.033 }, 0.5);
    push("node_load15", &[], Kind::Load { alpha: 0.011 }, 0.5);
    // Misc system: 7.
    let boot = (spec.start_ms as f64 / 1000.0 - uptime).round();
    push("node_boot_time_seconds", &[], Kind::Const, boot);
    push(
        "node_time_seconds",
        &[],
        Kind::Clock,
        spec.start_ms as f64 / 1000.0,
    );
    push(
        "node_procs_running",
        &[],
        Kind::Gauge {
            mean: 3.0,
            step: 0.3,
            lo: 1.0,
            hi: 64.0,
            quantum: 1.0,
        },
        2.0,
    );
    push(
        "node_procs_blocked",
        &[],
        Kind::Gauge {
            mean: 0.3,
            step: 0.5,
            lo: 0.0,
            hi: 16.0,
            quantum: 1.0,
        },
        0.0,
    );
    push(
        "node_context_switches_total",
        &[],
        counter(3000.0, 0.3, 1.0, 0.0),
        (3000.0 * uptime).round(),
    );
    push(
        "node_intr_total",
        &[],
        counter(2000.0, 0.3, 1.0, 0.0),
        (2000.0 * uptime).round(),
    );
    push(
        "node_forks_total",
        &[],
        counter(5.0, 0.5, 1.0, 0.0),
        (5.0 * uptime).round(),
    );
    // Info and up: 2.
    push(
        "node_uname_info",
        &[("release", "6.1.0-28-amd64"), ("sysname", "Linux")],
        Kind::Const,
        1.0,
    );
    push("up", &[], Kind::Const, 1.0);
    // CPU frequency: 2.
    for cpu in ["0", "1"] {
        push(
            "node_cpu_scaling_frequency_hertz",
            &[("cpu", cpu)],
            Kind::Gauge {
                mean: 2.4e9,
                step: 0.05,
                lo: 8e8,
                hi: 3.6e9,
                quantum: 1000.0,
            },
            2.4e9,
        );
    }
    // Kernel tables: 1 + 4 + 3 = 8.
    push("node_entropy_available_bits", &[], Kind::Const, 256.0);
    push(
        "node_sockstat_TCP_inuse",
        &[],
        Kind::Gauge {
            mean: 40.0,
            step: 0.05,
            lo: 0.0,
            hi: 5000.0,
            quantum: 1.0,
        },
        40.0,
    );
    push(
        "node_netstat_Tcp_CurrEstab",
        &[],
        Kind::Gauge {
            mean: 25.0,
            step: 0.05,
            lo: 0.0,
            hi: 5000.0,
            quantum: 1.0,
        },
        25.0,
    );
    push(
        "node_filefd_allocated",
        &[],
        Kind::Gauge {
            mean: 2000.0,
            step: 0.01,
            lo: 0.0,
            hi: 1e6,
            quantum: 1.0,
        },
        2000.0,
    );
    push(
        "node_filefd_maximum",
        &[],
        Kind::Const,
        9.223372036854776e18,
    );
    push(
        "node_vmstat_pgfault",
        &[],
        counter(800.0, 0.5, 1.0, 0.0),
        (800.0 * uptime).round(),
    );
    push(
        "node_vmstat_pgmajfault",
        &[],
        counter(0.2, 2.0, 1.0, 0.0),
        (0.2 * uptime).round(),
    );
    push("node_vmstat_oom_kill", &[], Kind::Const, 0.0);
    // Temperatures: 4 (whole degrees).
    for sensor in ["temp1", "temp2", "temp3", "temp4"] {
        push(
            "node_hwmon_temp_celsius",
            &[("chip", "platform_coretemp_0"), ("sensor", sensor)],
            Kind::Gauge {
                mean: 48.0,
                step: 0.01,
                lo: 20.0,
                hi: 100.0,
                quantum: 1.0,
            },
            48.0,
        );
    }
    // Pressure: 3 (microsecond resolution).
    for name in [
        "node_pressure_cpu_waiting_seconds_total",
        "node_pressure_memory_waiting_seconds_total",
        "node_pressure_io_waiting_seconds_total",
    ] {
        push(
            name,
            &[],
            counter(0.01, 1.0, 1e-6, 0.0),
            q(0.01 * uptime, 1e-6),
        );
    }
    // The exporter's own process: 4; Go runtime: 2.
    push(
        "process_cpu_seconds_total",
        &[],
        counter(0.004, 0.5, 0.01, 0.0),
        q(0.004 * uptime, 0.01),
    );
    push(
        "process_resident_memory_bytes",
        &[],
        Kind::Gauge {
            mean: 2.2e7,
            step: 0.01,
            lo: 1e7,
            hi: 1e8,
            quantum: 4096.0,
        },
        2.2e7,
    );
    push(
        "process_open_fds",
        &[],
        Kind::Gauge {
            mean: 9.0,
            step: 0.05,
            lo: 5.0,
            hi: 100.0,
            quantum: 1.0,
        },
        9.0,
    );
    push(
        "process_start_time_seconds",
        &[],
        Kind::Const,
        q(boot + 12.34, 0.01),
    );
    push(
        "go_goroutines",
        &[],
        Kind::Gauge {
            mean: 8.0,
            step: 0.05,
            lo: 5.0,
            hi: 50.0,
            quantum: 1.0,
        },
        8.0,
    );
    push(
        "go_memstats_alloc_bytes",
        &[],
        Kind::Noise {
            mean: 3.5e6,
            spread: 0.2,
        },
        3.5e6,
    );
    // Scrape timings: 3 full-precision floats; one constant error flag.
    for collector in ["cpu", "filesystem", "netdev"] {
        push(
            "node_scrape_collector_duration_seconds",
            &[("collector", collector)],
            Kind::Noise {
                mean: 0.0004,
                spread: 0.3,
            },
            0.0004,
        );
    }
    push("node_textfile_scrape_error", &[], Kind::Const, 0.0);
}

/// A small deterministic PRNG (xorshift64* seeded through splitmix64).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Approximately standard normal (sum of four uniforms, rescaled).
    fn normal(&mut self) -> f64 {
        let s = self.unit() + self.unit() + self.unit() + self.unit();
        (s - 2.0) * 1.732_050_807_568_877_2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generate(spec: FleetSpec, steps: usize) -> Vec<FleetSample> {
        let mut f = Fleet::new(spec);
        let mut out = Vec::new();
        for _ in 0..steps {
            f.next_step(&mut out);
        }
        out
    }

    #[test]
    fn same_seed_same_data_other_seed_other_data() {
        let spec = FleetSpec {
            agents: 5,
            ..FleetSpec::default()
        };
        let a = generate(spec.clone(), 20);
        let b = generate(spec.clone(), 20);
        assert_eq!(a, b);
        let c = generate(FleetSpec { seed: 7, ..spec }, 20);
        assert_ne!(a, c);
    }

    #[test]
    fn every_agent_has_the_expected_series_and_labels() {
        let f = Fleet::new(FleetSpec {
            agents: 7,
            ..FleetSpec::default()
        });
        assert_eq!(f.series().len(), 7 * SERIES_PER_AGENT);
        let mut uniq = std::collections::HashSet::new();
        for l in f.series() {
            for name in ["__name__", "env", "agent", "zone", "job", "instance"] {
                assert!(l.get(name).is_some(), "{l} lacks {name}");
            }
            assert!(uniq.insert(l.clone()), "duplicate series {l}");
            vigil_model::LabelLimits::default().validate(l).unwrap();
        }
    }

    #[test]
    fn quantize_gives_the_shortest_decimal_like_a_printed_value() {
        for (v, q) in [
            (12_345.678_9_f64, 0.01_f64),
            (0.1 + 0.2, 0.01),
            (3.000_000_4, 1e-6),
            (4097.3, 1024.0),
            (0.004_999, 0.001),
        ] {
            let digits = (-q.log10()).ceil().max(0.0) as usize;
            let printed: f64 = format!("{:.digits$}", (v / q).round() * q).parse().unwrap();
            assert_eq!(quantize(v, q).to_bits(), printed.to_bits(), "{v} {q}");
        }
    }

    #[test]
    fn counters_only_go_up_except_on_reset_and_timestamps_advance() {
        let spec = FleetSpec {
            agents: 20,
            ..FleetSpec::default()
        };
        let mut f = Fleet::new(spec.clone());
        let names: Vec<String> = f
            .series()
            .iter()
            .map(|l| l.metric_name().unwrap().to_string())
            .collect();
        let mut prev = Vec::new();
        let mut cur = Vec::new();
        f.next_step(&mut prev);
        let mut resets = 0;
        for _ in 0..500 {
            cur.clear();
            f.next_step(&mut cur);
            for (p, c) in prev.iter().zip(&cur) {
                assert!(c.ts_ms > p.ts_ms);
                let d = c.ts_ms - p.ts_ms;
                assert!((d - spec.interval_ms).abs() <= 2 * spec.jitter_ms, "{d}");
                if names[c.series as usize].ends_with("_total") && c.value < p.value {
                    assert_eq!(c.value, 0.0, "counter went down without reset");
                    resets += 1;
                }
            }
            std::mem::swap(&mut prev, &mut cur);
        }
        assert!(
            resets > 0,
            "expected a few counter resets in 20 agents × 500 scrapes"
        );
    }
}
