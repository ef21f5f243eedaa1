//! Reading: select series by matchers over a time range and stream their samples.
//!
//! A [`Querier`] holds a consistent view: the list of blocks at the moment it was made (kept
//! alive by `Arc`, so retention deleting a block does not break a running read) and the head.
//! [`Querier::select`] resolves matching series in each source and groups them by label set; it
//! materialises labels and chunk references, never samples. A [`SampleIter`] decodes one chunk
//! at a time, merging sources that overlap in time and dropping duplicate timestamps (the head
//! wins over blocks, newer blocks over older).

use std::sync::Arc;

use vigil_model::{Labels, Matcher};

use crate::block::{Block, ChunkMeta};
use crate::chunk::decode_xor;
use crate::codec::RollupPoint;
use crate::error::Result;
use crate::head::{Head, HeadChunk, HeadCopy, MemSeries};
use crate::tombstones::Tombstone;

#[derive(Debug, Clone)]
pub(crate) enum Source {
    Head(HeadChunk),
    Block { block: Arc<Block>, chunk: ChunkMeta },
}

impl Source {
    fn min_time(&self) -> i64 {
        match self {
            Source::Head(h) => h.min_time(),
            Source::Block { chunk, .. } => chunk.mint,
        }
    }

    fn max_time(&self) -> i64 {
        match self {
            Source::Head(HeadChunk::Xor { maxt, .. }) => *maxt,
            Source::Head(HeadChunk::Samples(s)) => s.last().map_or(i64::MIN, |x| x.0),
            Source::Block { chunk, .. } => chunk.maxt,
        }
    }

    /// About how many of this source's samples fall in `[mint, maxt]` (by the share of its
    /// time span inside), to size a read's buffer once.
    fn samples_within(&self, mint: i64, maxt: i64) -> usize {
        let n = match self {
            Source::Head(HeadChunk::Xor { bytes, .. }) => crate::chunk::sample_count(bytes),
            Source::Head(HeadChunk::Samples(s)) => s.len(),
            Source::Block { chunk, .. } => chunk.samples as usize,
        };
        let (lo, hi) = (self.min_time(), self.max_time());
        if mint <= lo && maxt >= hi {
            return n;
        }
        let inside = maxt.min(hi).saturating_sub(mint.max(lo)).max(0) as u128 + 1;
        let span = hi.saturating_sub(lo).max(0) as u128 + 1;
        (n as u128 * inside / span) as usize + 1
    }

    /// Priority on equal timestamps: higher wins.
    fn rank(&self) -> u8 {
        match self {
            Source::Head(_) => 2,
            Source::Block { .. } => 1,
        }
    }

    /// Decodes the samples (at least those in `[mint, maxt]`; block chunks may skip the rest).
    fn decode(
        &self,
        buf: &mut Vec<u8>,
        out: &mut Vec<(i64, f64)>,
        mint: i64,
        maxt: i64,
    ) -> Result<()> {
        match self {
            Source::Head(HeadChunk::Xor { bytes, .. }) => {
                // Head chunks come from memory this process wrote; a decode failure is a bug,
                // reported as corruption rather than a panic.
                decode_xor(bytes, out)
                    .map_err(|e| crate::Error::corrupt("<head>", 0, e.to_string()))
            }
            Source::Head(HeadChunk::Samples(s)) => {
                out.extend_from_slice(s);
                Ok(())
            }
            Source::Block { block, chunk } => block.decode_chunk_in(chunk, mint, maxt, buf, out),
        }
    }
}

/// The most bytes of consecutive block chunks [`SampleIter::read_all`] reads with one call.
const RUN_READ_MAX: u64 = 1 << 20;

/// The most samples [`SampleIter::read_all`] reserves room for ahead of decoding (16 MiB).
const READ_RESERVE_MAX: usize = 1 << 20;

/// A consistent read view over one environment and time range.
#[derive(Debug, Clone)]
pub struct Querier {
    pub(crate) head: Arc<Head>,
    pub(crate) blocks: Arc<Vec<Arc<Block>>>,
    pub(crate) tombstones: Arc<Vec<Tombstone>>,
    pub(crate) env: String,
    pub(crate) mint: i64,
    pub(crate) maxt: i64,
    /// Start of the range for rollups (rollups have their own, longer retention).
    pub(crate) rollup_mint: i64,
}

/// A selected series: labels, chunk sources, deleted intervals.
type SelectedSeries = (Labels, Vec<Source>, Vec<(i64, i64)>);

/// Matching series, in label order, each with its samples still encoded.
#[derive(Debug)]
pub struct SeriesSet {
    items: std::vec::IntoIter<SelectedSeries>,
    mint: i64,
    maxt: i64,
}

/// One series of a [`SeriesSet`].
#[derive(Debug)]
pub struct Series {
    /// Its labels.
    pub labels: Labels,
    /// Its samples in time order.
    pub samples: SampleIter,
}

