//! [`Db`]: the store as a whole — opening and recovery, writes, reads, maintenance (cutting
//! the head into blocks, compaction, downsampling, retention, tombstone clean-up), snapshots
//! and statistics.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use vigil_model::{Labels, Matcher};

use crate::batch::WriteBatch;
use crate::block::{Block, BlockMeta, BlockWriter, write_meta};
use crate::codec::RollupPoint;
use crate::error::{Error, Result};
use crate::head::{Appended, Head, HeadOptions, Mode, RejectReason};
use crate::options::{Options, ms};
use crate::querier::{Querier, SampleIter};
use crate::tombstones::{self, Tombstone};
use crate::wal::record::{self, Record, SampleRec, TombstoneRec};
use crate::wal::{self, ReplayReport, SyncPolicy, Wal};

/// Rollup resolutions produced by downsampling.
pub const ROLLUP_RESOLUTIONS: [i64; 2] = [300_000, 3_600_000];

/// The longest span rollup blocks are compacted to (7 days, epoch-aligned): a week of 5 m
/// rollups is 2,016 points per series, one chunk.
pub const ROLLUP_BLOCK_RANGE: i64 = 7 * 86_400_000;

/// What opening the store found and did.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// WAL replay.
    pub replay: ReplayReport,
    /// Blocks loaded.
    pub blocks: usize,
    /// Blocks moved to `quarantine/` because they were damaged: (id, reason).
    pub quarantined: Vec<(String, String)>,
    /// Samples in the WAL that referred to unknown series (dropped).
    pub orphan_samples: u64,
}

/// One sample the store refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// Index of the series in the batch.
    pub series: usize,
    /// The sample's timestamp.
    pub ts_ms: i64,
    /// Why.
    pub reason: RejectReason,
}

/// Result of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOutcome {
    /// Samples stored.
    pub accepted: usize,
    /// Samples identical to what was already stored (ignored, not errors).
    pub unchanged: usize,
    /// Refused samples, by reason.
    pub rejected_too_old: usize,
    /// Refused: another value at the same timestamp.
    pub rejected_duplicate: usize,
    /// Refused: series limit.
    pub rejected_series_limit: usize,
    /// The first refused samples (at most 100), for error messages.
    pub rejected: Vec<Rejected>,
    /// New series created.
    pub series_created: usize,
}

impl WriteOutcome {
    /// Total refused samples.
    pub fn rejected_total(&self) -> usize {
        self.rejected_too_old + self.rejected_duplicate + self.rejected_series_limit
    }
}

/// Per-block figures in [`Stats`].
#[derive(Debug, Clone)]
pub struct BlockStats {
    /// Block id.
    pub id: String,
    /// Range start, ms.
    pub range_start: i64,
    /// Range end, ms.
    pub range_end: i64,
    /// 0 raw, else rollup resolution.
    pub resolution_ms: i64,
    /// Compaction level.
    pub level: u32,
    /// Series.
    pub series: u64,
    /// Samples or rollup points.
    pub samples: u64,
    /// Bytes on disk.
    pub bytes: u64,
}

/// Store statistics.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Series in the head.
    pub head_series: usize,
    /// Chunks in the head.
    pub head_chunks: usize,
    /// Samples in the head.
    pub head_samples: usize,
    /// Approximate heap bytes of the head (series, chunks, index, symbols).
    pub head_bytes: usize,
    /// Blocks.
    pub blocks: Vec<BlockStats>,
    /// Raw samples in blocks.
    pub block_samples: u64,
    /// Bytes of raw blocks.
    pub block_bytes: u64,
    /// Bytes per raw sample in blocks.
    pub bytes_per_sample: f64,
    /// Bytes of WAL files.
    pub wal_bytes: u64,
    /// WAL fsyncs so far.
    pub wal_syncs: u64,
    /// Mean WAL fsync latency, µs.
    pub wal_sync_mean_micros: f64,
    /// Time the last WAL replay took.
    pub replay_duration: Duration,
    /// Damaged files seen (WAL repairs + quarantined blocks + corrupt chunks read).
    pub corrupt_files_seen: u64,
    /// Samples accepted since open.
    pub samples_appended: u64,
    /// Samples rejected since open.
    pub samples_rejected: u64,
}

struct Inner {
    dir: PathBuf,
    opts: Options,
    head: Arc<Head>,
    wal: Wal,
    blocks: RwLock<Arc<Vec<Arc<Block>>>>,
    tombstones: RwLock<Arc<Vec<Tombstone>>>,
    maint: Mutex<()>,
    open_report: OpenReport,
    appended: AtomicU64,
    rejected: AtomicU64,
    corrupt_seen: AtomicU64,
    /// Blocks maintenance found damaged while reading them: compaction and downsampling skip
    /// them (until a restart), so one bad chunk does not stop maintenance of the rest.
    damaged: Mutex<HashSet<String>>,
    stop: Mutex<bool>,
    stop_cv: Condvar,
    closed: AtomicBool,
    _lock: fs::File,
}

/// The time-series store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Db {
    inner: Arc<Inner>,
    bg: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("dir", &self.inner.dir).finish()
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<SampleRec>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

fn quarantine(dir: &Path, block_dir: &Path) -> Result<()> {
    let q = dir.join("quarantine");
    fs::create_dir_all(&q).map_err(Error::io("create quarantine directory", &q))?;
    let name = block_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let target = q.join(name);
    fs::rename(block_dir, &target).map_err(Error::io("move block to quarantine", &target))
}

