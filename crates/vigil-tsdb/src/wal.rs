//! The write-ahead log: checksummed records in numbered segment files, group commit, replay
//! with repair of a torn tail, and checkpoints that keep replay bounded.
//!
//! The WAL knows nothing of series or the head: it moves framed records ([`record`]) to disk
//! and back. Layout on disk (see `docs/format/wal.md`):
//!
//! ```text
//! wal/00000001        segment: 8-byte header "VGWL" v1, then framed records
//! wal/00000002
//! wal/checkpoint.00000001   records still needed from segments ≤ 1 (same format)
//! ```
//!
//! **Group commit.** Writers append framed bytes to a shared buffer under a short lock and get
//! a log position. [`Wal::commit`] makes everything up to that position reach the OS (and, under
//! [`SyncPolicy::Always`], the disk): the first waiter becomes the leader, writes the whole
//! buffer with one `write` and one `fdatasync`, and every writer whose records were in it
//! returns without its own syscall. Under `Interval` a background thread syncs periodically;
//! under every policy a commit has at least handed the bytes to the kernel, so a `kill -9` of
//! the process loses nothing acknowledged.

pub mod record;

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use record::{FRAME_HEADER, MAX_RECORD, Record};

/// Segment file magic.
pub const SEGMENT_MAGIC: &[u8; 4] = b"VGWL";
/// Newest segment format version this build writes and reads.
pub const SEGMENT_VERSION: u8 = 1;
const SEGMENT_HEADER: usize = 8;

/// When the WAL forces data to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fdatasync` before every acknowledgement (batched across concurrent writers).
    Always,
    /// Acknowledge once written to the OS; `fdatasync` at this interval.
    Interval(Duration),
    /// Never `fdatasync` (the OS writes back); still written to the OS before acknowledgement.
    Never,
}

impl Default for SyncPolicy {
    fn default() -> Self {
        SyncPolicy::Interval(Duration::from_millis(200))
    }
}

#[derive(Debug)]
struct Pending {
    data: Vec<u8>,
    /// Log position after the last byte appended (bytes since open).
    end: u64,
}

#[derive(Debug)]
struct Io {
    file: File,
    seg: u64,
    seg_path: PathBuf,
    seg_size: u64,
    written: u64,
    synced: u64,
    spare: Vec<u8>,
}

/// Counters the store reports.
#[derive(Debug, Default)]
pub struct WalStats {
    /// `fdatasync` calls made.
    pub syncs: AtomicU64,
    /// Total time spent in `fdatasync`, µs.
    pub sync_micros: AtomicU64,
    /// Bytes written.
    pub bytes_written: AtomicU64,
}

/// An open WAL accepting appends.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    policy: SyncPolicy,
    segment_bytes: u64,
    pending: Mutex<Pending>,
    io: Mutex<Io>,
    poisoned: AtomicBool,
    poison_reason: Mutex<String>,
    /// Counters.
    pub stats: WalStats,
}

/// The name of segment `n`.
pub fn segment_name(n: u64) -> String {
    format!("{n:08}")
}