impl Iterator for SeriesSet {
    type Item = Series;
    fn next(&mut self) -> Option<Series> {
        let (labels, sources, deleted) = self.items.next()?;
        Some(Series {
            labels,
            samples: SampleIter::new(sources, deleted, self.mint, self.maxt),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.items.size_hint()
    }
}

impl ExactSizeIterator for SeriesSet {}

enum Item {
    Ready(SelectedSeries),
    /// A head series whose chunks are not yet copied.
    Head(Arc<MemSeries>, Labels),
}

/// Part of a selection (see [`Querier::select_parts`]); yields series in no particular order.
pub struct SeriesPart {
    items: std::vec::IntoIter<Item>,
    /// Head series ids the reader resolves itself, in batches (grouped reads: see
    /// [`Querier::select_parts_grouped`]); read before `items`.
    refs: std::vec::IntoIter<u32>,
    head: Option<Arc<crate::head::Head>>,
    /// Resolved `refs`, the next one last.
    resolved: Vec<Arc<MemSeries>>,
    mint: i64,
    maxt: i64,
    /// Reused copies of head chunks for [`read_next`](Self::read_next).
    copy: HeadCopy,
}

/// Head series ids resolved per read-lock of the series table in grouped reads.
const RESOLVE_BATCH: usize = 256;

/// Groups of series by the values of some labels, numbered in order of first appearance,
/// found without building each series' labels (see [`SeriesPart::read_next_grouped`]).
#[derive(Debug)]
pub struct Groups {
    /// The label names grouped by, sorted.
    names: Vec<String>,
    /// Their symbol ids in the head (`None`: not interned, so never present), looked up on
    /// the first head series.
    ids: Option<Vec<Option<u32>>>,
    by_ids: hashbrown::HashMap<Vec<u32>, usize>,
    by_labels: hashbrown::HashMap<Labels, usize>,
    labels: Vec<Labels>,
    key: Vec<u32>,
}

impl Groups {
    /// Groups by the labels `names` (a series without one of them groups as without it).
    pub fn new(names: &[String]) -> Self {
        let mut names = names.to_vec();
        names.sort();
        names.dedup();
        Self {
            names,
            ids: None,
            by_ids: hashbrown::HashMap::new(),
            by_labels: hashbrown::HashMap::new(),
            labels: Vec::new(),
            key: Vec::new(),
        }
    }

    /// Each group's labels (the grouping labels only), by group number.
    pub fn labels(&self) -> &[Labels] {
        &self.labels
    }

    /// Takes the groups' labels, by group number.
    pub fn into_labels(self) -> Vec<Labels> {
        self.labels
    }

    fn of_labels(&mut self, l: &Labels) -> usize {
        let projected = Labels::from_sorted(
            l.iter()
                .filter(|x| self.names.iter().any(|n| n == x.name.as_str()))
                .cloned()
                .collect(),
        );
        self.number(projected)
    }

    fn number(&mut self, projected: Labels) -> usize {
        if let Some(&g) = self.by_labels.get(&projected) {
            return g;
        }
        let g = self.labels.len();
        self.labels.push(projected.clone());
        self.by_labels.insert(projected, g);
        g
    }

    fn of_head(&mut self, head: &crate::head::Head, s: &MemSeries) -> usize {
        let ids = self
            .ids
            .get_or_insert_with(|| self.names.iter().map(|n| head.symbols.lookup(n)).collect());
        self.key.clear();
        for id in ids.iter() {
            let v = id
                .and_then(|id| s.labels.iter().find(|(n, _)| *n == id))
                .map_or(u32::MAX, |&(_, v)| v);
            self.key.push(v);
        }
        if let Some(&g) = self.by_ids.get(self.key.as_slice()) {
            return g;
        }
        let projected = Labels::from_sorted(
            ids.iter()
                .zip(&self.key)
                .filter(|&(id, &v)| id.is_some() && v != u32::MAX)
                .map(|(id, &v)| vigil_model::Label {
                    name: head.symbols.get_shared(id.unwrap_or_default()),
                    value: head.symbols.get_shared(v),
                })
                .collect(),
        );
        let g = self.number(projected);
        self.by_ids.insert(self.key.clone(), g);
        g
    }
}

/// What reading one head series found.
enum HeadRead {
    /// Samples decoded into the output, or a counter run.
    Done(Result<Option<CounterRun>>),
    /// Nothing in the range.
    Empty,
    /// Out-of-order data: its chunks, to merge.
    Chunks(Vec<Source>),
}

impl std::fmt::Debug for SeriesPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeriesPart")
            .field("left", &self.items.len())
            .finish()
    }
}

impl Iterator for SeriesPart {
    type Item = Series;
    fn next(&mut self) -> Option<Series> {
        loop {
            let (labels, sources, deleted) = match self.items.next()? {
                Item::Ready(x) => x,
                Item::Head(series, l) => match series.chunks_in(self.mint, self.maxt) {
                    Some(chunks) => (
                        l,
                        chunks.into_iter().map(Source::Head).collect(),
                        Vec::new(),
                    ),
                    None => continue,
                },
            };
            return Some(Series {
                labels,
                samples: SampleIter::new(sources, deleted, self.mint, self.maxt),
            });
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (
            0,
            Some(self.items.len() + self.refs.len() + self.resolved.len()),
        )
    }
}

/// A series' samples in a range that hold no counter reset, summarised: what `rate` and
/// `increase` need, read without decoding the whole range (see
/// [`SeriesPart::read_next_run`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CounterRun {
    /// The first sample in the range.
    pub first: (i64, f64),
    /// The last sample in the range.
    pub last: (i64, f64),
    /// How many samples the range holds.
    pub samples: usize,
}

impl SeriesPart {
    /// Decodes the next series' samples in the range into `out` (appending) and returns its
    /// labels; `None` when the part is done. A head series' in-order chunks are copied into
    /// buffers the part reuses and decoded straight into `out`, so reading one allocates
    /// nothing; anything else goes through a [`SampleIter`]. On error `out` may hold part of
    /// the series.
    pub fn read_next(&mut self, out: &mut Vec<(i64, f64)>) -> Option<Result<Labels>> {
        self.next_series(out, false)
            .map(|r| r.map(|(labels, _)| labels))
    }

    /// Like [`read_next`](Self::read_next), but with `runs`, a head series whose samples in
    /// the range are all finite, not decreasing and end with the series' newest sample comes
    /// back as a [`CounterRun`] instead (nothing added to `out`): only the samples before the
    /// range's first are decoded, the rest is counted from chunk headers.
    pub fn read_next_run(
        &mut self,
        out: &mut Vec<(i64, f64)>,
        runs: bool,
    ) -> Option<Result<(Labels, Option<CounterRun>)>> {
        self.next_series(out, runs)
    }