impl Db {
    /// Opens (or creates) the store in `dir`: loads blocks (quarantining damaged ones), replays
    /// the WAL (repairing a torn tail) and starts maintenance if configured.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Self> {
        opts.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let bdir = dir.join("blocks");
        fs::create_dir_all(&bdir).map_err(Error::io("create data directory", &bdir))?;
        let lock_path = dir.join("LOCK");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io("open lock file", &lock_path))?;
        if lock.try_lock().is_err() {
            return Err(Error::Locked {
                path: dir,
                lock: lock_path,
            });
        }
        let mut report = OpenReport::default();
        let mut blocks = Vec::new();
        for e in fs::read_dir(&bdir)
            .map_err(Error::io("list blocks", &bdir))?
            .flatten()
        {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".tmp") {
                let _ = fs::remove_dir_all(&p);
                continue;
            }
            if !p.is_dir() {
                continue;
            }
            match Block::open(&p) {
                Ok(b) => blocks.push(Arc::new(b)),
                Err(e @ Error::FutureFormat { .. }) => return Err(e),
                Err(e) => {
                    tracing::error!(block = %name, error = %e, "Damaged block moved to quarantine.");
                    quarantine(&dir, &p)?;
                    report.quarantined.push((name, e.to_string()));
                }
            }
        }
        blocks.sort_by_key(|b| (b.meta.range_start, b.meta.resolution_ms));
        report.blocks = blocks.len();
        let head = Arc::new(Head::new(HeadOptions {
            ooo_window_ms: ms(opts.ooo_window),
            chunk_samples: opts.head_chunk_samples,
            block_range_ms: ms(opts.block_ranges[0]),
            max_series_per_env: opts.max_series_per_env,
        }));
        let min_valid = blocks
            .iter()
            .filter(|b| b.meta.resolution_ms == 0)
            .map(|b| b.meta.range_end)
            .max()
            .unwrap_or(i64::MIN);
        head.min_valid.store(min_valid, Ordering::SeqCst);
        let tombs = tombstones::load(&dir)?;
        let wdir = dir.join("wal");
        let mut orphans = 0u64;
        report.replay = wal::replay(&wdir, |rec| replay_record(&head, rec, &mut orphans))?;
        report.orphan_samples = orphans;
        if head.num_series() > 0 {
            head.gc();
        }
        let wal = Wal::open(&wdir, opts.sync, opts.wal_segment_bytes)?;
        let corrupt = (report.replay.repairs.len() + report.quarantined.len()) as u64;
        tracing::info!(
            dir = %dir.display(),
            blocks = report.blocks,
            series = head.num_series(),
            records = report.replay.records,
            replay_ms = report.replay.duration.as_millis() as u64,
            "Store opened."
        );
        let inner = Arc::new(Inner {
            dir,
            opts,
            head,
            wal,
            blocks: RwLock::new(Arc::new(blocks)),
            tombstones: RwLock::new(Arc::new(tombs)),
            maint: Mutex::new(()),
            open_report: report,
            appended: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            corrupt_seen: AtomicU64::new(corrupt),
            damaged: Mutex::new(HashSet::new()),
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
            closed: AtomicBool::new(false),
            _lock: lock,
        });
        let mut bg = Vec::new();
        if let SyncPolicy::Interval(every) = inner.opts.sync {
            let i = inner.clone();
            bg.push(spawn_loop("vigil-wal-sync", i, every, |i| {
                if let Err(e) = i.wal.sync_all() {
                    tracing::error!(error = %e, "WAL sync failed.");
                }
            }));
        }
        if let Some(every) = inner.opts.maintenance_interval {
            let i = inner.clone();
            bg.push(spawn_loop("vigil-tsdb-maint", i, every, |i| {
                if let Err(e) = i.maintain() {
                    tracing::error!(error = %e, "Store maintenance failed.");
                }
            }));
        }
        Ok(Self { inner, bg })
    }

    /// What opening found (replay, repairs, quarantined blocks).
    pub fn open_report(&self) -> &OpenReport {
        &self.inner.open_report
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The options in force.
    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// Writes a batch. Returns once the accepted samples are in the WAL under the sync policy.
    /// Samples the store refuses (too old, conflicting duplicate, series limit) are reported
    /// in the outcome; they are not errors. An `Err` means nothing of the batch was acknowledged.
    pub fn write(&self, batch: &WriteBatch) -> Result<WriteOutcome> {
        self.inner.write(batch)
    }

    /// A read view of `env` over [mint, maxt] (inclusive, ms), clipped to retention.
    pub fn querier(&self, env: &str, mint: i64, maxt: i64) -> Querier {
        self.inner.querier(env, mint, maxt)
    }

    /// Deletes samples of series in `env` matching `matchers` within [mint, maxt].
    pub fn delete(&self, env: &str, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<()> {
        self.inner.delete(env, matchers, mint, maxt)
    }

    /// Runs one round of maintenance now: cut the head into blocks, checkpoint the WAL,
    /// compact, downsample, apply retention and pending deletions.
    pub fn maintain(&self) -> Result<()> {
        self.inner.maintain()
    }

    /// Writes a consistent copy of the store into `target` (which must not exist), using hard
    /// links for blocks where possible and writing the head as blocks. Opening `target` as a
    /// data directory restores it.
    pub fn snapshot(&self, target: impl AsRef<Path>) -> Result<()> {
        self.inner.snapshot(target.as_ref())
    }

    /// Series count per environment (head).
    pub fn envs(&self) -> Vec<(String, usize)> {
        self.inner.head.envs()
    }

    /// Series count per metric name in `env` (head, i.e. active series).
    pub fn cardinality(&self, env: &str) -> Vec<(String, usize)> {
        self.inner.head.cardinality(env)
    }

    /// Reads every chunk of every block and verifies its checksum; the first damage found is
    /// returned as [`Error::Corrupt`].
    pub fn blocks_verify_all(&self) -> Result<()> {
        let blocks = self.inner.blocks.read().clone();
        for b in blocks.iter() {
            b.verify()?;
        }
        Ok(())
    }

    /// Statistics.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Makes everything written so far durable (fsync) and stops background work.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        *self.inner.stop.lock() = true;
        self.inner.stop_cv.notify_all();
        for h in self.bg.drain(..) {
            let _ = h.join();
        }
        self.inner.wal.sync_all()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "Final WAL sync failed.");
        }
    }
}

