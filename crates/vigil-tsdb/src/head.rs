//! The head: the in-memory, appendable part of the store holding the newest data (by default
//! the last ~3 hours) in compressed chunks, with its inverted index.
//!
//! Concurrency: series are found through 64 hash shards (read-locked for lookups, write-locked
//! only to create a series); each series has its own mutex held for the few instructions of an
//! append; the postings index has its own lock, taken for writing only when a series is created
//! or removed. Readers copy what they need (sealed chunks are shared `Arc`s) under the series
//! lock and decode outside it, so queries never hold up appends for long.
//!
//! Architecture invariant: a series' in-order chunks never span a block-range boundary, so the
//! head can be cut into blocks by dropping whole chunks.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use hashbrown::HashMap;
use parking_lot::{Mutex, RwLock};
use vigil_model::{Label, Labels, Matcher};

use crate::chunk::{XorAppender, decode_xor};
use crate::postings::EnvPostings;
use crate::symbols::Symbols;

const SHARDS: usize = 64;
/// Out-of-order samples kept apart before they are merged into the chunks.
const OOO_MERGE_AT: usize = 64;

/// Why a sample was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Older than the out-of-order window allows, or older than data already cut into blocks.
    TooOld,
    /// A different value already exists at this timestamp.
    DuplicateTimestamp,
    /// The environment reached its active-series limit and this would be a new series.
    SeriesLimit,
}

impl RejectReason {
    /// A short stable name for metrics and API responses.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::TooOld => "too_old",
            RejectReason::DuplicateTimestamp => "duplicate_timestamp",
            RejectReason::SeriesLimit => "series_limit",
        }
    }
}

/// How an append treats order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Live writes: out-of-order window and duplicate checks apply.
    Live,
    /// WAL replay: everything logged was accepted once, so accept it again in any order.
    Replay,
}

/// Outcome of one accepted append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Appended {
    /// Stored.
    New,
    /// The identical sample was already there; nothing changed.
    Same,
}

#[derive(Debug, Clone)]
pub(crate) struct Sealed {
    pub(crate) mint: i64,
    pub(crate) maxt: i64,
    pub(crate) bytes: Arc<[u8]>,
    /// Every value finite and none below the in-order sample before it (see
    /// [`SeriesData::open_rising`]).
    pub(crate) rising: bool,
}

#[derive(Debug)]
pub(crate) struct SeriesData {
    pub(crate) sealed: Vec<Sealed>,
    pub(crate) open: XorAppender,
    pub(crate) ooo: Vec<(i64, f64)>,
    /// Newest in-order sample (t, value bits); t = i64::MIN when none.
    pub(crate) last: (i64, u64),
    pub(crate) deleted: bool,
    /// Whether every value in the open chunk is finite (no NaN, no staleness marker) and
    /// none is below the in-order sample before it (in this chunk or the previous one): a
    /// window of such chunks has no counter resets.
    pub(crate) open_rising: bool,
}

/// One series in the head.
#[derive(Debug)]
pub(crate) struct MemSeries {
    pub(crate) sref: u32,
    /// Second identity hash (see [`series_hash`]).
    pub(crate) hash2: u64,
    pub(crate) env: u32,
    pub(crate) labels: Box<[(u32, u32)]>,
    pub(crate) data: Mutex<SeriesData>,
}

/// Reusable copies of one series' head data for a reader (see [`MemSeries::copy_into`]).
#[derive(Debug, Default)]
pub(crate) struct HeadCopy {
    /// Sealed chunks overlapping the range, oldest first.
    pub(crate) sealed: Vec<Arc<[u8]>>,
    /// The open chunk's bytes (empty when it does not overlap the range).
    pub(crate) open: Vec<u8>,
    /// Whether out-of-order samples overlap the range (then `copy_into` copied nothing).
    pub(crate) has_ooo: bool,
    /// Whether every copied chunk is rising (no counter resets, no NaN or staleness marker).
    pub(crate) rising: bool,
    /// The series' newest in-order sample (t, value bits).
    pub(crate) last: (i64, u64),
}