    fn next_series(
        &mut self,
        out: &mut Vec<(i64, f64)>,
        runs: bool,
    ) -> Option<Result<(Labels, Option<CounterRun>)>> {
        loop {
            let (labels, sources, deleted) = match self.items.next()? {
                Item::Ready(x) => x,
                Item::Head(series, labels) => match self.read_head(&series, out, runs) {
                    HeadRead::Done(r) => return Some(r.map(|run| (labels, run))),
                    HeadRead::Empty => continue,
                    HeadRead::Chunks(sources) => (labels, sources, Vec::new()),
                },
            };
            let mut it = SampleIter::new(sources, deleted, self.mint, self.maxt);
            return Some(it.read_all(out).map(|()| (labels, None)));
        }
    }

    /// Like [`read_next_run`](Self::read_next_run), but instead of its labels gives the
    /// series' group in `groups` (which must be used with this part only): a head series'
    /// labels are never built, only its grouping labels' values looked up.
    pub fn read_next_grouped(
        &mut self,
        out: &mut Vec<(i64, f64)>,
        runs: bool,
        groups: &mut Groups,
    ) -> Option<Result<(usize, Option<CounterRun>)>> {
        loop {
            if let Some(series) = self.next_ref() {
                let read = self.read_head(&series, out, runs);
                // Borrowed, not cloned: no shared reference count touched per series.
                let head = self.head.as_deref()?;
                let sources = match read {
                    HeadRead::Done(r) => {
                        let g = groups.of_head(head, &series);
                        return Some(r.map(|run| (g, run)));
                    }
                    HeadRead::Empty => continue,
                    HeadRead::Chunks(sources) => sources,
                };
                let g = groups.of_head(head, &series);
                let mut it = SampleIter::new(sources, Vec::new(), self.mint, self.maxt);
                return Some(it.read_all(out).map(|()| (g, None)));
            }
            let (labels, sources, deleted) = match self.items.next()? {
                Item::Ready(x) => x,
                Item::Head(series, labels) => match self.read_head(&series, out, runs) {
                    HeadRead::Done(r) => {
                        let g = groups.of_labels(&labels);
                        return Some(r.map(|run| (g, run)));
                    }
                    HeadRead::Empty => continue,
                    HeadRead::Chunks(sources) => (labels, sources, Vec::new()),
                },
            };
            let g = groups.of_labels(&labels);
            let mut it = SampleIter::new(sources, deleted, self.mint, self.maxt);
            return Some(it.read_all(out).map(|()| (g, None)));
        }
    }

    /// The next head series of `refs`, resolving a batch under one read lock of the table.
    fn next_ref(&mut self) -> Option<Arc<MemSeries>> {
        while self.resolved.is_empty() {
            let head = self.head.as_ref()?;
            let batch: Vec<u32> = self.refs.by_ref().take(RESOLVE_BATCH).collect();
            if batch.is_empty() {
                return None;
            }
            self.resolved
                .extend(head.series_for(batch.iter().rev().copied()));
        }
        self.resolved.pop()
    }

    /// Reads a head series' in-order chunks in the range (copied into reused buffers) into
    /// `out`, or as a counter run when `runs` allows; its chunks when out-of-order data
    /// overlaps the range.
    fn read_head(&mut self, series: &MemSeries, out: &mut Vec<(i64, f64)>, runs: bool) -> HeadRead {
        if series.copy_into(self.mint, self.maxt, &mut self.copy) {
            if runs && let Some(run) = self.counter_run() {
                return HeadRead::Done(run.map(Some));
            }
            let from = out.len();
            let c = &self.copy;
            let decoded = c
                .sealed
                .iter()
                .map(|b| &b[..])
                .chain((!c.open.is_empty()).then_some(&c.open[..]))
                .try_for_each(|b| decode_xor(b, out));
            if let Err(e) = decoded {
                return HeadRead::Done(Err(head_corrupt(e)));
            }
            let part = &out[from..];
            let a = part.partition_point(|p| p.0 < self.mint);
            let b = part.partition_point(|p| p.0 <= self.maxt);
            out.truncate(from + b);
            out.drain(from..from + a.min(b));
            if out.len() == from && c.sealed.is_empty() && c.open.is_empty() {
                return HeadRead::Empty;
            }
            return HeadRead::Done(Ok(None));
        }
        if !self.copy.has_ooo {
            return HeadRead::Empty;
        }
        match series.chunks_in(self.mint, self.maxt) {
            Some(chunks) => HeadRead::Chunks(chunks.into_iter().map(Source::Head).collect()),
            None => HeadRead::Empty,
        }
    }

    /// The copied head series as a [`CounterRun`], when it is one (see `read_next_run`).
    fn counter_run(&self) -> Option<Result<CounterRun>> {
        let c = &self.copy;
        let (last_t, last_bits) = c.last;
        if !c.rising || last_t > self.maxt || last_t < self.mint {
            return None;
        }
        let mut chunks = c
            .sealed
            .iter()
            .map(|b| &b[..])
            .chain((!c.open.is_empty()).then_some(&c.open[..]));
        let mut first = None;
        let mut samples = 0usize;
        // Chunks are in time order and only the first can start before the range.
        for chunk in chunks.by_ref() {
            match crate::chunk::seek_xor(chunk, self.mint) {
                Ok(Some((i, s))) => {
                    first = Some(s);
                    samples = crate::chunk::sample_count(chunk) - i;
                    break;
                }
                Ok(None) => {}
                Err(e) => return Some(Err(head_corrupt(e))),
            }
        }
        samples += chunks.map(crate::chunk::sample_count).sum::<usize>();
        Some(Ok(CounterRun {
            first: first?,
            last: (last_t, f64::from_bits(last_bits)),
            samples,
        }))
    }
}