/// Segment files in `dir`, sorted by number.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(Error::io("list WAL directory", dir)(e)),
    };
    for e in rd {
        let e = e.map_err(Error::io("list WAL directory", dir))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() == 8
            && name.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = name.parse()
        {
            v.push((n, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// The newest complete checkpoint in `dir`: (index of the last segment it covers, path).
pub fn latest_checkpoint(dir: &Path) -> Result<Option<(u64, PathBuf)>> {
    let mut best = None;
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("list WAL directory", dir)(e)),
    };
    for e in rd {
        let e = e.map_err(Error::io("list WAL directory", dir))?;
        let name = e.file_name();
        let Some(n) = name.to_str().and_then(|s| s.strip_prefix("checkpoint.")) else {
            continue;
        };
        if let Ok(n) = n.parse::<u64>()
            && best.as_ref().is_none_or(|(b, _)| n > *b)
        {
            best = Some((n, e.path()));
        }
    }
    Ok(best)
}

fn write_header(f: &mut File, path: &Path) -> Result<()> {
    let mut h = [0u8; SEGMENT_HEADER];
    h[..4].copy_from_slice(SEGMENT_MAGIC);
    h[4] = SEGMENT_VERSION;
    f.write_all(&h)
        .map_err(Error::io("write WAL segment header", path))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("fsync directory", dir))
}

fn create_segment(dir: &Path, n: u64) -> Result<(File, PathBuf)> {
    let path = dir.join(segment_name(n));
    let mut f = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(Error::io("create WAL segment", &path))?;
    write_header(&mut f, &path)?;
    Ok((f, path))
}

impl Wal {
    /// Opens the WAL for appending in `dir`, starting a new segment after the existing ones.
    /// Replay (with [`replay`]) must have happened first.
    pub fn open(dir: &Path, policy: SyncPolicy, segment_bytes: u64) -> Result<Self> {
        fs::create_dir_all(dir).map_err(Error::io("create WAL directory", dir))?;
        let last = list_segments(dir)?.last().map_or(0, |s| s.0);
        let ckpt = latest_checkpoint(dir)?.map_or(0, |c| c.0);
        let n = last.max(ckpt) + 1;
        let (file, seg_path) = create_segment(dir, n)?;
        sync_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            policy,
            segment_bytes: segment_bytes.max(4096),
            pending: Mutex::new(Pending {
                data: Vec::with_capacity(1 << 16),
                end: 0,
            }),
            io: Mutex::new(Io {
                file,
                seg: n,
                seg_path,
                seg_size: SEGMENT_HEADER as u64,
                written: 0,
                synced: 0,
                spare: Vec::with_capacity(1 << 16),
            }),
            poisoned: AtomicBool::new(false),
            poison_reason: Mutex::new(String::new()),
            stats: WalStats::default(),
        })
    }

    /// The sync policy.
    pub fn policy(&self) -> SyncPolicy {
        self.policy
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_poison(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned(self.poison_reason.lock().clone()));
        }
        Ok(())
    }

    fn poison(&self, e: &Error) {
        *self.poison_reason.lock() = e.to_string();
        self.poisoned.store(true, Ordering::Release);
        tracing::error!(error = %e, "WAL write failed; the store refuses further writes.");
    }

    /// Appends framed records (one or more, built with [`record`]); returns the log position to
    /// pass to [`Wal::commit`]. Nothing is durable until committed.
    pub fn append(&self, framed: &[u8]) -> Result<u64> {
        self.check_poison()?;
        let mut p = self.pending.lock();
        p.data.extend_from_slice(framed);
        p.end += framed.len() as u64;
        Ok(p.end)
    }

    /// Makes everything up to `pos` durable under the sync policy: handed to the OS, and under
    /// `Always` also on disk.
    pub fn commit(&self, pos: u64) -> Result<()> {
        self.flush_to(pos, self.policy == SyncPolicy::Always)
    }

    /// Writes (and with `sync`, fsyncs) everything appended so far.
    pub fn sync_all(&self) -> Result<()> {
        let end = self.pending.lock().end;
        self.flush_to(end, !matches!(self.policy, SyncPolicy::Never))
    }

    fn flush_to(&self, pos: u64, sync: bool) -> Result<()> {
        self.check_poison()?;
        let mut io = self.io.lock();
        if (if sync { io.synced } else { io.written }) >= pos {
            return Ok(());
        }
        let r = self.flush_locked(&mut io, sync);
        if let Err(e) = &r {
            self.poison(e);
        }
        r
    }

    fn flush_locked(&self, io: &mut Io, sync: bool) -> Result<()> {
        let (buf, end) = {
            let mut p = self.pending.lock();
            let spare = std::mem::take(&mut io.spare);
            (std::mem::replace(&mut p.data, spare), p.end)
        };
        if !buf.is_empty() {
            io.file
                .write_all(&buf)
                .map_err(Error::io("write WAL segment", &io.seg_path))?;
            io.seg_size += buf.len() as u64;
            self.stats
                .bytes_written
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
        io.written = end;
        let mut buf = buf;
        buf.clear();
        if buf.capacity() > 8 << 20 {
            buf.shrink_to(1 << 16);
        }
        io.spare = buf;
        if sync && io.synced < end {
            let t = Instant::now();
            io.file
                .sync_data()
                .map_err(Error::io("fsync WAL segment", &io.seg_path))?;
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            self.stats
                .sync_micros
                .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            io.synced = end;
        }
        if io.seg_size >= self.segment_bytes {
            self.rotate_locked(io)?;
        }
        Ok(())
    }

    fn rotate_locked(&self, io: &mut Io) -> Result<u64> {
        if self.policy != SyncPolicy::Never {
            io.file
                .sync_data()
                .map_err(Error::io("fsync WAL segment", &io.seg_path))?;
        }
        let closed = io.seg;
        let (file, path) = create_segment(&self.dir, closed + 1)?;
        sync_dir(&self.dir)?;
        io.file = file;
        io.seg = closed + 1;
        io.seg_path = path;
        io.seg_size = SEGMENT_HEADER as u64;
        Ok(closed)
    }

    /// Flushes pending records, closes the current segment and starts a new one; returns the
    /// number of the closed segment. Every record appended before the call is in a segment
    /// numbered at most that.
    pub fn cut_segment(&self) -> Result<u64> {
        self.check_poison()?;
        let mut io = self.io.lock();
        let r = self
            .flush_locked(&mut io, false)
            .and_then(|_| self.rotate_locked(&mut io));
        if let Err(e) = &r {
            self.poison(e);
        }
        r
    }

    /// Current segment number.
    pub fn current_segment(&self) -> u64 {
        self.io.lock().seg
    }

    /// Total bytes of WAL files on disk.
    pub fn disk_bytes(&self) -> u64 {
        dir_size(&self.dir)
    }

    /// Writes a checkpoint of the records in segments up to `upto` (and the previous
    /// checkpoint) that `keep` retains, then deletes those segments and older checkpoints.
    /// `keep` may rewrite a record (e.g. drop samples) or return `None` to drop it.
    pub fn checkpoint(
        &self,
        upto: u64,
        mut keep: impl FnMut(Record) -> Option<Record>,
    ) -> Result<CheckpointReport> {
        let mut out = Vec::new();
        let mut report = CheckpointReport::default();
        let mut sources: Vec<PathBuf> = Vec::new();
        if let Some((n, p)) = latest_checkpoint(&self.dir)?
            && n <= upto
        {
            sources.push(p);
        }
        let segs: Vec<(u64, PathBuf)> = list_segments(&self.dir)?
            .into_iter()
            .filter(|(n, _)| *n <= upto)
            .collect();
        sources.extend(segs.iter().map(|s| s.1.clone()));
        for src in &sources {
            read_segment(src, &mut |rec| {
                report.records_in += 1;
                if let Some(r) = keep(rec) {
                    report.records_out += 1;
                    encode_record(&mut out, &r);
                }
            })?;
        }
        let tmp = self.dir.join(format!("checkpoint.{upto:08}.tmp"));
        let fin = self.dir.join(format!("checkpoint.{upto:08}"));
        {
            let mut f = File::create(&tmp).map_err(Error::io("create WAL checkpoint", &tmp))?;
            write_header(&mut f, &tmp)?;
            f.write_all(&out)
                .map_err(Error::io("write WAL checkpoint", &tmp))?;
            f.sync_all()
                .map_err(Error::io("fsync WAL checkpoint", &tmp))?;
        }
        fs::rename(&tmp, &fin).map_err(Error::io("rename WAL checkpoint", &fin))?;
        sync_dir(&self.dir)?;
        for (_, p) in &segs {
            fs::remove_file(p).map_err(Error::io("delete WAL segment", p))?;
        }
        for e in fs::read_dir(&self.dir)
            .map_err(Error::io("list WAL directory", &self.dir))?
            .flatten()
        {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name
                .strip_prefix("checkpoint.")
                .and_then(|s| s.parse::<u64>().ok())
                && n < upto
            {
                let _ = fs::remove_file(e.path());
            }
        }
        report.bytes = out.len() as u64 + SEGMENT_HEADER as u64;
        Ok(report)
    }
}