impl MemSeries {
    /// Copies the in-order chunks overlapping [mint, maxt] into `into`'s reused buffers
    /// (the lock is held only for the copy). `false` when the series is deleted, or has
    /// out-of-order samples or chunks not in time order in the range (`into.has_ooo`; the
    /// caller reads it through [`chunks_in`](Self::chunks_in) then).
    pub(crate) fn copy_into(&self, mint: i64, maxt: i64, into: &mut HeadCopy) -> bool {
        into.sealed.clear();
        into.open.clear();
        into.has_ooo = false;
        into.rising = true;
        let d = self.data.lock();
        into.last = d.last;
        if d.deleted {
            return false;
        }
        if d.ooo.iter().any(|s| s.0 >= mint && s.0 <= maxt) {
            into.has_ooo = true;
            return false;
        }
        let mut prev = i64::MIN;
        for c in d.sealed.iter().filter(|c| c.maxt >= mint && c.mint <= maxt) {
            if c.mint <= prev {
                into.has_ooo = true;
                return false;
            }
            prev = c.maxt;
            into.rising &= c.rising;
            into.sealed.push(c.bytes.clone());
        }
        if !d.open.is_empty() && d.open.max_time() >= mint && d.open.min_time() <= maxt {
            if d.open.min_time() <= prev {
                into.has_ooo = true;
                return false;
            }
            into.rising &= d.open_rising;
            into.open.extend_from_slice(d.open.bytes());
        }
        true
    }

    /// Copies of the chunks overlapping [mint, maxt] (the lock is held only for the copy);
    /// `None` when the series is deleted or has nothing in the range.
    pub(crate) fn chunks_in(&self, mint: i64, maxt: i64) -> Option<Vec<HeadChunk>> {
        let mut chunks = Vec::new();
        {
            let d = self.data.lock();
            if d.deleted {
                return None;
            }
            d.snapshot(mint, maxt, &mut chunks);
        }
        (!chunks.is_empty()).then_some(chunks)
    }
}

/// A copy of part of a series' head data, for readers.
#[derive(Debug, Clone)]
pub(crate) enum HeadChunk {
    /// An XOR chunk.
    Xor {
        mint: i64,
        maxt: i64,
        bytes: Arc<[u8]>,
    },
    /// Loose samples (out-of-order buffer), sorted.
    Samples(Arc<Vec<(i64, f64)>>),
}

impl HeadChunk {
    pub(crate) fn min_time(&self) -> i64 {
        match self {
            HeadChunk::Xor { mint, .. } => *mint,
            HeadChunk::Samples(s) => s.first().map_or(i64::MAX, |x| x.0),
        }
    }
}

/// Head settings.
#[derive(Debug, Clone)]
pub(crate) struct HeadOptions {
    pub(crate) ooo_window_ms: i64,
    pub(crate) chunk_samples: usize,
    pub(crate) block_range_ms: i64,
    pub(crate) max_series_per_env: Option<usize>,
}

#[derive(Default)]
struct Shard {
    map: HashMap<u64, Arc<MemSeries>, foldhash::fast::RandomState>,
    collisions: HashMap<u64, Vec<Arc<MemSeries>>, foldhash::fast::RandomState>,
}

/// The in-memory head.
pub(crate) struct Head {
    pub(crate) symbols: Symbols,
    shards: Box<[RwLock<Shard>]>,
    refs: RwLock<Vec<Option<Arc<MemSeries>>>>,
    postings: RwLock<HashMap<u32, EnvPostings>>,
    /// Samples older than this are refused (data before it is in blocks).
    pub(crate) min_valid: AtomicI64,
    /// Oldest and newest sample time in the head (i64::MAX / i64::MIN when empty).
    pub(crate) mint: AtomicI64,
    pub(crate) maxt: AtomicI64,
    pub(crate) opts: HeadOptions,
    name_sym: u32,
}

impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Head")
            .field("series", &self.num_series())
            .finish()
    }
}