fn spawn_loop(
    name: &str,
    inner: Arc<Inner>,
    every: Duration,
    f: fn(&Inner),
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            loop {
                {
                    let mut stop = inner.stop.lock();
                    if !*stop {
                        inner.stop_cv.wait_for(&mut stop, every);
                    }
                    if *stop {
                        return;
                    }
                }
                f(&inner);
            }
        })
        .expect("spawn store background thread")
}

fn replay_record(head: &Head, rec: Record, orphans: &mut u64) {
    match rec {
        Record::Series(ss) => {
            for s in ss {
                let pairs = s.labels.iter().map(|(n, v)| (n.as_str(), v.as_str()));
                let _ = head.get_or_create::<()>(&s.env, pairs, Some(s.sref), |_| Ok(()));
            }
        }
        Record::Samples(ss) => {
            let mut last: Option<Arc<crate::head::MemSeries>> = None;
            for s in ss {
                let series = match &last {
                    Some(m) if m.sref == s.sref => m.clone(),
                    _ => match head.by_ref(s.sref) {
                        Some(m) => m,
                        None => {
                            *orphans += 1;
                            continue;
                        }
                    },
                };
                let mut d = series.data.lock();
                if head.append_locked(&mut d, s.ts, s.v, Mode::Replay) == Ok(Appended::New) {
                    head.note_range(s.ts, s.ts);
                }
                drop(d);
                last = Some(series);
            }
        }
        Record::Tombstone(t) => {
            let ms: Vec<Matcher> = t
                .matchers
                .iter()
                .filter_map(|(op, n, v)| Matcher::new(*op, n, v).ok())
                .collect();
            head.delete(&t.env, &ms, t.mint, t.maxt);
        }
    }
}

fn merge_samples(parts: &mut Vec<(i64, u8, f64)>, out: &mut Vec<(i64, f64)>) {
    parts.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    parts.dedup_by_key(|x| x.0);
    out.extend(parts.drain(..).map(|(t, _, v)| (t, v)));
}

/// Rolls sorted samples up into buckets of `res` ms, each point keyed by its bucket's end.
fn rollup(samples: &[(i64, f64)], res: i64, out: &mut Vec<RollupPoint>) {
    out.clear();
    for &(t, v) in samples {
        // The bucket ending at `b` holds (b − res, b]: PromQL's left-open windows.
        let b = match t.rem_euclid(res) {
            0 => t,
            r => t - r + res,
        };
        match out.last_mut() {
            Some(p) if p.ts_ms == b => p.push(t, v),
            _ if vigil_model::is_stale_marker(v) => out.push(RollupPoint::only_stale(b)),
            _ => out.push(RollupPoint::of_sample(b, t, v)),
        }
    }
}

impl Inner {
    fn now(&self) -> i64 {
        self.opts.clock.now_ms()
    }

    fn env_retention_ms(&self, env: &str) -> i64 {
        self.opts
            .env_retention
            .get(env)
            .map_or(ms(self.opts.retention), |d| ms(*d))
    }