/// What a checkpoint did.
#[derive(Debug, Default, Clone)]
pub struct CheckpointReport {
    /// Records read.
    pub records_in: u64,
    /// Records kept.
    pub records_out: u64,
    /// Size of the checkpoint file.
    pub bytes: u64,
}

fn encode_record(out: &mut Vec<u8>, r: &Record) {
    match r {
        Record::Series(s) => record::encode_series(
            out,
            s.iter().map(|s| {
                (
                    s.sref,
                    s.env.as_str(),
                    s.labels
                        .iter()
                        .map(|(n, v)| (n.as_str(), v.as_str()))
                        .collect(),
                )
            }),
        ),
        Record::Samples(s) => record::encode_samples(out, s),
        Record::Tombstone(t) => record::encode_tombstone(out, t),
    }
}

pub(crate) fn dir_size(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Where a segment stopped being readable.
#[derive(Debug)]
struct Damage {
    offset: u64,
    reason: String,
}

/// Reads a segment's records, calling `f` for each; stops at the first damaged record and
/// reports where. Header problems are errors (a future version is [`Error::FutureFormat`]).
fn read_segment_until_damage(path: &Path, f: &mut dyn FnMut(Record)) -> Result<Option<Damage>> {
    let file = File::open(path).map_err(Error::io("open WAL segment", path))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut h = [0u8; SEGMENT_HEADER];
    if let Err(e) = r.read_exact(&mut h) {
        return Ok(Some(Damage {
            offset: 0,
            reason: format!("segment header unreadable: {e}"),
        }));
    }
    if &h[..4] != SEGMENT_MAGIC {
        return Ok(Some(Damage {
            offset: 0,
            reason: "bad segment magic".into(),
        }));
    }
    if h[4] > SEGMENT_VERSION {
        return Err(Error::FutureFormat {
            path: path.to_path_buf(),
            found: h[4] as u32,
            supported: SEGMENT_VERSION as u32,
        });
    }
    let mut off = SEGMENT_HEADER as u64;
    let mut body = Vec::new();
    loop {
        let mut fh = [0u8; FRAME_HEADER];
        match read_full(&mut r, &mut fh) {
            Ok(0) => return Ok(None),
            Ok(n) if n < FRAME_HEADER => {
                return Ok(Some(Damage {
                    offset: off,
                    reason: "torn record header".into(),
                }));
            }
            Ok(_) => {}
            Err(e) => return Err(Error::io("read WAL segment", path)(e)),
        }
        let len = u32::from_le_bytes(fh[..4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(fh[4..].try_into().unwrap_or_default());
        if len == 0 || len > MAX_RECORD {
            return Ok(Some(Damage {
                offset: off,
                reason: format!("implausible record length {len}"),
            }));
        }
        body.resize(len, 0);
        match read_full(&mut r, &mut body) {
            Ok(n) if n < len => {
                return Ok(Some(Damage {
                    offset: off,
                    reason: format!("torn record: {n} of {len} bytes"),
                }));
            }
            Ok(_) => {}
            Err(e) => return Err(Error::io("read WAL segment", path)(e)),
        }
        if crc32c::crc32c(&body) != crc {
            return Ok(Some(Damage {
                offset: off,
                reason: "record checksum mismatch".into(),
            }));
        }
        match record::decode(&body) {
            Ok(rec) => f(rec),
            Err(reason) => {
                return Ok(Some(Damage {
                    offset: off,
                    reason: format!("record does not decode: {reason}"),
                }));
            }
        }
        off += (FRAME_HEADER + len) as u64;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn read_segment(path: &Path, f: &mut dyn FnMut(Record)) -> Result<()> {
    match read_segment_until_damage(path, f)? {
        None => Ok(()),
        Some(d) => Err(Error::corrupt(path, d.offset, d.reason)),
    }
}

/// A damaged WAL file found during replay and what was done about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRepair {
    /// The damaged file.
    pub path: PathBuf,
    /// Offset of the first unreadable record.
    pub offset: u64,
    /// What was wrong.
    pub reason: String,
    /// Bytes cut off the end of this file.
    pub truncated_bytes: u64,
    /// Later segments deleted because they followed the damage.
    pub deleted_segments: usize,
}

/// What replay read and repaired.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    /// Records applied.
    pub records: u64,
    /// Segments read (checkpoint included).
    pub segments: usize,
    /// Damage repaired, if any.
    pub repairs: Vec<WalRepair>,
    /// Time taken.
    pub duration: Duration,
}

/// Replays the WAL in `dir`: the newest checkpoint, then every later segment, in order. A
/// damaged record ends the log there: the file is truncated at the damage and any later
/// segments are deleted (they cannot be applied without what was lost), as Prometheus' WAL
/// repair does. A damaged checkpoint is an error: it is written atomically, so damage there is
/// not a torn write.
pub fn replay(dir: &Path, mut f: impl FnMut(Record)) -> Result<ReplayReport> {
    let start = Instant::now();
    let mut report = ReplayReport::default();
    let mut count = |r: Record, report_records: &mut u64| {
        *report_records += 1;
        f(r)
    };
    let ckpt = latest_checkpoint(dir)?;
    let mut after = 0;
    if let Some((n, p)) = &ckpt {
        let mut recs = 0;
        read_segment(p, &mut |r| count(r, &mut recs))?;
        report.records += recs;
        report.segments += 1;
        after = *n;
    }
    let segs: Vec<(u64, PathBuf)> = list_segments(dir)?
        .into_iter()
        .filter(|(n, _)| *n > after)
        .collect();
    for (i, (_, p)) in segs.iter().enumerate() {
        let mut recs = 0;
        let damage = read_segment_until_damage(p, &mut |r| count(r, &mut recs))?;
        report.records += recs;
        report.segments += 1;
        if let Some(d) = damage {
            let len = fs::metadata(p)
                .map_err(Error::io("stat WAL segment", p))?
                .len();
            let keep = d.offset.max(SEGMENT_HEADER as u64);
            if d.offset < SEGMENT_HEADER as u64 {
                // Unreadable header: rewrite a valid one so the file is a valid empty segment.
                let mut f = File::create(p).map_err(Error::io("rewrite WAL segment", p))?;
                write_header(&mut f, p)?;
                f.sync_all().map_err(Error::io("fsync WAL segment", p))?;
            } else {
                let f = OpenOptions::new()
                    .write(true)
                    .open(p)
                    .map_err(Error::io("open WAL segment", p))?;
                f.set_len(keep)
                    .map_err(Error::io("truncate WAL segment", p))?;
                f.sync_all().map_err(Error::io("fsync WAL segment", p))?;
            }
            let later = &segs[i + 1..];
            for (_, lp) in later {
                fs::remove_file(lp).map_err(Error::io("delete WAL segment", lp))?;
            }
            tracing::warn!(path = %p.display(), offset = d.offset, reason = %d.reason, deleted = later.len(), "WAL damaged; truncated at the damage.");
            report.repairs.push(WalRepair {
                path: p.clone(),
                offset: d.offset,
                reason: d.reason,
                truncated_bytes: len.saturating_sub(keep),
                deleted_segments: later.len(),
            });
            break;
        }
    }
    report.duration = start.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::record::*;
    use super::*;

    fn samples_rec(sref: u32, ts: i64) -> Vec<u8> {
        let mut b = Vec::new();
        encode_samples(
            &mut b,
            &[SampleRec {
                sref,
                ts,
                v: ts as f64,
            }],
        );
        b
    }

    fn collect(dir: &Path) -> (Vec<Record>, ReplayReport) {
        let mut v = Vec::new();
        let r = replay(dir, |rec| v.push(rec)).unwrap();
        (v, r)
    }

    #[test]
    fn appended_records_replay_in_order_across_segments() {
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(d.path(), SyncPolicy::Always, 4096).unwrap();
        for i in 0..500 {
            let p = w.append(&samples_rec(i, i as i64)).unwrap();
            w.commit(p).unwrap();
        }
        assert!(list_segments(d.path()).unwrap().len() > 1);
        drop(w);
        let (recs, rep) = collect(d.path());
        assert_eq!(recs.len(), 500);
        assert!(rep.repairs.is_empty());
        for (i, r) in recs.iter().enumerate() {
            match r {
                Record::Samples(s) => assert_eq!(s[0].sref, i as u32),
                _ => panic!(),
            }
        }
    }

    #[test]
    fn torn_tail_is_truncated_and_reported() {
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(d.path(), SyncPolicy::Never, 1 << 20).unwrap();
        for i in 0..10 {
            let p = w.append(&samples_rec(i, 1)).unwrap();
            w.commit(p).unwrap();
        }
        drop(w);
        let (_, seg) = list_segments(d.path()).unwrap().pop().unwrap();
        let len = fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 3).unwrap();
        let (recs, rep) = collect(d.path());
        assert_eq!(recs.len(), 9);
        assert_eq!(rep.repairs.len(), 1);
        assert!(rep.repairs[0].reason.contains("torn"), "{:?}", rep.repairs);
        // Second replay is clean.
        let (recs, rep) = collect(d.path());
        assert_eq!(recs.len(), 9);
        assert!(rep.repairs.is_empty());
    }

    #[test]
    fn flipped_byte_stops_replay_there_and_drops_later_segments() {
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(d.path(), SyncPolicy::Never, 4096).unwrap();
        for i in 0..400 {
            let p = w.append(&samples_rec(i, 1)).unwrap();
            w.commit(p).unwrap();
        }
        drop(w);
        let segs = list_segments(d.path()).unwrap();
        assert!(segs.len() >= 3);
        let mut bytes = fs::read(&segs[1].1).unwrap();
        bytes[100] ^= 0x40;
        fs::write(&segs[1].1, &bytes).unwrap();
        let (recs, rep) = collect(d.path());
        assert!(recs.len() < 400);
        assert_eq!(rep.repairs.len(), 1);
        assert_eq!(rep.repairs[0].deleted_segments, segs.len() - 2);
    }

    #[test]
    fn future_version_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut h = *b"VGWL\x09\0\0\0";
        h[4] = 9;
        fs::write(d.path().join(segment_name(1)), h).unwrap();
        let e = replay(d.path(), |_| {}).unwrap_err();
        assert!(matches!(e, Error::FutureFormat { found: 9, .. }), "{e}");
    }

    #[test]
    fn checkpoint_keeps_what_is_asked_and_drops_old_segments() {
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(d.path(), SyncPolicy::Never, 4096).unwrap();
        for i in 0..300 {
            let p = w.append(&samples_rec(i, i as i64)).unwrap();
            w.commit(p).unwrap();
        }
        let upto = w.cut_segment().unwrap();
        let p = w.append(&samples_rec(1000, 1000)).unwrap();
        w.commit(p).unwrap();
        let rep = w
            .checkpoint(upto, |r| match r {
                Record::Samples(s) if s[0].ts >= 250 => Some(Record::Samples(s)),
                _ => None,
            })
            .unwrap();
        assert_eq!(rep.records_out, 50);
        assert!(
            list_segments(d.path())
                .unwrap()
                .iter()
                .all(|(n, _)| *n > upto)
        );
        drop(w);
        let (recs, _) = collect(d.path());
        assert_eq!(recs.len(), 51);
    }

    #[test]
    fn concurrent_writers_all_become_durable() {
        let d = tempfile::tempdir().unwrap();
        let w = std::sync::Arc::new(Wal::open(d.path(), SyncPolicy::Always, 1 << 20).unwrap());
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let p = w.append(&samples_rec(t * 1000 + i, 0)).unwrap();
                        w.commit(p).unwrap();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert!(w.stats.syncs.load(Ordering::Relaxed) <= 400);
        drop(w);
        assert_eq!(collect(d.path()).0.len(), 400);
    }
}