/// A series' identity: two independent 64-bit hashes of (environment, labels). The first
/// keys the shard map; both must match for a lookup to hit. Two different label sets collide
/// on both with probability 2^-128 per pair (about 10^-27 across a million series), far below
/// the rate of undetected memory errors, so lookups compare hashes instead of chasing every
/// label string through the symbol table (measured: a quarter of append time).
pub(crate) fn series_hash<'a>(
    env: &str,
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
) -> (u64, u64) {
    use std::hash::BuildHasher;
    thread_local! {
        static KEY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    // The identity is hashed from one contiguous key (env, then name 0xff value 0xfe per
    // label; 0xfe/0xff never occur in UTF-8): two bulk passes instead of four small hasher
    // calls per label and hasher.
    KEY.with(|k| {
        let mut k = k.borrow_mut();
        k.clear();
        k.extend_from_slice(env.as_bytes());
        k.push(0xff);
        for (n, v) in pairs {
            k.extend_from_slice(n.as_bytes());
            k.push(0xff);
            k.extend_from_slice(v.as_bytes());
            k.push(0xfe);
        }
        (
            foldhash::quality::FixedState::with_seed(0x5eed_0001).hash_one(&k[..]),
            foldhash::quality::FixedState::with_seed(0x9e37_79b9_7f4a_7c15).hash_one(&k[..]),
        )
    })
}

impl SeriesData {
    fn new() -> Self {
        Self {
            sealed: Vec::new(),
            open: XorAppender::new(),
            ooo: Vec::new(),
            last: (i64::MIN, 0),
            deleted: false,
            open_rising: true,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sealed.is_empty() && self.open.is_empty() && self.ooo.is_empty()
    }

    fn min_time(&self) -> i64 {
        let a = self.sealed.first().map_or(i64::MAX, |c| c.mint);
        let b = if self.open.is_empty() {
            i64::MAX
        } else {
            self.open.min_time()
        };
        let c = self.ooo.first().map_or(i64::MAX, |s| s.0);
        a.min(b).min(c)
    }

    fn max_time(&self) -> i64 {
        let c = self.ooo.last().map_or(i64::MIN, |s| s.0);
        self.last.0.max(c)
    }

    fn seal(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let open = std::mem::replace(&mut self.open, XorAppender::new());
        let (mint, maxt) = (open.min_time(), open.max_time());
        self.sealed.push(Sealed {
            mint,
            maxt,
            bytes: Arc::from(open.into_bytes()),
            rising: self.open_rising,
        });
    }

    /// Appends in order (t greater than every in-order sample).
    fn push_in_order(&mut self, t: i64, v: f64, o: &HeadOptions) {
        if !self.open.is_empty()
            && (self.open.len() >= o.chunk_samples
                || self.open.is_full()
                || t.div_euclid(o.block_range_ms)
                    != self.open.min_time().div_euclid(o.block_range_ms))
        {
            self.seal();
        }
        let prev = f64::from_bits(self.last.1);
        let rising = v.is_finite() && (self.last.0 == i64::MIN || (prev.is_finite() && v >= prev));
        self.open_rising = rising && (self.open.is_empty() || self.open_rising);
        self.open.append(t, v);
        self.last = (t, v.to_bits());
    }

    /// The value stored at `t`, if any (decodes the chunk covering `t`).
    fn value_at(&self, t: i64) -> Option<u64> {
        if let Ok(i) = self.ooo.binary_search_by_key(&t, |s| s.0) {
            return Some(self.ooo[i].1.to_bits());
        }
        let mut buf = Vec::new();
        for c in &self.sealed {
            if c.mint <= t && t <= c.maxt {
                let _ = decode_xor(&c.bytes, &mut buf);
            }
        }
        if !self.open.is_empty() && self.open.min_time() <= t && t <= self.open.max_time() {
            let _ = decode_xor(self.open.bytes(), &mut buf);
        }
        buf.iter().find(|s| s.0 == t).map(|s| s.1.to_bits())
    }

    /// All samples, sorted, from chunk `from` on (and the open chunk and out-of-order buffer).
    fn drain_from(&mut self, from: usize) -> Vec<(i64, f64)> {
        let mut v = Vec::new();
        for c in self.sealed.drain(from..) {
            let _ = decode_xor(&c.bytes, &mut v);
        }
        let _ = decode_xor(self.open.bytes(), &mut v);
        self.open = XorAppender::new();
        v.append(&mut self.ooo);
        v.sort_by_key(|s| s.0);
        v.dedup_by_key(|s| s.0);
        v
    }

    /// Rewrites the chunks from the first one that may hold a sample at or after `from_t`,
    /// keeping samples for which `keep` holds. Used to merge out-of-order samples and to apply
    /// deletions.
    fn rebuild(&mut self, from_t: i64, o: &HeadOptions, keep: impl Fn(i64) -> bool) {
        let first = self
            .sealed
            .iter()
            .position(|c| c.maxt >= from_t)
            .unwrap_or(self.sealed.len());
        let samples = self.drain_from(first);
        self.last = self.sealed.last().map_or((i64::MIN, 0), |c| {
            let mut b = Vec::new();
            let _ = decode_xor(&c.bytes, &mut b);
            b.last().map_or((i64::MIN, 0), |s| (s.0, s.1.to_bits()))
        });
        for (t, v) in samples {
            if keep(t) {
                self.push_in_order(t, v, o);
            }
        }
    }

    fn append(
        &mut self,
        t: i64,
        v: f64,
        mode: Mode,
        min_valid: i64,
        o: &HeadOptions,
    ) -> Result<Appended, RejectReason> {
        let (last_t, last_bits) = self.last;
        if t > last_t {
            self.push_in_order(t, v, o);
            return Ok(Appended::New);
        }
        if t == last_t {
            return if last_bits == v.to_bits() {
                Ok(Appended::Same)
            } else {
                Err(RejectReason::DuplicateTimestamp)
            };
        }
        if mode == Mode::Live && (t < min_valid || t < last_t.saturating_sub(o.ooo_window_ms)) {
            return Err(RejectReason::TooOld);
        }
        match self.value_at(t) {
            Some(b) if b == v.to_bits() => return Ok(Appended::Same),
            Some(_) if mode == Mode::Live => return Err(RejectReason::DuplicateTimestamp),
            _ => {}
        }
        match self.ooo.binary_search_by_key(&t, |s| s.0) {
            Ok(i) => self.ooo[i].1 = v,
            Err(i) => self.ooo.insert(i, (t, v)),
        }
        if self.ooo.len() >= OOO_MERGE_AT {
            let from = self.ooo[0].0;
            self.rebuild(from, o, |_| true);
        }
        Ok(Appended::New)
    }

    /// Copies the chunks overlapping [mint, maxt].
    fn snapshot(&self, mint: i64, maxt: i64, out: &mut Vec<HeadChunk>) {
        for c in &self.sealed {
            if c.maxt >= mint && c.mint <= maxt {
                out.push(HeadChunk::Xor {
                    mint: c.mint,
                    maxt: c.maxt,
                    bytes: c.bytes.clone(),
                });
            }
        }
        if !self.open.is_empty() && self.open.max_time() >= mint && self.open.min_time() <= maxt {
            out.push(HeadChunk::Xor {
                mint: self.open.min_time(),
                maxt: self.open.max_time(),
                bytes: Arc::from(self.open.bytes()),
            });
        }
        let ooo: Vec<(i64, f64)> = self
            .ooo
            .iter()
            .copied()
            .filter(|s| s.0 >= mint && s.0 <= maxt)
            .collect();
        if !ooo.is_empty() {
            out.push(HeadChunk::Samples(Arc::new(ooo)));
        }
    }

    fn heap_bytes(&self) -> usize {
        self.sealed.capacity() * std::mem::size_of::<Sealed>()
            + self
                .sealed
                .iter()
                .map(|c| c.bytes.len() + 16)
                .sum::<usize>()
            + self.open.heap_bytes()
            + self.ooo.capacity() * 16
    }
}

/// A series found or created for a write.
pub(crate) struct Resolved {
    pub(crate) series: Arc<MemSeries>,
    pub(crate) created: bool,
}

impl Head {
    pub(crate) fn new(opts: HeadOptions) -> Self {
        let symbols = Symbols::new();
        let name_sym = symbols.intern(vigil_model::METRIC_NAME).unwrap_or(0);
        Self {
            symbols,
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            refs: RwLock::new(Vec::new()),
            postings: RwLock::new(HashMap::new()),
            min_valid: AtomicI64::new(i64::MIN),
            mint: AtomicI64::new(i64::MAX),
            maxt: AtomicI64::new(i64::MIN),
            opts,
            name_sym,
        }
    }

    pub(crate) fn num_series(&self) -> usize {
        self.postings.read().values().map(|p| p.all.len()).sum()
    }

    fn find_in(&self, shard: &Shard, hash: (u64, u64)) -> Option<Arc<MemSeries>> {
        let s = shard.map.get(&hash.0)?;
        if s.hash2 == hash.1 {
            return Some(s.clone());
        }
        shard
            .collisions
            .get(&hash.0)?
            .iter()
            .find(|s| s.hash2 == hash.1)
            .cloned()
    }

    /// Finds the series, or creates it and calls `log` (to write its WAL record) while no other
    /// writer can see it yet. `forced_ref` is used on replay to recreate a logged ref.
    pub(crate) fn get_or_create<'a, E>(
        &self,
        env: &str,
        pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone,
        forced_ref: Option<u32>,
        log: impl FnOnce(u32) -> Result<(), E>,
    ) -> Result<Result<Resolved, RejectReason>, E> {
        let hash = series_hash(env, pairs.clone());
        self.get_or_create_hashed(env, hash, pairs, forced_ref, log)
    }

    /// The series with each identity hash ([`series_hash`]) the head has, in input order.
    /// Hashes are grouped by shard (counting sort), each shard is read-locked once, and within
    /// it all lookups run before any reference count is touched, so their cache misses overlap
    /// instead of queueing behind locked instructions.
    pub(crate) fn find_many(&self, hashes: &[(u64, u64)]) -> Vec<Option<Arc<MemSeries>>> {
        let mut out = vec![None; hashes.len()];
        let mut start = [0usize; SHARDS + 1];
        for h in hashes {
            start[h.0 as usize % SHARDS + 1] += 1;
        }
        for k in 0..SHARDS {
            start[k + 1] += start[k];
        }
        let mut next = start;
        let mut order = vec![0u32; hashes.len()];
        for (i, h) in hashes.iter().enumerate() {
            let k = h.0 as usize % SHARDS;
            order[next[k]] = i as u32;
            next[k] += 1;
        }
        for k in 0..SHARDS {
            let group = &order[start[k]..start[k + 1]];
            if group.is_empty() {
                continue;
            }
            let shard = self.shards[k].read();
            let refs: Vec<Option<&Arc<MemSeries>>> = group
                .iter()
                .map(|&i| Self::lookup(&shard, hashes[i as usize]))
                .collect();
            for (&i, r) in group.iter().zip(refs) {
                out[i as usize] = r.cloned();
            }
        }
        out
    }

    fn lookup(shard: &Shard, hash: (u64, u64)) -> Option<&Arc<MemSeries>> {
        let s = shard.map.get(&hash.0)?;
        if s.hash2 == hash.1 {
            return Some(s);
        }
        shard
            .collisions
            .get(&hash.0)?
            .iter()
            .find(|s| s.hash2 == hash.1)
    }

    /// [`Head::get_or_create`] with the identity hash already computed from the same labels.
    pub(crate) fn get_or_create_hashed<'a, E>(
        &self,
        env: &str,
        hash: (u64, u64),
        pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone,
        forced_ref: Option<u32>,
        log: impl FnOnce(u32) -> Result<(), E>,
    ) -> Result<Result<Resolved, RejectReason>, E> {
        let (h1, _) = hash;
        let shard = &self.shards[h1 as usize % SHARDS];
        if let Some(s) = self.find_in(&shard.read(), hash) {
            self.alias(&s, forced_ref);
            return Ok(Ok(Resolved {
                series: s,
                created: false,
            }));
        }
        let mut w = shard.write();
        if let Some(s) = self.find_in(&w, hash) {
            self.alias(&s, forced_ref);
            return Ok(Ok(Resolved {
                series: s,
                created: false,
            }));
        }
        let Some(env_sym) = self.symbols.intern(env) else {
            return Ok(Err(RejectReason::SeriesLimit));
        };
        if forced_ref.is_none()
            && let Some(limit) = self.opts.max_series_per_env
            && self
                .postings
                .read()
                .get(&env_sym)
                .map_or(0, |p| p.all.len())
                >= limit
        {
            return Ok(Err(RejectReason::SeriesLimit));
        }
        let mut labels = Vec::new();
        for (n, v) in pairs.clone() {
            match (self.symbols.intern(n), self.symbols.intern(v)) {
                (Some(n), Some(v)) => labels.push((n, v)),
                _ => return Ok(Err(RejectReason::SeriesLimit)),
            }
        }
        let labels: Box<[(u32, u32)]> = labels.into_boxed_slice();
        let series = {
            let mut refs = self.refs.write();
            let sref = match forced_ref {
                Some(r) => r,
                None => refs.len() as u32,
            };
            if refs.len() <= sref as usize {
                refs.resize(sref as usize + 1, None);
            }
            let s = Arc::new(MemSeries {
                sref,
                hash2: hash.1,
                env: env_sym,
                labels,
                data: Mutex::new(SeriesData::new()),
            });
            refs[sref as usize] = Some(s.clone());
            s
        };
        log(series.sref)?;
        match w.map.entry(h1) {
            hashbrown::hash_map::Entry::Vacant(e) => {
                e.insert(series.clone());
            }
            hashbrown::hash_map::Entry::Occupied(_) => {
                w.collisions.entry(h1).or_default().push(series.clone())
            }
        }
        drop(w);
        self.postings
            .write()
            .entry(env_sym)
            .or_default()
            .add(series.sref, &series.labels);
        Ok(Ok(Resolved {
            series,
            created: true,
        }))
    }

    /// On replay, a series logged twice under different refs (removed by GC and created again
    /// before a checkpoint dropped the old record) answers to both refs.
    fn alias(&self, s: &Arc<MemSeries>, forced_ref: Option<u32>) {
        if let Some(r) = forced_ref.filter(|r| *r != s.sref) {
            let mut refs = self.refs.write();
            if refs.len() <= r as usize {
                refs.resize(r as usize + 1, None);
            }
            refs[r as usize] = Some(s.clone());
        }
    }

    /// The series with ref `r`.
    pub(crate) fn by_ref(&self, r: u32) -> Option<Arc<MemSeries>> {
        self.refs.read().get(r as usize).and_then(|s| s.clone())
    }

    /// Appends one sample to a series whose data lock the caller holds.
    pub(crate) fn append_locked(
        &self,
        d: &mut SeriesData,
        t: i64,
        v: f64,
        mode: Mode,
    ) -> Result<Appended, RejectReason> {
        let min_valid = self.min_valid.load(Ordering::SeqCst);
        if mode == Mode::Replay && t < min_valid {
            // Already persisted in a block.
            return Ok(Appended::Same);
        }
        d.append(t, v, mode, min_valid, &self.opts)
    }

    /// The head's time range: (oldest sample not yet cut into a block, newest sample), or
    /// `None` when empty.
    pub(crate) fn time_range(&self) -> Option<(i64, i64)> {
        let mint = self
            .mint
            .load(Ordering::Relaxed)
            .max(self.min_valid.load(Ordering::SeqCst));
        let maxt = self.maxt.load(Ordering::Relaxed);
        (mint != i64::MAX && maxt != i64::MIN && mint <= maxt).then_some((mint, maxt))
    }

    /// Records that samples between `mint` and `maxt` were appended.
    pub(crate) fn note_range(&self, mint: i64, maxt: i64) {
        self.mint.fetch_min(mint, Ordering::Relaxed);
        self.maxt.fetch_max(maxt, Ordering::Relaxed);
    }

    pub(crate) fn labels_of(&self, s: &MemSeries) -> Labels {
        Labels::from_sorted(
            s.labels
                .iter()
                .map(|&(n, v)| Label {
                    name: self.symbols.get_shared(n),
                    value: self.symbols.get_shared(v),
                })
                .collect(),
        )
    }

    /// Refs of series in `env` matching `matchers`.
    pub(crate) fn select_refs(&self, env: &str, matchers: &[Matcher]) -> Vec<u32> {
        let Some(e) = self.symbols.lookup(env) else {
            return Vec::new();
        };
        let p = self.postings.read();
        let Some(ep) = p.get(&e) else {
            return Vec::new();
        };
        ep.select(matchers, &|s| self.symbols.lookup(s), &|i| {
            self.symbols.get(i)
        })
    }

    /// Series of `env` matching `matchers` with their chunks overlapping [mint, maxt].
    pub(crate) fn select(
        &self,
        env: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Vec<(Labels, Vec<HeadChunk>)> {
        let refs = self.select_refs(env, matchers);
        let mut out = Vec::with_capacity(refs.len());
        // One read of the refs table for the whole selection (appends of new series wait).
        let table = self.refs.read();
        for r in refs {
            let Some(Some(s)) = table.get(r as usize) else {
                continue;
            };
            if let Some(chunks) = s.chunks_in(mint, maxt) {
                out.push((self.labels_of(s), chunks));
            }
        }
        out
    }

    /// The live series of `refs` (in that order), under one read lock of the table.
    pub(crate) fn series_for(&self, refs: impl Iterator<Item = u32>) -> Vec<Arc<MemSeries>> {
        let table = self.refs.read();
        refs.filter_map(|r| table.get(r as usize).cloned().flatten())
            .collect()
    }

    /// Each of `refs` that still exists with its labels — only those named in `keep`, when
    /// given (one read of the refs table).
    pub(crate) fn labels_for(
        &self,
        refs: Vec<u32>,
        keep: Option<&[String]>,
    ) -> Vec<(Arc<MemSeries>, Labels)> {
        let keep_ids: Option<Vec<u32>> =
            keep.map(|k| k.iter().filter_map(|n| self.symbols.lookup(n)).collect());
        let table = self.refs.read();
        refs.into_iter()
            .filter_map(|r| match table.get(r as usize) {
                Some(Some(s)) => {
                    let labels = match &keep_ids {
                        None => self.labels_of(s),
                        Some(ids) => Labels::from_sorted(
                            s.labels
                                .iter()
                                .filter(|(n, _)| ids.contains(n))
                                .map(|&(n, v)| Label {
                                    name: self.symbols.get_shared(n),
                                    value: self.symbols.get_shared(v),
                                })
                                .collect(),
                        ),
                    };
                    Some((s.clone(), labels))
                }
                _ => None,
            })
            .collect()
    }

    /// The newest in-order sample of each matching series, if at or after `since`.
    pub(crate) fn latest(
        &self,
        env: &str,
        matchers: &[Matcher],
        since: i64,
    ) -> Vec<(Labels, i64, f64)> {
        let refs = self.select_refs(env, matchers);
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            let Some(s) = self.by_ref(r) else { continue };
            let (t, bits) = {
                let d = s.data.lock();
                if d.deleted {
                    continue;
                }
                let ooo_last = d.ooo.last().copied();
                match ooo_last {
                    Some((ot, ov)) if ot > d.last.0 => (ot, ov.to_bits()),
                    _ => d.last,
                }
            };
            if t >= since && t != i64::MIN {
                out.push((self.labels_of(&s), t, f64::from_bits(bits)));
            }
        }
        out
    }

    /// Label names used by series of `env` matching `matchers` (all series if none).
    pub(crate) fn label_names(&self, env: &str, matchers: &[Matcher]) -> Vec<String> {
        let mut names = std::collections::BTreeSet::new();
        if matchers.is_empty() {
            let Some(e) = self.symbols.lookup(env) else {
                return Vec::new();
            };
            if let Some(ep) = self.postings.read().get(&e) {
                for &(n, _) in ep.by_label.keys() {
                    names.insert(self.symbols.get(n).to_string());
                }
            }
        } else {
            for r in self.select_refs(env, matchers) {
                if let Some(s) = self.by_ref(r) {
                    for &(n, _) in s.labels.iter() {
                        names.insert(self.symbols.get(n).to_string());
                    }
                }
            }
        }
        names.into_iter().collect()
    }

    /// Values of label `name` in `env` among series matching `matchers`.
    pub(crate) fn label_values(&self, env: &str, name: &str, matchers: &[Matcher]) -> Vec<String> {
        let mut vals = std::collections::BTreeSet::new();
        let (Some(e), Some(n)) = (self.symbols.lookup(env), self.symbols.lookup(name)) else {
            return Vec::new();
        };
        if matchers.is_empty() {
            if let Some(ep) = self.postings.read().get(&e) {
                for (v, _) in ep.values_of(n) {
                    vals.insert(self.symbols.get(v).to_string());
                }
            }
        } else {
            for r in self.select_refs(env, matchers) {
                if let Some(s) = self.by_ref(r)
                    && let Some(&(_, v)) = s.labels.iter().find(|l| l.0 == n)
                {
                    vals.insert(self.symbols.get(v).to_string());
                }
            }
        }
        vals.into_iter().collect()
    }

    /// Series count per metric name in `env`.
    pub(crate) fn cardinality(&self, env: &str) -> Vec<(String, usize)> {
        let Some(e) = self.symbols.lookup(env) else {
            return Vec::new();
        };
        let p = self.postings.read();
        let Some(ep) = p.get(&e) else {
            return Vec::new();
        };
        ep.values_of(self.name_sym)
            .map(|(v, l)| (self.symbols.get(v).to_string(), l.len()))
            .collect()
    }

    /// Environments with series in the head, with their series counts.
    pub(crate) fn envs(&self) -> Vec<(String, usize)> {
        self.postings
            .read()
            .iter()
            .map(|(e, p)| (self.symbols.get(*e).to_string(), p.all.len()))
            .collect()
    }

    /// Every live series (for cutting blocks and checkpoints).
    pub(crate) fn all_series(&self) -> Vec<Arc<MemSeries>> {
        self.refs.read().iter().flatten().cloned().collect()
    }

    pub(crate) fn is_live(&self, r: u32) -> bool {
        self.refs
            .read()
            .get(r as usize)
            .is_some_and(|s| s.is_some())
    }

    /// Samples of `s` in [mint, maxt), sorted, into `out`.
    pub(crate) fn samples_in(
        &self,
        s: &MemSeries,
        mint: i64,
        maxt: i64,
        out: &mut Vec<(i64, f64)>,
    ) {
        let mut chunks = Vec::new();
        s.data.lock().snapshot(mint, maxt - 1, &mut chunks);
        let start = out.len();
        for c in chunks {
            match c {
                HeadChunk::Xor { bytes, .. } => {
                    let _ = decode_xor(&bytes, out);
                }
                HeadChunk::Samples(v) => out.extend_from_slice(&v),
            }
        }
        out[start..].sort_by_key(|s| s.0);
        let mut tail = out.split_off(start);
        tail.retain(|s| s.0 >= mint && s.0 < maxt);
        tail.dedup_by_key(|s| s.0);
        out.extend(tail);
    }

    /// Whether `s` has any sample in [mint, maxt).
    pub(crate) fn has_data_in(&self, s: &MemSeries, mint: i64, maxt: i64) -> bool {
        let d = s.data.lock();
        !d.deleted && !d.is_empty() && d.min_time() < maxt && d.max_time() >= mint
    }

    /// Drops every sample before `t` and removes series left empty. Returns how many series
    /// were removed.
    pub(crate) fn truncate_before(&self, t: i64) -> usize {
        let o = &self.opts;
        for s in self.all_series() {
            let mut d = s.data.lock();
            if d.min_time() >= t {
                continue;
            }
            let straddles = d.sealed.iter().any(|c| c.mint < t && c.maxt >= t)
                || (!d.open.is_empty() && d.open.min_time() < t && d.open.max_time() >= t);
            if straddles {
                d.rebuild(i64::MIN, o, |x| x >= t);
            } else {
                d.sealed.retain(|c| c.mint >= t);
                if !d.open.is_empty() && d.open.max_time() < t {
                    d.open = XorAppender::new();
                }
                d.ooo.retain(|s| s.0 >= t);
            }
        }
        self.mint
            .store(t.max(self.mint.load(Ordering::Relaxed)), Ordering::Relaxed);
        self.gc()
    }

    /// Removes series without data.
    pub(crate) fn gc(&self) -> usize {
        let mut removed: HashMap<u32, Vec<u32>> = HashMap::new();
        for shard in self.shards.iter() {
            let mut w = shard.write();
            let mut dead = Vec::new();
            // Emptiness is checked and the series marked deleted under one lock acquisition,
            // so a writer holding the series either appended before (not empty) or sees
            // `deleted` and resolves the series again.
            let mark = |s: &MemSeries| {
                let mut d = s.data.lock();
                if d.is_empty() && !d.deleted {
                    d.deleted = true;
                    true
                } else {
                    false
                }
            };
            for (h, s) in w.map.iter() {
                if mark(s) {
                    dead.push((*h, s.sref));
                }
            }
            for v in w.collisions.values() {
                for s in v {
                    if mark(s) {
                        dead.push((u64::MAX, s.sref));
                    }
                }
            }
            for (h, r) in dead {
                let Some(s) = self.by_ref(r) else { continue };
                if h != u64::MAX && w.map.get(&h).is_some_and(|m| m.sref == r) {
                    w.map.remove(&h);
                    // Promote a colliding series into the main map.
                    let promote = w.collisions.get_mut(&h).and_then(|v| v.pop());
                    if let Some(p) = promote {
                        w.map.insert(h, p);
                    }
                    if w.collisions.get(&h).is_some_and(|v| v.is_empty()) {
                        w.collisions.remove(&h);
                    }
                } else {
                    for v in w.collisions.values_mut() {
                        v.retain(|x| x.sref != r);
                    }
                    w.collisions.retain(|_, v| !v.is_empty());
                }
                self.refs.write()[r as usize] = None;
                removed.entry(s.env).or_default().push(r);
            }
        }
        let n = removed.values().map(|v| v.len()).sum();
        if n > 0 {
            let dead: hashbrown::HashSet<u32> = removed.values().flatten().copied().collect();
            for slot in self.refs.write().iter_mut() {
                if slot.as_ref().is_some_and(|s| dead.contains(&s.sref)) {
                    *slot = None;
                }
            }
            let mut p = self.postings.write();
            for (env, mut refs) in removed {
                refs.sort_unstable();
                if let Some(ep) = p.get_mut(&env) {
                    ep.remove_sorted(&refs);
                    if ep.all.is_empty() {
                        p.remove(&env);
                    }
                }
            }
        }
        n
    }

    /// Deletes samples in [mint, maxt] of matching series. Returns the series touched.
    pub(crate) fn delete(&self, env: &str, matchers: &[Matcher], mint: i64, maxt: i64) -> usize {
        let refs = self.select_refs(env, matchers);
        let mut n = 0;
        for r in refs {
            let Some(s) = self.by_ref(r) else { continue };
            let mut d = s.data.lock();
            if d.max_time() < mint || d.min_time() > maxt {
                continue;
            }
            d.rebuild(mint, &self.opts, |t| t < mint || t > maxt);
            n += 1;
        }
        n
    }

    /// Approximate heap bytes of series data, index and symbols.
    pub(crate) fn heap_bytes(&self) -> usize {
        let series: usize = self
            .all_series()
            .iter()
            .map(|s| {
                std::mem::size_of::<MemSeries>()
                    + 16
                    + s.labels.len() * 8
                    + s.data.lock().heap_bytes()
            })
            .sum();
        let postings: usize = self.postings.read().values().map(|p| p.heap_bytes()).sum();
        let maps: usize = self
            .shards
            .iter()
            .map(|s| s.read().map.capacity() * 17)
            .sum();
        series + postings + maps + self.refs.read().capacity() * 8 + self.symbols.heap_bytes()
    }

    /// Number of chunks and samples in the head.
    pub(crate) fn chunk_stats(&self) -> (usize, usize) {
        let mut chunks = 0;
        let mut samples = 0;
        for s in self.all_series() {
            let d = s.data.lock();
            chunks += d.sealed.len() + usize::from(!d.open.is_empty());
            samples += d.open.len() + d.ooo.len();
            for c in &d.sealed {
                if c.bytes.len() >= 2 {
                    samples += u16::from_be_bytes([c.bytes[0], c.bytes[1]]) as usize;
                }
            }
        }
        (chunks, samples)
    }
}