/// Head chunks come from memory this process wrote; a decode failure is a bug, reported as
/// corruption rather than a panic.
fn head_corrupt(e: crate::chunk::ChunkCorrupt) -> crate::Error {
    crate::Error::corrupt("<head>", 0, e.to_string())
}

/// Streams one series' samples, decoding a chunk (or a group of overlapping chunks) at a time.
#[derive(Debug)]
pub struct SampleIter {
    /// Sources not yet decoded, latest-starting first (popped from the back).
    pending: Vec<Source>,
    buf: Vec<(i64, f64)>,
    pos: usize,
    bytes: Vec<u8>,
    deleted: Vec<(i64, i64)>,
    mint: i64,
    maxt: i64,
    failed: bool,
}

impl SampleIter {
    fn new(mut sources: Vec<Source>, deleted: Vec<(i64, i64)>, mint: i64, maxt: i64) -> Self {
        sources.sort_by(|a, b| {
            b.min_time()
                .cmp(&a.min_time())
                .then(b.rank().cmp(&a.rank()))
        });
        Self {
            pending: sources,
            buf: Vec::new(),
            pos: 0,
            bytes: Vec::new(),
            deleted,
            mint,
            maxt,
            failed: false,
        }
    }

    /// Drops the samples of `v[from..]` (in time order) outside the range or deleted.
    fn trim_from(&self, v: &mut Vec<(i64, f64)>, from: usize) {
        let part = &v[from..];
        let a = part.partition_point(|p| p.0 < self.mint);
        let b = part.partition_point(|p| p.0 <= self.maxt);
        v.truncate(from + b);
        v.drain(from..from + a.min(b));
        if !self.deleted.is_empty() {
            let mut k = from;
            for r in from..v.len() {
                let t = v[r].0;
                if !self.deleted.iter().any(|&(x, y)| t >= x && t <= y) {
                    v[k] = v[r];
                    k += 1;
                }
            }
            v.truncate(k);
        }
    }

    fn trim(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        self.trim_from(&mut buf, 0);
        self.buf = buf;
    }

    fn refill(&mut self) -> Result<bool> {
        self.buf.clear();
        self.pos = 0;
        let Some(first) = self.pending.pop() else {
            return Ok(false);
        };
        // The common case: one source not overlapping the next; no grouping vector.
        if self
            .pending
            .last()
            .is_none_or(|n| n.min_time() > first.max_time())
        {
            first.decode(&mut self.bytes, &mut self.buf, self.mint, self.maxt)?;
            self.trim();
            return Ok(true);
        }
        let mut group = vec![first];
        let mut hi = group[0].max_time();
        while let Some(next) = self.pending.last() {
            if next.min_time() <= hi {
                hi = hi.max(next.max_time());
                group.push(self.pending.pop().expect("peeked"));
            } else {
                break;
            }
        }
        if group.len() == 1 {
            group[0].decode(&mut self.bytes, &mut self.buf, self.mint, self.maxt)?;
        } else {
            // Overlapping sources: decode all, keep the highest-ranked value per timestamp.
            let mut tagged: Vec<(i64, u8, f64)> = Vec::new();
            let mut tmp = Vec::new();
            for s in &group {
                tmp.clear();
                s.decode(&mut self.bytes, &mut tmp, self.mint, self.maxt)?;
                tagged.extend(tmp.iter().map(|&(t, v)| (t, s.rank(), v)));
            }
            tagged.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            tagged.dedup_by_key(|x| x.0);
            self.buf.extend(tagged.into_iter().map(|(t, _, v)| (t, v)));
        }
        self.trim();
        Ok(true)
    }

    /// Collects the remaining samples into `out`. Chunks that overlap nothing are decoded
    /// straight into `out` (no intermediate buffer); overlapping groups are merged first.
    /// On error, `out` holds the samples of the chunks before the damaged one.
    pub fn read_all(&mut self, out: &mut Vec<(i64, f64)>) -> Result<()> {
        if self.failed {
            return Ok(());
        }
        out.extend_from_slice(&self.buf[self.pos..]);
        self.pos = self.buf.len();
        // One allocation for the whole read rather than one doubling per chunk. The counts
        // come from chunk headers and the index, so the hint is capped: a damaged count must
        // not reserve gigabytes.
        let hint: usize = self
            .pending
            .iter()
            .map(|s| s.samples_within(self.mint, self.maxt))
            .sum();
        out.reserve(hint.min(READ_RESERVE_MAX));
        while let Some(first) = self.pending.pop() {
            if self
                .pending
                .last()
                .is_some_and(|n| n.min_time() <= first.max_time())
            {
                self.pending.push(first);
                match self.refill() {
                    Ok(true) => {
                        out.extend_from_slice(&self.buf);
                        self.pos = self.buf.len();
                        continue;
                    }
                    Ok(false) => return Ok(()),
                    Err(e) => {
                        self.failed = true;
                        return Err(e);
                    }
                }
            }
            if let Source::Block { block, chunk } = &first {
                let (run, bytes) = self.contiguous_run(block, chunk);
                if run > 0 {
                    if let Err(e) = self.decode_run(block, chunk, run, bytes, out) {
                        self.failed = true;
                        return Err(e);
                    }
                    continue;
                }
            }
            let from = out.len();
            if let Err(e) = first.decode(&mut self.bytes, out, self.mint, self.maxt) {
                out.truncate(from);
                self.failed = true;
                return Err(e);
            }
            self.trim_from(out, from);
        }
        self.buf.clear();
        self.pos = 0;
        Ok(())
    }