    fn write(&self, batch: &WriteBatch) -> Result<WriteOutcome> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::Poisoned("the store is closed".into()));
        }
        let env = batch.env().as_str();
        let mut out = WriteOutcome::default();
        SCRATCH.with(|cell| {
            let mut guard = cell.borrow_mut();
            let (buf, recs) = &mut *guard;
            recs.clear();
            // The head's time range is noted once per batch: two shared atomics per sample
            // would bounce a cache line between writer threads.
            let (mut lo, mut hi) = (i64::MAX, i64::MIN);
            // Every series is looked up first, one shard lock at a time, so the lookups' cache
            // misses overlap; deferred label checks run for the series not found, before
            // anything is stored.
            let mut found = self.head.find_many(&batch.hashes);
            for (i, f) in found.iter().enumerate() {
                if f.is_none() && !batch.samples_of(i).is_empty() {
                    batch
                        .check_deferred(i)
                        .map_err(|source| Error::InvalidLabels {
                            series_index: i,
                            source,
                        })?;
                }
            }
            for (i, slot) in found.iter_mut().enumerate() {
                let samples = batch.samples_of(i);
                if samples.is_empty() {
                    continue;
                }
                let mut known = slot.take();
                loop {
                    let r = if let Some(series) = known.take() {
                        Ok(crate::head::Resolved {
                            series,
                            created: false,
                        })
                    } else {
                        self.head.get_or_create_hashed(
                            env,
                            batch.hashes[i],
                            batch.label_pairs(i),
                            None,
                            |sref| {
                                buf.clear();
                                record::encode_series(
                                    buf,
                                    std::iter::once((sref, env, batch.label_pairs(i).collect())),
                                );
                                self.wal.append(buf).map(|_| ())
                            },
                        )?
                    };
                    let res = match r {
                        Ok(res) => res,
                        Err(reason) => {
                            for &(t, _) in samples {
                                out.rejected_series_limit += 1;
                                if out.rejected.len() < 100 {
                                    out.rejected.push(Rejected {
                                        series: i,
                                        ts_ms: t,
                                        reason,
                                    });
                                }
                            }
                            break;
                        }
                    };
                    let mut d = res.series.data.lock();
                    if d.deleted {
                        // Removed by head GC between lookup and lock: resolve it again.
                        continue;
                    }
                    out.series_created += usize::from(res.created);
                    for &(t, v) in samples {
                        match self.head.append_locked(&mut d, t, v, Mode::Live) {
                            Ok(Appended::New) => {
                                out.accepted += 1;
                                lo = lo.min(t);
                                hi = hi.max(t);
                                recs.push(SampleRec {
                                    sref: res.series.sref,
                                    ts: t,
                                    v,
                                });
                            }
                            Ok(Appended::Same) => out.unchanged += 1,
                            Err(reason) => {
                                match reason {
                                    RejectReason::TooOld => out.rejected_too_old += 1,
                                    RejectReason::DuplicateTimestamp => out.rejected_duplicate += 1,
                                    RejectReason::SeriesLimit => out.rejected_series_limit += 1,
                                }
                                if out.rejected.len() < 100 {
                                    out.rejected.push(Rejected {
                                        series: i,
                                        ts_ms: t,
                                        reason,
                                    });
                                }
                            }
                        }
                    }
                    drop(d);
                    break;
                }
            }
            if lo <= hi {
                self.head.note_range(lo, hi);
            }
            if !recs.is_empty() {
                buf.clear();
                record::encode_samples(buf, recs);
                let pos = self.wal.append(buf)?;
                self.wal.commit(pos)?;
            }
            Ok::<(), Error>(())
        })?;
        self.appended
            .fetch_add(out.accepted as u64, Ordering::Relaxed);
        self.rejected
            .fetch_add(out.rejected_total() as u64, Ordering::Relaxed);
        Ok(out)
    }

    fn querier(&self, env: &str, mint: i64, maxt: i64) -> Querier {
        let now = self.now();
        let floor = now.saturating_sub(self.env_retention_ms(env));
        let rollup_keep = self
            .opts
            .env_retention
            .get(env)
            .map_or(ms(self.opts.rollup_retention), |d| ms(*d));
        Querier {
            rollup_mint: mint.max(now.saturating_sub(rollup_keep)),
            head: self.head.clone(),
            blocks: self.blocks.read().clone(),
            tombstones: self.tombstones.read().clone(),
            env: env.to_string(),
            mint: mint.max(floor),
            maxt,
        }
    }

    fn delete(&self, env: &str, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<()> {
        if matchers.is_empty() {
            return Err(Error::InvalidRequest(
                "a deletion needs at least one matcher".into(),
            ));
        }
        let _m = self.maint.lock();
        let rec = TombstoneRec {
            env: env.to_string(),
            matchers: matchers
                .iter()
                .map(|m| (m.op, m.name.clone(), m.value.clone()))
                .collect(),
            mint,
            maxt,
        };
        let mut buf = Vec::new();
        record::encode_tombstone(&mut buf, &rec);
        let pos = self.wal.append(&buf)?;
        self.wal.commit(pos)?;
        self.head.delete(env, matchers, mint, maxt);
        let pending: Vec<String> = self
            .blocks
            .read()
            .iter()
            .filter(|b| {
                b.meta.max_time >= mint
                    && b.meta.min_time <= maxt
                    && b.envs().iter().any(|e| e == env)
            })
            .map(|b| b.meta.id.clone())
            .collect();
        if !pending.is_empty() {
            let mut ts = (**self.tombstones.read()).clone();
            ts.push(Tombstone {
                env: env.to_string(),
                matchers: matchers.to_vec(),
                mint,
                maxt,
                pending_blocks: pending,
            });
            tombstones::store(&self.dir, &ts)?;
            *self.tombstones.write() = Arc::new(ts);
        }
        Ok(())
    }

    fn bdir(&self) -> PathBuf {
        self.dir.join("blocks")
    }

    fn maintain(&self) -> Result<()> {
        let _m = self.maint.lock();
        let t = Instant::now();
        // Every step runs even when one before it fails: retention in particular must not wait
        // on a compaction that cannot succeed. The first failure is returned.
        let mut failed = None;
        let mut step = |r: Result<usize>| {
            r.unwrap_or_else(|e| {
                failed.get_or_insert(e);
                0
            })
        };
        let cut = step(self.cut_head());
        let compacted = step(self.compact());
        let downsampled = step(self.downsample());
        let expired = step(self.retention());
        let cleaned = step(self.clean_tombstones());
        if let Some(e) = failed {
            return Err(e);
        }
        if cut + compacted + downsampled + expired + cleaned > 0 {
            tracing::info!(
                cut,
                compacted,
                downsampled,
                expired,
                cleaned,
                ms = t.elapsed().as_millis() as u64,
                "Store maintenance done."
            );
        }
        Ok(())
    }

    /// Cuts complete block-range windows out of the head. Returns blocks written.
    fn cut_head(&self) -> Result<usize> {
        let r = ms(self.opts.block_ranges[0]);
        let mut n = 0;
        let mut last_cut = None;
        while let Some((mint, maxt)) = self.head.time_range() {
            let start = mint.div_euclid(r) * r;
            let end = start + r;
            // Keep half a range of head beyond the window (for late and out-of-order data),
            // or cut anyway once the wall clock says no more data can arrive for it.
            let ready = maxt >= end + r / 2 || self.now() >= end + r / 2 + ms(self.opts.ooo_window);
            if !ready {
                break;
            }
            self.cut_window(start, end)?;
            last_cut = Some(end);
            n += 1;
        }
        if let Some(end) = last_cut {
            let upto = self.wal.cut_segment()?;
            let head = &self.head;
            let rep = self.wal.checkpoint(upto, |rec| match rec {
                Record::Series(s) => {
                    let s: Vec<_> = s.into_iter().filter(|x| head.is_live(x.sref)).collect();
                    (!s.is_empty()).then_some(Record::Series(s))
                }
                Record::Samples(s) => {
                    let s: Vec<_> = s
                        .into_iter()
                        .filter(|x| x.ts >= end && head.is_live(x.sref))
                        .collect();
                    (!s.is_empty()).then_some(Record::Samples(s))
                }
                Record::Tombstone(t) => (t.maxt >= end).then_some(Record::Tombstone(t)),
            })?;
            tracing::debug!(
                records = rep.records_out,
                bytes = rep.bytes,
                "WAL checkpoint written."
            );
        }
        Ok(n)
    }

    fn cut_window(&self, start: i64, end: i64) -> Result<()> {
        self.head.min_valid.fetch_max(end, Ordering::SeqCst);
        let mut series: Vec<(String, Labels, Arc<crate::head::MemSeries>)> = self
            .head
            .all_series()
            .into_iter()
            .filter(|s| self.head.has_data_in(s, start, end))
            .map(|s| {
                (
                    self.head.symbols.get(s.env).to_string(),
                    self.head.labels_of(&s),
                    s,
                )
            })
            .collect();
        series.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut w = BlockWriter::create(
            &self.bdir(),
            start,
            end,
            0,
            1,
            self.opts.block_chunk_samples,
        )?;
        let mut buf = Vec::new();
        for (env, labels, s) in &series {
            buf.clear();
            self.head.samples_in(s, start, end, &mut buf);
            w.add_series(env, labels, &buf)?;
        }
        if let Some(meta) = w.finish(Vec::new(), false)? {
            let b = Arc::new(Block::open(&self.bdir().join(&meta.id))?);
            self.swap_blocks(&[], vec![b]);
        }
        self.head.truncate_before(end);
        Ok(())
    }

    fn swap_blocks(&self, remove: &[String], add: Vec<Arc<Block>>) {
        let mut g = self.blocks.write();
        let mut v: Vec<Arc<Block>> = g
            .iter()
            .filter(|b| !remove.contains(&b.meta.id))
            .cloned()
            .collect();
        v.extend(add);
        v.sort_by_key(|b| (b.meta.range_start, b.meta.resolution_ms));
        *g = Arc::new(v);
    }

    fn remove_block_dirs(&self, ids: &[String]) {
        for id in ids {
            let p = self.bdir().join(id);
            if let Err(e) = fs::remove_dir_all(&p) {
                tracing::warn!(block = %id, error = %e, "Could not delete block directory.");
            }
        }
    }

    /// Deleted intervals per series that apply to block `id`.
    fn deletions_for(&self, ids: &[String], env: &str, labels: &Labels) -> Vec<(i64, i64)> {
        self.tombstones
            .read()
            .iter()
            .filter(|t| t.env == env && t.pending_blocks.iter().any(|p| ids.contains(p)))
            .filter(|t| {
                t.matchers
                    .iter()
                    .all(|m| m.matches(labels.get(&m.name).unwrap_or("")))
            })
            .map(|t| (t.mint, t.maxt))
            .collect()
    }

    /// Merges `group` into one block at `level`, applying deletions and per-environment
    /// retention. Returns the new block, if any data remained.
    fn rewrite(&self, group: &[Arc<Block>], level: u32) -> Result<Option<Arc<Block>>> {
        let ids: Vec<String> = group.iter().map(|b| b.meta.id.clone()).collect();
        let start = group.iter().map(|b| b.meta.range_start).min().unwrap_or(0);
        let end = group.iter().map(|b| b.meta.range_end).max().unwrap_or(0);
        let res = group[0].meta.resolution_ms;
        let mut all: BTreeMap<(String, Labels), Vec<(usize, u32)>> = BTreeMap::new();
        for (bi, b) in group.iter().enumerate() {
            for ((env, labels), si) in b.series_map() {
                all.entry((env, labels)).or_default().push((bi, si));
            }
        }
        let now = self.now();
        let mut w = BlockWriter::create(
            &self.bdir(),
            start,
            end,
            res,
            level,
            self.opts.block_chunk_samples,
        )?;
        // Side by side, a bucket split by a block boundary is put back together; overlapping
        // rollups (never expected) keep one point per bucket and are no longer trusted as exact.
        let side_by_side = group
            .windows(2)
            .all(|p| p[0].meta.range_end <= p[1].meta.range_start);
        w.unsure_buckets = res > 0 && (!side_by_side || group.iter().any(|b| !b.meta.bucket_end));
        w.unsure_edges = res > 0 && group.iter().any(|b| !b.meta.edges);
        let (mut bytes, mut raw, mut parts, mut pts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((env, labels), srcs) in &all {
            let keep_ms = match (res, self.opts.env_retention.get(env.as_str())) {
                (_, Some(d)) => ms(*d),
                (0, None) => ms(self.opts.retention),
                (_, None) => ms(self.opts.rollup_retention),
            };
            let floor = now.saturating_sub(keep_ms);
            let deleted = self.deletions_for(&ids, env, labels);
            let keep = |t: i64| t >= floor && !deleted.iter().any(|&(a, b)| t >= a && t <= b);
            if res == 0 {
                parts.clear();
                for &(bi, si) in srcs {
                    let b = &group[bi];
                    for c in b.series[si as usize].chunks.iter() {
                        raw.clear();
                        b.decode_chunk(c, &mut bytes, &mut raw)?;
                        parts.extend(raw.iter().map(|&(t, v)| (t, bi as u8, v)));
                    }
                }
                raw.clear();
                merge_samples(&mut parts, &mut raw);
                raw.retain(|s| keep(s.0));
                w.add_series(env, labels, &raw)?;
            } else {
                pts.clear();
                for &(bi, si) in srcs {
                    let b = &group[bi];
                    for c in b.series[si as usize].chunks.iter() {
                        b.decode_rollup_chunk(c, &mut bytes, &mut pts)?;
                    }
                }
                // Stable: the parts of a split bucket stay in block (time) order.
                pts.sort_by_key(|p: &RollupPoint| p.ts_ms);
                if side_by_side {
                    pts.dedup_by(|later, earlier| {
                        let same = later.ts_ms == earlier.ts_ms;
                        if same {
                            *earlier = earlier.combine(later);
                        }
                        same
                    });
                } else {
                    pts.dedup_by_key(|p| p.ts_ms);
                }
                pts.retain(|p| keep(p.ts_ms));
                w.add_rollup_series(env, labels, &pts)?;
            }
        }
        let downsampled = group.iter().all(|b| b.meta.downsampled);
        match w.finish(ids, downsampled)? {
            Some(meta) => Ok(Some(Arc::new(Block::open(&self.bdir().join(&meta.id))?))),
            None => Ok(None),
        }
    }

    fn replace(&self, group: &[Arc<Block>], new: Option<Arc<Block>>) -> Result<()> {
        let ids: Vec<String> = group.iter().map(|b| b.meta.id.clone()).collect();
        self.swap_blocks(&ids, new.into_iter().collect());
        // Deletions are now applied to these blocks.
        let mut ts = (**self.tombstones.read()).clone();
        let before: usize = ts.iter().map(|t| t.pending_blocks.len()).sum();
        for t in &mut ts {
            t.pending_blocks.retain(|p| !ids.contains(p));
        }
        ts.retain(|t| !t.pending_blocks.is_empty());
        if ts.iter().map(|t| t.pending_blocks.len()).sum::<usize>() != before {
            tombstones::store(&self.dir, &ts)?;
            *self.tombstones.write() = Arc::new(ts);
        }
        self.remove_block_dirs(&ids);
        Ok(())
    }

    /// Remembers the block among `candidates` that `e` found damaged (all of them when the
    /// error names none), so maintenance skips it from now on. Returns false, marking nothing,
    /// when `e` is not damage (an I/O failure is retried on the next pass).
    fn mark_damaged(&self, e: &Error, candidates: &[Arc<Block>], doing: &str) -> bool {
        let path = match e {
            Error::Corrupt { path, .. } | Error::FutureFormat { path, .. } => path,
            _ => return false,
        };
        let named = candidates.iter().any(|b| path.starts_with(b.dir()));
        let mut damaged = self.damaged.lock();
        for b in candidates
            .iter()
            .filter(|b| !named || path.starts_with(b.dir()))
        {
            if damaged.insert(b.meta.id.clone()) {
                self.corrupt_seen.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    block = %b.meta.id,
                    error = %e,
                    "Block damaged while {doing}: maintenance skips it until restart."
                );
            }
        }
        true
    }

    fn is_damaged(&self, b: &Block) -> bool {
        self.damaged.lock().contains(&b.meta.id)
    }

    fn plan_compaction(&self) -> Option<(Vec<Arc<Block>>, u32)> {
        let blocks = self.blocks.read().clone();
        for res in std::iter::once(0).chain(ROLLUP_RESOLUTIONS) {
            let mut v: Vec<Arc<Block>> = blocks
                .iter()
                .filter(|b| b.meta.resolution_ms == res && !self.is_damaged(b))
                .cloned()
                .collect();
            v.sort_by_key(|b| b.meta.range_start);
            // Overlapping blocks first (vertical compaction).
            let mut group: Vec<Arc<Block>> = Vec::new();
            let mut hi = i64::MIN;
            for b in &v {
                if !group.is_empty() && b.meta.range_start < hi {
                    group.push(b.clone());
                    hi = hi.max(b.meta.range_end);
                } else {
                    if group.len() > 1 {
                        break;
                    }
                    group = vec![b.clone()];
                    hi = b.meta.range_end;
                }
            }
            if group.len() > 1 {
                let level = group.iter().map(|b| b.meta.level).max().unwrap_or(1);
                return Some((group, level));
            }
            let min_valid = self.head.min_valid.load(Ordering::SeqCst);
            let newest = if res == 0 {
                v.iter()
                    .map(|b| b.meta.range_end)
                    .max()
                    .unwrap_or(i64::MIN)
                    .max(min_valid)
            } else {
                // Rollups of a window are merged once all of its raw data is rolled up.
                blocks
                    .iter()
                    .filter(|b| b.meta.resolution_ms == 0 && !b.meta.downsampled)
                    .map(|b| b.meta.range_start)
                    .min()
                    .unwrap_or(i64::MAX)
                    .min(self.head.time_range().map_or(i64::MAX, |(mint, _)| mint))
            };
            // Rollups are small: their blocks also merge into weeks (when that is a multiple
            // of the last block range), so a long range reads few chunks per series and short
            // rollup chunks, stored plainly, become pcodec columns.
            let mut ranges: Vec<i64> = self.opts.block_ranges.iter().map(|d| ms(*d)).collect();
            let top = ranges.last().copied().unwrap_or(ROLLUP_BLOCK_RANGE);
            if res != 0 && ROLLUP_BLOCK_RANGE > top && ROLLUP_BLOCK_RANGE % top == 0 {
                ranges.push(ROLLUP_BLOCK_RANGE);
            }
            for (lvl, &r) in ranges.iter().enumerate().skip(1) {
                let mut windows: BTreeMap<i64, Vec<Arc<Block>>> = BTreeMap::new();
                for b in &v {
                    let w = b.meta.range_start.div_euclid(r);
                    if b.meta.range_end <= (w + 1) * r && b.meta.range_end - b.meta.range_start < r
                    {
                        windows.entry(w).or_default().push(b.clone());
                    }
                }
                for (w, g) in windows {
                    // Raw blocks rolled up and not yet rolled up are not merged: the merged
                    // block would be rolled up again and count samples twice. The rest catch
                    // up as they age.
                    let mixed = res == 0
                        && self.opts.downsample_after.is_some()
                        && g.iter()
                            .any(|b| b.meta.downsampled != g[0].meta.downsampled);
                    if g.len() > 1 && (w + 1) * r <= newest && !mixed {
                        return Some((g, lvl as u32 + 1));
                    }
                    // Rollups of a window still filling up merge into one block as they come
                    // (2 h + 2 h, then 4 h + 2 h, …): a query over the last day reads at most
                    // three rollup chunks per series (the day before's block, today's so far,
                    // the newest) instead of one per 2 h block. Rollups are small: rewriting
                    // the day's so far at each step costs little. Above the first level only
                    // whole blocks of the level below merge (days into weeks).
                    let unit = ranges[lvl - 1];
                    if res != 0 {
                        let span = |b: &Arc<Block>| b.meta.range_end - b.meta.range_start;
                        let fits =
                            |b: &Arc<Block>| span(b) % unit == 0 && b.meta.range_end <= newest;
                        // The first run of two or more adjacent blocks that fit.
                        let mut run: Vec<Arc<Block>> = Vec::new();
                        for b in &g {
                            let joins = run
                                .last()
                                .is_some_and(|l| l.meta.range_end == b.meta.range_start);
                            if !(fits(b) && joins) {
                                if run.len() > 1 {
                                    break;
                                }
                                run.clear();
                                if !fits(b) {
                                    continue;
                                }
                            }
                            run.push(b.clone());
                        }
                        if run.len() > 1 {
                            return Some((run, lvl as u32 + 1));
                        }
                    }
                }
            }
        }
        None
    }

    fn compact(&self) -> Result<usize> {
        let mut n = 0;
        while let Some((group, level)) = self.plan_compaction() {
            let new = match self.rewrite(&group, level) {
                Ok(new) => new,
                Err(e) if self.mark_damaged(&e, &group, "compacting") => continue,
                Err(e) => return Err(e),
            };
            self.replace(&group, new)?;
            n += 1;
        }
        Ok(n)
    }

    fn downsample(&self) -> Result<usize> {
        let Some(after) = self.opts.downsample_after else {
            return Ok(0);
        };
        let cutoff = self.now().saturating_sub(ms(after));
        let todo: Vec<Arc<Block>> = self
            .blocks
            .read()
            .iter()
            .filter(|b| {
                b.meta.resolution_ms == 0
                    && !b.meta.downsampled
                    && b.meta.range_end <= cutoff
                    && !self.is_damaged(b)
            })
            .cloned()
            .collect();
        let mut n = 0;
        for b in todo {
            match self.downsample_block(&b) {
                Ok(()) => n += 1,
                Err(e) if self.mark_damaged(&e, std::slice::from_ref(&b), "rolling it up") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Writes `b`'s 5 m and 1 h rollup blocks and marks it rolled up.
    fn downsample_block(&self, b: &Arc<Block>) -> Result<()> {
        let mut made = Vec::new();
        for res in ROLLUP_RESOLUTIONS {
            let mut w = BlockWriter::create(
                &self.bdir(),
                b.meta.range_start,
                b.meta.range_end,
                res,
                b.meta.level,
                self.opts.block_chunk_samples,
            )?;
            let (mut bytes, mut raw, mut pts) = (Vec::new(), Vec::new(), Vec::new());
            for ((env, labels), si) in b.series_map() {
                raw.clear();
                for c in b.series[si as usize].chunks.iter() {
                    b.decode_chunk(c, &mut bytes, &mut raw)?;
                }
                rollup(&raw, res, &mut pts);
                w.add_rollup_series(&env, &labels, &pts)?;
            }
            if let Some(meta) = w.finish(vec![b.meta.id.clone()], false)? {
                made.push(Arc::new(Block::open(&self.bdir().join(&meta.id))?));
            }
        }
        let mut meta: BlockMeta = b.meta.clone();
        meta.downsampled = true;
        write_meta(b.dir(), &meta)?;
        let reopened = Arc::new(Block::open(b.dir())?);
        made.push(reopened);
        self.swap_blocks(std::slice::from_ref(&b.meta.id), made);
        Ok(())
    }

    fn retention(&self) -> Result<usize> {
        let now = self.now();
        let raw_floor = now.saturating_sub(ms(self.opts.retention));
        let rollup_floor = now.saturating_sub(ms(self.opts.rollup_retention));
        let blocks = self.blocks.read().clone();
        let mut drop_ids: Vec<String> = blocks
            .iter()
            .filter(|b| {
                let floor = if b.meta.resolution_ms == 0 {
                    raw_floor
                } else {
                    rollup_floor
                };
                // A raw block waiting for its rollups is kept until they exist (or cannot:
                // a damaged block expires like any other).
                let waiting = b.meta.resolution_ms == 0
                    && self.opts.downsample_after.is_some()
                    && !b.meta.downsampled
                    && !self.is_damaged(b);
                b.meta.range_end <= floor && !waiting
            })
            .map(|b| b.meta.id.clone())
            .collect();
        if let Some(limit) = self.opts.retention_bytes {
            let mut total: u64 = self.wal.disk_bytes()
                + blocks
                    .iter()
                    .filter(|b| !drop_ids.contains(&b.meta.id))
                    .map(|b| b.size_bytes())
                    .sum::<u64>();
            let mut by_age: Vec<&Arc<Block>> = blocks
                .iter()
                .filter(|b| !drop_ids.contains(&b.meta.id))
                .collect();
            by_age.sort_by_key(|b| b.meta.range_start);
            for b in by_age {
                if total <= limit {
                    break;
                }
                total = total.saturating_sub(b.size_bytes());
                drop_ids.push(b.meta.id.clone());
            }
        }
        let n = drop_ids.len();
        if n > 0 {
            let group: Vec<Arc<Block>> = blocks
                .iter()
                .filter(|b| drop_ids.contains(&b.meta.id))
                .cloned()
                .collect();
            self.replace(&group, None)?;
        }
        // Per-environment retention shorter than the block's age: rewrite without that data
        // (once: the rewritten block's data of that environment starts at the floor).
        let mut rewritten = 0;
        for (env, keep) in &self.opts.env_retention {
            let floor = now.saturating_sub(ms(*keep));
            let affected: Vec<Arc<Block>> = self
                .blocks
                .read()
                .iter()
                .filter(|b| {
                    b.meta.min_time < floor && b.env_min_time(env).is_some_and(|t| t < floor)
                })
                .cloned()
                .collect();
            for b in affected {
                let new = self.rewrite(std::slice::from_ref(&b), b.meta.level)?;
                self.replace(std::slice::from_ref(&b), new)?;
                rewritten += 1;
            }
        }
        Ok(n + rewritten)
    }

    fn clean_tombstones(&self) -> Result<usize> {
        let pending: Vec<String> = self
            .tombstones
            .read()
            .iter()
            .flat_map(|t| t.pending_blocks.clone())
            .collect();
        let blocks: Vec<Arc<Block>> = self
            .blocks
            .read()
            .iter()
            .filter(|b| pending.contains(&b.meta.id))
            .cloned()
            .collect();
        let mut n = 0;
        for b in blocks {
            let new = self.rewrite(std::slice::from_ref(&b), b.meta.level)?;
            self.replace(std::slice::from_ref(&b), new)?;
            n += 1;
        }
        // Tombstones naming blocks that no longer exist are done.
        let live: Vec<String> = self
            .blocks
            .read()
            .iter()
            .map(|b| b.meta.id.clone())
            .collect();
        let mut ts = (**self.tombstones.read()).clone();
        let before = ts.len();
        for t in &mut ts {
            t.pending_blocks.retain(|p| live.contains(p));
        }
        ts.retain(|t| !t.pending_blocks.is_empty());
        if ts.len() != before {
            tombstones::store(&self.dir, &ts)?;
            *self.tombstones.write() = Arc::new(ts);
        }
        Ok(n)
    }

    fn snapshot(&self, target: &Path) -> Result<()> {
        let _m = self.maint.lock();
        if target.exists() {
            return Err(Error::InvalidRequest(format!(
                "snapshot target {} already exists",
                target.display()
            )));
        }
        let tb = target.join("blocks");
        fs::create_dir_all(&tb).map_err(Error::io("create snapshot directory", &tb))?;
        self.wal.sync_all()?;
        let blocks = self.blocks.read().clone();
        for b in blocks.iter() {
            let dst = tb.join(&b.meta.id);
            fs::create_dir_all(&dst).map_err(Error::io("create snapshot block", &dst))?;
            for f in ["meta.json", "index", "chunks"] {
                let (s, d) = (b.dir().join(f), dst.join(f));
                if fs::hard_link(&s, &d).is_err() {
                    fs::copy(&s, &d).map_err(Error::io("copy block file into snapshot", &d))?;
                }
            }
        }
        // The head, written as blocks per block-range window. Each block's range ends just
        // after its newest sample, so a restored store accepts new data right after it.
        let r = ms(self.opts.block_ranges[0]);
        let mut by_window: BTreeMap<i64, Vec<(String, Labels, Arc<crate::head::MemSeries>)>> =
            BTreeMap::new();
        if let Some((mint, maxt)) = self.head.time_range() {
            let series = self.head.all_series();
            let mut w = mint.div_euclid(r);
            while w * r <= maxt {
                for s in &series {
                    if self.head.has_data_in(s, w * r, (w + 1) * r) {
                        by_window.entry(w).or_default().push((
                            self.head.symbols.get(s.env).to_string(),
                            self.head.labels_of(s),
                            s.clone(),
                        ));
                    }
                }
                w += 1;
            }
        }
        let mut buf = Vec::new();
        for (w, mut series) in by_window {
            series.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            let (start, end) = (w * r, (w + 1) * r);
            let mut writer =
                BlockWriter::create(&tb, start, end, 0, 1, self.opts.block_chunk_samples)?;
            let mut newest = start;
            for (env, labels, s) in &series {
                buf.clear();
                self.head.samples_in(s, start, end, &mut buf);
                if let Some(l) = buf.last() {
                    newest = newest.max(l.0);
                }
                writer.add_series(env, labels, &buf)?;
            }
            if let Some(mut meta) = writer.finish(Vec::new(), false)? {
                meta.range_end = newest + 1;
                write_meta(&tb.join(&meta.id), &meta)?;
            }
        }
        let ts = self.tombstones.read().clone();
        if !ts.is_empty() {
            tombstones::store(target, &ts)?;
        }
        wal::sync_dir(&tb)?;
        Ok(())
    }

    fn stats(&self) -> Stats {
        let (head_chunks, head_samples) = self.head.chunk_stats();
        let blocks = self.blocks.read().clone();
        let mut s = Stats {
            head_series: self.head.num_series(),
            head_chunks,
            head_samples,
            head_bytes: self.head.heap_bytes(),
            wal_bytes: self.wal.disk_bytes(),
            wal_syncs: self.wal.stats.syncs.load(Ordering::Relaxed),
            replay_duration: self.open_report.replay.duration,
            corrupt_files_seen: self.corrupt_seen.load(Ordering::Relaxed),
            samples_appended: self.appended.load(Ordering::Relaxed),
            samples_rejected: self.rejected.load(Ordering::Relaxed),
            ..Default::default()
        };
        if s.wal_syncs > 0 {
            s.wal_sync_mean_micros =
                self.wal.stats.sync_micros.load(Ordering::Relaxed) as f64 / s.wal_syncs as f64;
        }
        for b in blocks.iter() {
            let m = &b.meta;
            if m.resolution_ms == 0 {
                s.block_samples += m.num_samples;
                s.block_bytes += b.size_bytes();
            }
            s.blocks.push(BlockStats {
                id: m.id.clone(),
                range_start: m.range_start,
                range_end: m.range_end,
                resolution_ms: m.resolution_ms,
                level: m.level,
                series: m.num_series,
                samples: m.num_samples,
                bytes: b.size_bytes(),
            });
        }
        if s.block_samples > 0 {
            s.bytes_per_sample = s.block_bytes as f64 / s.block_samples as f64;
        }
        s
    }
}

/// Reads all samples of a series iterator into a vector (test and tool helper).
pub fn collect_samples(it: SampleIter) -> Result<Vec<(i64, f64)>> {
    let mut v = Vec::new();
    let mut it = it;
    it.read_all(&mut v)?;
    Ok(v)
}