    /// How many of the next sources (the back of `pending`) are chunks of `block` stored
    /// right after `chunk` in its chunks file, one after another, so that they can be read
    /// with `chunk` in one call (none that overlaps the source after it: the read merges
    /// those), and how many bytes that call reads, at most [`RUN_READ_MAX`].
    fn contiguous_run(&self, block: &Arc<Block>, chunk: &ChunkMeta) -> (usize, u64) {
        let p = &self.pending;
        let mut end = chunk.off.saturating_add(u64::from(chunk.len) + 4);
        let mut k = 0;
        while k < p.len() {
            let i = p.len() - 1 - k;
            let Source::Block { block: b, chunk: c } = &p[i] else {
                break;
            };
            let next_end = end.saturating_add(u64::from(c.len) + 4);
            if !Arc::ptr_eq(b, block)
                || c.off != end
                || next_end - chunk.off > RUN_READ_MAX
                || (i > 0 && p[i - 1].min_time() <= c.maxt)
            {
                break;
            }
            end = next_end;
            k += 1;
        }
        (k, end - chunk.off)
    }

    /// Decodes `first` and the `run` chunks after it, `bytes` in all (see
    /// [`contiguous_run`](Self::contiguous_run)), from one read. On error, `out` holds the
    /// samples of the chunks before the damaged one.
    fn decode_run(
        &mut self,
        block: &Block,
        first: &ChunkMeta,
        run: usize,
        bytes: u64,
        out: &mut Vec<(i64, f64)>,
    ) -> Result<()> {
        self.bytes.resize(bytes as usize, 0);
        block.read_at(&mut self.bytes, first.off)?;
        let mut c = *first;
        for left in (0..=run).rev() {
            let at = (c.off - first.off) as usize;
            let raw = &self.bytes[at..at + c.len as usize + 4];
            let from = out.len();
            if let Err(e) = block.decode_raw_in(&c, raw, self.mint, self.maxt, out) {
                out.truncate(from);
                return Err(e);
            }
            self.trim_from(out, from);
            if left == 0 {
                break;
            }
            // `contiguous_run` counted only block chunks.
            match self.pending.pop() {
                Some(Source::Block { chunk, .. }) => c = chunk,
                _ => break,
            }
        }
        Ok(())
    }
}

impl Iterator for SampleIter {
    type Item = Result<(i64, f64)>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(&s) = self.buf.get(self.pos) {
                self.pos += 1;
                return Some(Ok(s));
            }
            match self.refill() {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Querier {
    /// The environment read.
    pub fn env(&self) -> &str {
        &self.env
    }

    /// The effective time range (after retention).
    pub fn range(&self) -> (i64, i64) {
        (self.mint, self.maxt)
    }

    /// Whether raw samples in the range are (also) in blocks, not only in the head: reading
    /// them then decodes block chunks, which costs several microseconds per series whatever
    /// part of a chunk is wanted.
    pub fn reads_blocks(&self) -> bool {
        self.blocks.iter().any(|b| {
            b.meta.resolution_ms == 0
                && b.meta.max_time >= self.mint
                && b.meta.min_time <= self.maxt
        })
    }

    fn deleted_for(&self, labels: &Labels) -> Vec<(i64, i64)> {
        self.tombstones
            .iter()
            .filter(|t| {
                t.env == self.env
                    && t.matchers
                        .iter()
                        .all(|m| m.matches(labels.get(&m.name).unwrap_or("")))
            })
            .map(|t| (t.mint, t.maxt))
            .collect()
    }

    /// Series matching `matchers` with samples in the range, in label order.
    pub fn select(&self, matchers: &[Matcher]) -> Result<SeriesSet> {
        self.select_inner(matchers, true)
    }

    /// Like [`select`](Self::select) but in no particular order, which saves sorting the
    /// selection by labels (the query engine orders its results itself).
    pub fn select_unordered(&self, matchers: &[Matcher]) -> Result<SeriesSet> {
        self.select_inner(matchers, false)
    }

    fn select_inner(&self, matchers: &[Matcher], sorted: bool) -> Result<SeriesSet> {
        // Gather (labels, sources) from blocks and head, then merge equal label sets (a series
        // present in several blocks and the head): by sorting when asked for label order or
        // when several sources answered, else not at all.
        let mut found: Vec<(Labels, Vec<Source>)> = Vec::new();
        let mut sources = 0;
        if self.mint <= self.maxt {
            for b in self.blocks.iter() {
                if b.meta.resolution_ms != 0
                    || b.meta.max_time < self.mint
                    || b.meta.min_time > self.maxt
                {
                    continue;
                }
                let before = found.len();
                for i in b.select_ids(&self.env, matchers) {
                    let s = &b.series[i as usize];
                    let chunks: Vec<Source> = s
                        .chunks
                        .iter()
                        .filter(|c| c.maxt >= self.mint && c.mint <= self.maxt)
                        .map(|c| Source::Block {
                            block: b.clone(),
                            chunk: *c,
                        })
                        .collect();
                    if !chunks.is_empty() {
                        found.push((b.labels(s), chunks));
                    }
                }
                sources += usize::from(found.len() > before);
            }
            let before = found.len();
            for (labels, chunks) in self.head.select(&self.env, matchers, self.mint, self.maxt) {
                found.push((labels, chunks.into_iter().map(Source::Head).collect()));
            }
            sources += usize::from(found.len() > before);
        }
        let mut items: Vec<SelectedSeries> = if sorted {
            found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let mut items: Vec<SelectedSeries> = Vec::with_capacity(found.len());
            for (l, src) in found {
                match items.last_mut() {
                    Some(last) if last.0 == l => last.1.extend(src),
                    _ => items.push((l, src, Vec::new())),
                }
            }
            items
        } else if sources > 1 {
            // Merge by hashing: cheaper than ordering by label text.
            let mut index: hashbrown::HashMap<Labels, usize> =
                hashbrown::HashMap::with_capacity(found.len());
            let mut items: Vec<SelectedSeries> = Vec::with_capacity(found.len());
            for (l, src) in found {
                match index.get(&l) {
                    Some(&i) => items[i].1.extend(src),
                    None => {
                        index.insert(l.clone(), items.len());
                        items.push((l, src, Vec::new()));
                    }
                }
            }
            items
        } else {
            // One source holds each series once.
            found
                .into_iter()
                .map(|(l, src)| (l, src, Vec::new()))
                .collect()
        };
        if self.tombstones.iter().any(|t| t.env == self.env) {
            for it in &mut items {
                it.2 = self.deleted_for(&it.0);
            }
        }
        Ok(SeriesSet {
            items: items.into_iter(),
            mint: self.mint,
            maxt: self.maxt,
        })
    }

    /// The selection of [`select_unordered`](Self::select_unordered) cut into at most `n`
    /// parts of about equal size, to be read on `n` threads. When only the head holds matching
    /// series, a part copies each series' chunks as it is read, so that work is spread over
    /// the readers too.
    pub fn select_parts(&self, matchers: &[Matcher], n: usize) -> Result<Vec<SeriesPart>> {
        self.select_parts_keeping(matchers, n, None)
    }

    /// [`select_parts`](Self::select_parts) with each series' labels cut down to the names in
    /// `keep` (when given): for readers that look at a few labels only, such as an
    /// aggregation `by` them, it saves building and dropping the rest.
    pub fn select_parts_keeping(
        &self,
        matchers: &[Matcher],
        n: usize,
        keep: Option<&[String]>,
    ) -> Result<Vec<SeriesPart>> {
        let n = n.max(1);
        let head_only = self.mint <= self.maxt
            && !self.tombstones.iter().any(|t| t.env == self.env)
            && self.blocks_in_range().next().is_none();
        let items: Vec<Item> = if head_only {
            // Labels are made here, on one thread: building them from the shared symbols on
            // several threads at once makes the symbols' reference counts bounce between cores.
            self.head
                .labels_for(self.head.select_refs(&self.env, matchers), keep)
                .into_iter()
                .map(|(s, l)| Item::Head(s, l))
                .collect()
        } else {
            let project = |l: Labels| match keep {
                None => l,
                Some(k) => Labels::from_sorted(
                    l.into_vec()
                        .into_iter()
                        .filter(|x| k.iter().any(|n| n == x.name.as_str()))
                        .collect(),
                ),
            };
            self.select_unordered(matchers)?
                .items
                .map(|(l, sources, deleted)| Item::Ready((project(l), sources, deleted)))
                .collect()
        };
        let per = items.len().div_ceil(n).max(1);
        let mut parts = Vec::with_capacity(n);
        let mut it = items.into_iter();
        loop {
            let part: Vec<Item> = it.by_ref().take(per).collect();
            if part.is_empty() {
                break;
            }
            parts.push(SeriesPart {
                items: part.into_iter(),
                refs: Vec::new().into_iter(),
                head: None,
                resolved: Vec::new(),
                mint: self.mint,
                maxt: self.maxt,
                copy: HeadCopy::default(),
            });
        }
        Ok(parts)
    }

    /// The selection cut into up to `n` parts for [`SeriesPart::read_next_grouped`]: when
    /// only the head holds the range, each part gets head series ids and resolves them
    /// itself (no labels are built for a series, nothing per series on the calling thread).
    pub fn select_parts_grouped(&self, matchers: &[Matcher], n: usize) -> Result<Vec<SeriesPart>> {
        let head_only = self.mint <= self.maxt
            && !self.tombstones.iter().any(|t| t.env == self.env)
            && self.blocks_in_range().next().is_none();
        if !head_only {
            return self.select_parts_keeping(matchers, n, None);
        }
        let mut refs = self.head.select_refs(&self.env, matchers);
        let per = refs.len().div_ceil(n.max(1)).max(1);
        let mut parts = Vec::with_capacity(n);
        while !refs.is_empty() {
            let rest = refs.split_off(per.min(refs.len()));
            parts.push(SeriesPart {
                items: Vec::new().into_iter(),
                refs: std::mem::replace(&mut refs, rest).into_iter(),
                head: Some(self.head.clone()),
                resolved: Vec::new(),
                mint: self.mint,
                maxt: self.maxt,
                copy: HeadCopy::default(),
            });
        }
        Ok(parts)
    }

    /// The newest sample in the range of each matching series, in no particular order. Answered
    /// from the head's last-sample fields without decoding when the range reaches the head's
    /// newest data; series only blocks hold cost a read of their last chunk.
    pub fn latest(&self, matchers: &[Matcher]) -> Result<Vec<(Labels, i64, f64)>> {
        let head_now = self.head.maxt.load(std::sync::atomic::Ordering::Relaxed);
        let fast = self.maxt >= head_now && !self.tombstones.iter().any(|t| t.env == self.env);
        if !fast {
            let mut out = Vec::new();
            let mut tmp = Vec::new();
            for mut s in self.select(matchers)? {
                tmp.clear();
                s.samples.read_all(&mut tmp)?;
                if let Some(&(t, v)) = tmp.last() {
                    out.push((s.labels, t, v));
                }
            }
            return Ok(out);
        }
        let head = self.head.latest(&self.env, matchers, self.mint);
        if self.blocks_in_range().next().is_none() {
            return Ok(head);
        }
        let mut found: hashbrown::HashMap<Labels, (i64, f64)> =
            head.into_iter().map(|(l, t, v)| (l, (t, v))).collect();
        let (mut bytes, mut tmp) = (Vec::new(), Vec::new());
        for b in self.blocks_in_range() {
            for i in b.select_ids(&self.env, matchers) {
                let s = &b.series[i as usize];
                let Some(c) = s
                    .chunks
                    .iter()
                    .rev()
                    .find(|c| c.mint <= self.maxt && c.maxt >= self.mint)
                else {
                    continue;
                };
                let labels = b.labels(s);
                if found
                    .get(&labels)
                    .is_some_and(|(t, _)| *t >= c.maxt.min(self.maxt))
                {
                    continue;
                }
                tmp.clear();
                b.decode_chunk(c, &mut bytes, &mut tmp)?;
                if let Some(&(t, v)) = tmp
                    .iter()
                    .rev()
                    .find(|(t, _)| *t >= self.mint && *t <= self.maxt)
                {
                    let e = found.entry(labels).or_insert((t, v));
                    if t > e.0 {
                        *e = (t, v);
                    }
                }
            }
        }
        let mut out: Vec<(Labels, i64, f64)> =
            found.into_iter().map(|(l, (t, v))| (l, t, v)).collect();
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Label names of series in the range matching `matchers` (all if empty).
    pub fn label_names(&self, matchers: &[Matcher]) -> Vec<String> {
        let mut set: std::collections::BTreeSet<String> = self
            .head
            .label_names(&self.env, matchers)
            .into_iter()
            .collect();
        for b in self.blocks_in_range() {
            b.label_names(&self.env, matchers, &mut set);
        }
        set.into_iter().collect()
    }

    /// Values of label `name` among series in the range matching `matchers`.
    pub fn label_values(&self, name: &str, matchers: &[Matcher]) -> Vec<String> {
        let mut set: std::collections::BTreeSet<String> = self
            .head
            .label_values(&self.env, name, matchers)
            .into_iter()
            .collect();
        for b in self.blocks_in_range() {
            b.label_values(&self.env, name, matchers, &mut set);
        }
        set.into_iter().collect()
    }

    fn blocks_in_range(&self) -> impl Iterator<Item = &Arc<Block>> {
        self.blocks.iter().filter(|b| {
            b.meta.resolution_ms == 0
                && b.meta.max_time >= self.mint
                && b.meta.min_time <= self.maxt
        })
    }

    /// How far rollups at `resolution_ms` can stand in for raw samples: every sample of this
    /// environment with a timestamp before the returned time (and within rollup retention)
    /// is counted in exactly one rollup point. `None` when there are no usable rollups.
    ///
    /// The bound stops at the first raw block not yet rolled up, at the head, at rollups
    /// written before buckets were keyed by their end, at overlapping rollup blocks (which
    /// could count a sample twice) and at pending deletions (rollups still hold those samples).
    pub fn rollup_cover(&self, resolution_ms: i64) -> Option<i64> {
        self.rollup_cover_with(resolution_ms, false)
    }

    /// [`rollup_cover`](Self::rollup_cover) for readers that need the points' edges (first
    /// and last samples, reset correction, trailing staleness): it also stops at rollup
    /// blocks written before points kept them.
    pub fn rollup_edge_cover(&self, resolution_ms: i64) -> Option<i64> {
        self.rollup_cover_with(resolution_ms, true)
    }

    /// The cover (of [`rollup_cover`](Self::rollup_cover), or with `edges` of
    /// [`rollup_edge_cover`](Self::rollup_edge_cover)) and whether it is a clean boundary:
    /// no rollup point holds a sample at or after it (every rollup block ends by then). At a
    /// clean boundary the bucket the cover cuts holds exactly that bucket's samples before
    /// the cover, so it can be read together with raw samples from the cover on.
    pub fn rollup_boundary(&self, resolution_ms: i64, edges: bool) -> Option<(i64, bool)> {
        let cover = self.rollup_cover_with(resolution_ms, edges)?;
        let clean = self
            .blocks
            .iter()
            .filter(|b| b.meta.resolution_ms == resolution_ms)
            .all(|b| b.meta.range_end <= cover);
        Some((cover, clean))
    }

    fn rollup_cover_with(&self, resolution_ms: i64, edges: bool) -> Option<i64> {
        let mut until = self.head.time_range().map_or(i64::MAX, |(mint, _)| mint);
        let mut rollups: Vec<&Arc<Block>> = Vec::new();
        for b in self.blocks.iter() {
            if b.meta.resolution_ms == 0 {
                if !b.meta.downsampled {
                    until = until.min(b.meta.range_start);
                }
            } else if b.meta.resolution_ms == resolution_ms {
                if !b.meta.bucket_end || (edges && !b.meta.edges) {
                    until = until.min(b.meta.range_start);
                }
                rollups.push(b);
            }
        }
        if rollups.is_empty() {
            return None;
        }
        rollups.sort_by_key(|b| b.meta.range_start);
        let mut end = i64::MIN;
        for b in rollups {
            if b.meta.range_start < end {
                until = until.min(b.meta.range_start);
            }
            end = end.max(b.meta.range_end);
        }
        for t in self.tombstones.iter().filter(|t| t.env == self.env) {
            until = until.min(t.mint);
        }
        Some(until)
    }

    /// Rollups at `resolution_ms` (300000 or 3600000) of matching series with bucket ends in
    /// the range, in label order. A bucket split by a block boundary (the sample exactly at a
    /// block's start belongs to the bucket ending there) is put back together.
    pub fn select_rollups(
        &self,
        matchers: &[Matcher],
        resolution_ms: i64,
    ) -> Result<Vec<(Labels, Vec<RollupPoint>)>> {
        self.select_rollup_fields(matchers, resolution_ms, crate::RollupFields::ALL)
    }

    /// [`select_rollups`](Self::select_rollups) decoding only the values in `fields` where
    /// that saves work (the others may be left NaN, 0 or unset).
    pub fn select_rollup_fields(
        &self,
        matchers: &[Matcher],
        resolution_ms: i64,
        fields: crate::RollupFields,
    ) -> Result<Vec<(Labels, Vec<RollupPoint>)>> {
        let mut blocks: Vec<&Arc<Block>> = self
            .blocks
            .iter()
            .filter(|b| {
                b.meta.resolution_ms == resolution_ms
                    && b.meta.max_time >= self.rollup_mint
                    && b.meta.min_time <= self.maxt
            })
            .collect();
        // Oldest first, so the later part of a split bucket comes second.
        blocks.sort_by_key(|b| b.meta.range_start);
        // Matching series of each block, found once. Each reader takes the series whose label
        // hash falls to it, across all blocks (so a series' points stay with one reader and
        // readers' results just concatenate). Series are found by a hash of their label text:
        // labels are built once per series, not once per block.
        let ids: Vec<Vec<u32>> = blocks
            .iter()
            .map(|b| b.select_ids(&self.env, matchers))
            .collect();
        let selected: usize = ids.iter().map(Vec::len).sum();
        let readers = crate::cores().min(4).min(selected / 256).max(1) as u64;
        type Found = Vec<(Labels, Vec<RollupPoint>)>;
        let read = |reader: u64| -> Result<Found> {
            let mut found: Found = Vec::new();
            let mut index: hashbrown::HashMap<u64, Vec<usize>> = hashbrown::HashMap::new();
            // First the series this reader takes and how many points each has in the range
            // (from the chunk index), so each buffer is sized once, not grown block by block
            // (each growth copies every point read so far); then the chunks are decoded.
            let mut todo: Vec<(usize, u32, usize)> = Vec::new();
            let mut sizes: Vec<usize> = Vec::new();
            for (bi, (b, ids)) in blocks.iter().zip(&ids).enumerate() {
                for &i in ids {
                    let s = &b.series[i as usize];
                    let hash = b.labels_hash(s);
                    if hash % readers != reader {
                        continue;
                    }
                    let at = index.entry(hash).or_default();
                    let k = match at.iter().find(|&&k| b.labels_eq(s, &found[k].0)) {
                        Some(&k) => k,
                        None => {
                            at.push(found.len());
                            found.push((b.labels(s), Vec::new()));
                            sizes.push(0);
                            found.len() - 1
                        }
                    };
                    sizes[k] += s
                        .chunks
                        .iter()
                        .filter(|c| c.maxt >= self.rollup_mint && c.mint <= self.maxt)
                        .map(|c| c.samples as usize)
                        .sum::<usize>();
                    todo.push((bi, i, k));
                }
            }
            // Chunks at the range's edges also hold points outside it; whatever the index
            // says, no more than a few times the buckets the range holds.
            let span = self.maxt.saturating_sub(self.rollup_mint) / resolution_ms.max(1);
            // (An empty range holds none: the bound is then the slack alone.)
            let most = usize::try_from(span)
                .unwrap_or(0)
                .saturating_mul(4)
                .saturating_add(4096);
            for ((_, pts), &n) in found.iter_mut().zip(&sizes) {
                pts.reserve_exact(n.min(most));
            }
            let mut buf = Vec::new();
            for (bi, i, k) in todo {
                let b = blocks[bi];
                for c in b.series[i as usize]
                    .chunks
                    .iter()
                    .filter(|c| c.maxt >= self.rollup_mint && c.mint <= self.maxt)
                {
                    b.decode_rollup_fields(c, fields, &mut buf, &mut found[k].1)?;
                }
            }
            for (_, pts) in found.iter_mut() {
                pts.retain(|p| p.ts_ms >= self.rollup_mint && p.ts_ms <= self.maxt);
                // Stable: parts of one bucket stay in block order.
                pts.sort_by_key(|p| p.ts_ms);
                pts.dedup_by(|later, earlier| {
                    if later.ts_ms != earlier.ts_ms {
                        return false;
                    }
                    *earlier = earlier.combine(later);
                    true
                });
            }
            found.retain(|(_, p)| !p.is_empty());
            Ok(found)
        };
        let mut all: Found = Vec::with_capacity(ids.iter().map(Vec::len).max().unwrap_or(0));
        if readers <= 1 {
            all = read(0)?;
        } else {
            let read = &read;
            let parts: Vec<Result<Found>> = std::thread::scope(|sc| {
                let handles: Vec<_> = (0..readers).map(|k| sc.spawn(move || read(k))).collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(crate::Error::corrupt(
                                "<rollups>",
                                0,
                                "rollup reader panicked",
                            ))
                        })
                    })
                    .collect()
            });
            for p in parts {
                all.extend(p?);
            }
        }
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_size_hints_follow_the_share_of_time_in_range() {
        let s: Vec<(i64, f64)> = (0..100).map(|i| (i * 10, i as f64)).collect();
        let src = Source::Head(HeadChunk::Samples(Arc::new(s)));
        assert_eq!(src.samples_within(0, 990), 100);
        assert_eq!(src.samples_within(i64::MIN, i64::MAX), 100);
        assert!((49..=52).contains(&src.samples_within(0, 494)));
        assert!(src.samples_within(2_000, 3_000) <= 1);
        // Extreme times neither overflow nor promise more than the source holds.
        let wide = Source::Head(HeadChunk::Samples(Arc::new(vec![
            (i64::MIN, 0.0),
            (i64::MAX, 1.0),
        ])));
        assert!(wide.samples_within(0, 10) <= 2);
        assert_eq!(wide.samples_within(i64::MIN, i64::MAX), 2);
    }
}
