//! Immutable on-disk blocks: one directory per time range holding `meta.json`, `index` and
//! `chunks` (byte layouts in `docs/format/block.md`).
//!
//! A block is written into `<id>.tmp`, fsynced, then renamed, so a crash never leaves a
//! half-written block under a valid name. On open the index is read whole, its checksum
//! verified and its postings rebuilt in memory; chunk bytes stay on disk and are read with
//! positioned reads, each chunk verified against its own checksum.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vigil_model::{Label, Labels, Matcher};

use crate::codec::{self, Encoding, RollupPoint, Scratch};
use crate::encoding::{Reader, put_bytes, put_uvarint, put_varint};
use crate::error::{Error, Result};
use crate::postings::EnvPostings;
use crate::wal::sync_dir;

/// Newest block format version this build writes and reads.
pub const BLOCK_VERSION: u32 = 2;
const INDEX_MAGIC: &[u8; 4] = b"VGIX";
const CHUNKS_MAGIC: &[u8; 4] = b"VGCK";
const CHUNKS_HEADER: u64 = 8;

/// How much larger than pcodec's a decimal value column may be and still be chosen: 1.25
/// (measured 2026-12-07, 100 agents × 24 h of the reference fleet: 43 % of raw chunks are
/// decimal, the store 1.184 → 1.200 bytes/sample, one series' day read 2.1× faster).
const DECIMAL_SLACK: f64 = 1.25;

/// What `meta.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlockMeta {
    /// Format version of the block's files.
    pub format_version: u32,
    /// Directory name.
    pub id: String,
    /// Start of the time range the block covers (inclusive), ms.
    pub range_start: i64,
    /// End of the time range (exclusive), ms.
    pub range_end: i64,
    /// Oldest sample, ms.
    pub min_time: i64,
    /// Newest sample, ms.
    pub max_time: i64,
    /// 0 for raw samples; the rollup bucket width in ms otherwise.
    pub resolution_ms: i64,
    /// 1 for a block cut from the head; larger after compaction.
    pub level: u32,
    /// Series in the block.
    pub num_series: u64,
    /// Samples (or rollup points) in the block.
    pub num_samples: u64,
    /// Chunks in the block.
    pub num_chunks: u64,
    /// Chunks stored XOR-encoded.
    pub xor_chunks: u64,
    /// Chunks stored pcodec-encoded.
    pub pco_chunks: u64,
    /// Chunks whose values are stored as a decimal column (block format 2).
    #[serde(default)]
    pub decimal_chunks: u64,
    /// Size of the `chunks` file.
    pub chunk_bytes: u64,
    /// Size of the `index` file.
    pub index_bytes: u64,
    /// What all chunks would have taken XOR-encoded (for the codec comparison).
    pub xor_bytes_if_all: u64,
    /// What all chunks would have taken pcodec-encoded (chunks under 32 samples count as XOR).
    pub pco_bytes_if_all: u64,
    /// Distinct shared columns stored (timestamps of raw chunks, alike rollup columns).
    #[serde(default)]
    pub ts_columns: u64,
    /// Bytes of shared columns (included in `chunk_bytes`).
    #[serde(default)]
    pub ts_column_bytes: u64,
    /// Whether rollups were made from this raw block.
    #[serde(default)]
    pub downsampled: bool,
    /// Rollup blocks: each point at `ts` holds the samples in `(ts − resolution, ts]`, the
    /// left-open window PromQL uses, so whole buckets answer `*_over_time` exactly. Rollups
    /// written before this field (false) hold `[ts, ts + resolution)` and are never used to
    /// answer queries.
    #[serde(default)]
    pub bucket_end: bool,
    /// Rollup blocks whose every point also holds its bucket's first and last sample,
    /// counter-reset correction and trailing staleness (see [`crate::RollupPoint`]), so that
    /// whole buckets answer `rate`, `increase`, `delta` and instant selectors exactly.
    /// Rollups written before (false) are used only where these are not needed.
    #[serde(default)]
    pub edges: bool,
    /// Ids of the blocks this one was compacted from.
    #[serde(default)]
    pub sources: Vec<String>,
}

/// Where one chunk of a series lives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkMeta {
    pub(crate) enc: u8,
    pub(crate) mint: i64,
    pub(crate) maxt: i64,
    pub(crate) off: u64,
    pub(crate) len: u32,
    pub(crate) samples: u32,
}

#[derive(Debug)]
pub(crate) struct BlockSeries {
    pub(crate) env: u32,
    pub(crate) labels: Box<[(u32, u32)]>,
    pub(crate) chunks: Box<[ChunkMeta]>,
}

/// An open, immutable block.
#[derive(Debug)]
pub struct Block {
    /// Its metadata.
    pub meta: BlockMeta,
    dir: PathBuf,
    file: File,
    symbols: Vec<vigil_model::LabelStr>,
    pub(crate) series: Vec<BlockSeries>,
    postings: HashMap<u32, EnvPostings>,
    /// Decoded shared timestamp columns by offset (bounded; cleared when full).
    ts_cache: parking_lot::Mutex<HashMap<u64, std::sync::Arc<[i64]>>>,
}

const TS_CACHE_ENTRIES: usize = 8192;

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A fresh block id: range start, resolution and a unique suffix; sorts by time.
pub(crate) fn new_block_id(range_start: i64, resolution_ms: i64) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!(
        "b{:014}-r{}-{:x}{:04x}",
        range_start.max(0),
        resolution_ms,
        now_nanos() & 0xffff_ffff_ffff,
        seq & 0xffff
    )
}

fn empty_meta() -> BlockMeta {
    BlockMeta {
        format_version: BLOCK_VERSION,
        id: String::new(),
        range_start: 0,
        range_end: 0,
        min_time: i64::MAX,
        max_time: i64::MIN,
        resolution_ms: 0,
        level: 1,
        num_series: 0,
        num_samples: 0,
        num_chunks: 0,
        xor_chunks: 0,
        pco_chunks: 0,
        decimal_chunks: 0,
        chunk_bytes: 0,
        index_bytes: 0,
        xor_bytes_if_all: 0,
        pco_bytes_if_all: 0,
        ts_columns: 0,
        ts_column_bytes: 0,
        downsampled: false,
        bucket_end: false,
        edges: false,
        sources: Vec::new(),
    }
}

type PendingSeries = (u32, Vec<(u32, u32)>, Vec<ChunkMeta>);

/// Writes one block; series must be added in (env, labels) order.
pub(crate) struct BlockWriter {
    tmp: PathBuf,
    dir: PathBuf,
    chunks: BufWriter<File>,
    off: u64,
    sym_ids: HashMap<String, u32>,
    syms: Vec<String>,
    /// (env symbol, label symbols, chunks) per series, in the order added.
    series: Vec<PendingSeries>,
    scratch: Scratch,
    buf: Vec<u8>,
    max_chunk_samples: usize,
    meta: BlockMeta,
    /// Timestamp columns already written: hash of the compressed stream → (offset, bytes).
    ts_columns: HashMap<u64, Vec<(u64, Vec<u8>)>>,
    /// Rollup points not known to be exact end-keyed buckets (copied from rollups written
    /// before `bucket_end`, or merged from overlapping ones): the block is left unmarked.
    pub(crate) unsure_buckets: bool,
    /// Rollup points copied from rollups written without their buckets' edges.
    pub(crate) unsure_edges: bool,
}

impl BlockWriter {
    /// Starts a block for [range_start, range_end) under `parent`.
    pub(crate) fn create(
        parent: &Path,
        range_start: i64,
        range_end: i64,
        resolution_ms: i64,
        level: u32,
        max_chunk_samples: usize,
    ) -> Result<Self> {
        let id = new_block_id(range_start, resolution_ms);
        let dir = parent.join(&id);
        let tmp = parent.join(format!("{id}.tmp"));
        fs::create_dir_all(&tmp).map_err(Error::io("create block directory", &tmp))?;
        let path = tmp.join("chunks");
        let mut f = BufWriter::with_capacity(
            1 << 20,
            File::create(&path).map_err(Error::io("create block chunks", &path))?,
        );
        let mut h = [0u8; CHUNKS_HEADER as usize];
        h[..4].copy_from_slice(CHUNKS_MAGIC);
        h[4] = BLOCK_VERSION as u8;
        f.write_all(&h)
            .map_err(Error::io("write block chunks", &path))?;
        Ok(Self {
            tmp,
            dir,
            chunks: f,
            off: CHUNKS_HEADER,
            sym_ids: HashMap::new(),
            syms: Vec::new(),
            series: Vec::new(),
            scratch: Scratch::default(),
            buf: Vec::new(),
            max_chunk_samples: max_chunk_samples.max(1),
            ts_columns: HashMap::new(),
            unsure_buckets: false,
            unsure_edges: false,
            meta: BlockMeta {
                id,
                range_start,
                range_end,
                resolution_ms,
                level,
                ..empty_meta()
            },
        })
    }

    fn sym(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.sym_ids.get(s) {
            return i;
        }
        let i = self.syms.len() as u32;
        self.syms.push(s.to_string());
        self.sym_ids.insert(s.to_string(), i);
        i
    }

    fn write_chunk(
        &mut self,
        enc: Encoding,
        mint: i64,
        maxt: i64,
        samples: usize,
    ) -> Result<ChunkMeta> {
        let crc = crc32c::crc32c(&self.buf);
        let path = self.tmp.join("chunks");
        self.chunks
            .write_all(&self.buf)
            .map_err(Error::io("write block chunks", &path))?;
        self.chunks
            .write_all(&crc.to_le_bytes())
            .map_err(Error::io("write block chunks", &path))?;
        let m = ChunkMeta {
            enc: enc as u8,
            mint,
            maxt,
            off: self.off,
            len: self.buf.len() as u32,
            samples: samples as u32,
        };
        self.off += self.buf.len() as u64 + 4;
        self.meta.num_chunks += 1;
        self.meta.min_time = self.meta.min_time.min(mint);
        self.meta.max_time = self.meta.max_time.max(maxt);
        Ok(m)
    }

    fn intern_labels(&mut self, env: &str, labels: &Labels) -> (u32, Vec<(u32, u32)>) {
        let e = self.sym(env);
        let ls = labels
            .iter()
            .map(|l| (self.sym(&l.name), self.sym(&l.value)))
            .collect();
        (e, ls)
    }

    /// Adds a series of raw samples (sorted by time, unique timestamps).
    pub(crate) fn add_series(
        &mut self,
        env: &str,
        labels: &Labels,
        samples: &[(i64, f64)],
    ) -> Result<()> {
        if samples.is_empty() {
            return Ok(());
        }
        let (e, ls) = self.intern_labels(env, labels);
        let mut metas = Vec::new();
        for part in samples.chunks(self.max_chunk_samples) {
            let m = self.add_chunk(part)?;
            metas.push(m);
        }
        self.meta.num_samples += samples.len() as u64;
        self.meta.num_series += 1;
        self.series.push((e, ls, metas));
        Ok(())
    }

    /// Writes a shared column (timestamps, or a rollup column; once per distinct stream) and
    /// returns its offset.
    fn shared_column(&mut self, col: Vec<u8>) -> Result<u64> {
        use std::hash::{BuildHasher, Hasher};
        let mut h = foldhash::fast::FixedState::with_seed(7).build_hasher();
        h.write(&col);
        let key = h.finish();
        if let Some(off) = self
            .ts_columns
            .get(&key)
            .and_then(|v| v.iter().find(|(_, b)| *b == col).map(|(o, _)| *o))
        {
            return Ok(off);
        }
        let off = self.off;
        let crc = crc32c::crc32c(&col);
        let path = self.tmp.join("chunks");
        self.chunks
            .write_all(&col)
            .map_err(Error::io("write block chunks", &path))?;
        self.chunks
            .write_all(&crc.to_le_bytes())
            .map_err(Error::io("write block chunks", &path))?;
        self.off += col.len() as u64 + 4;
        self.meta.ts_columns += 1;
        self.meta.ts_column_bytes += col.len() as u64 + 4;
        self.ts_columns.entry(key).or_default().push((off, col));
        Ok(off)
    }

    /// Encodes one chunk of raw samples with the smaller of XOR, or pcodec (or decimal)
    /// values with a pcodec timestamp column shared by all series with the same timestamps.
    /// A decimal column is kept over a smaller pcodec one when it is at most
    /// [`DECIMAL_SLACK`] larger: it decodes about four times faster.
    fn add_chunk(&mut self, part: &[(i64, f64)]) -> Result<ChunkMeta> {
        self.buf.clear();
        codec::encode_xor(part, &mut self.buf);
        let xor_len = self.buf.len();
        self.meta.xor_bytes_if_all += xor_len as u64;
        let (first, last) = (part[0].0, part[part.len() - 1].0);
        if part.len() < 32 {
            self.meta.pco_bytes_if_all += xor_len as u64;
            self.meta.xor_chunks += 1;
            return self.write_chunk(Encoding::Xor, first, last, part.len());
        }
        let ts = codec::encode_ts_column(part, &mut self.scratch);
        let (pco, decimal) = codec::encode_value_columns(part, &mut self.scratch);
        self.meta.pco_bytes_if_all += (ts.len() + pco.len() + 6) as u64;
        let (enc, vals) = match decimal {
            Some(d) if d.len() as f64 <= pco.len() as f64 * DECIMAL_SLACK + 8.0 => {
                (Encoding::DecimalSharedTs, d)
            }
            _ => (Encoding::PcoSharedTs, pco),
        };
        if vals.len() + 12 >= xor_len {
            self.meta.xor_chunks += 1;
            return self.write_chunk(Encoding::Xor, first, last, part.len());
        }
        let ts_len = ts.len();
        let ts_off = self.shared_column(ts)?;
        self.buf.clear();
        codec::encode_shared_ts(part.len(), ts_off, ts_len, &vals, &mut self.buf);
        if enc == Encoding::DecimalSharedTs {
            self.meta.decimal_chunks += 1;
        } else {
            self.meta.pco_chunks += 1;
        }
        self.write_chunk(enc, first, last, part.len())
    }

    /// Adds a series of rollup points (sorted by bucket).
    pub(crate) fn add_rollup_series(
        &mut self,
        env: &str,
        labels: &Labels,
        points: &[RollupPoint],
    ) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let (e, ls) = self.intern_labels(env, labels);
        let mut metas = Vec::new();
        for part in points.chunks(self.max_chunk_samples) {
            self.buf.clear();
            let enc = if part.len() < codec::ROLLUP_PLAIN_MAX {
                codec::encode_rollup_plain(part, &mut self.buf);
                Encoding::RollupPlainEdges
            } else {
                let cols = codec::rollup_columns(part);
                let mut refs = [codec::RollupColumn::Absent; codec::ROLLUP_COLUMNS];
                for (i, col) in cols.iter().enumerate() {
                    refs[i] = if codec::rollup_column_shareable(i, part) {
                        let off = self.shared_column(col.clone())?;
                        codec::RollupColumn::Shared {
                            off,
                            len: col.len(),
                        }
                    } else {
                        codec::RollupColumn::Inline(col)
                    };
                }
                self.buf.clear();
                codec::encode_rollup_shared(part.len(), &refs, &mut self.buf);
                self.meta.pco_chunks += 1;
                Encoding::RollupPcoShared
            };
            let m = self.write_chunk(enc, part[0].ts_ms, part[part.len() - 1].ts_ms, part.len())?;
            metas.push(m);
        }
        self.meta.num_samples += points.len() as u64;
        self.meta.num_series += 1;
        self.series.push((e, ls, metas));
        Ok(())
    }

    /// Finishes the block: writes the index and meta, fsyncs and renames into place. Returns
    /// `None` (and removes the temporary directory) when no series were added.
    pub(crate) fn finish(
        mut self,
        sources: Vec<String>,
        downsampled: bool,
    ) -> Result<Option<BlockMeta>> {
        let cpath = self.tmp.join("chunks");
        self.chunks
            .flush()
            .map_err(Error::io("write block chunks", &cpath))?;
        if self.series.is_empty() {
            let _ = fs::remove_dir_all(&self.tmp);
            return Ok(None);
        }
        self.chunks
            .get_ref()
            .sync_all()
            .map_err(Error::io("fsync block chunks", &cpath))?;
        // Sort symbols so readers can binary-search them; remap ids.
        let mut order: Vec<u32> = (0..self.syms.len() as u32).collect();
        order.sort_by(|a, b| self.syms[*a as usize].cmp(&self.syms[*b as usize]));
        let mut remap = vec![0u32; self.syms.len()];
        for (new, &old) in order.iter().enumerate() {
            remap[old as usize] = new as u32;
        }
        let mut idx = Vec::with_capacity(1 << 16);
        idx.extend_from_slice(INDEX_MAGIC);
        idx.push(BLOCK_VERSION as u8);
        put_uvarint(&mut idx, self.syms.len() as u64);
        for &old in &order {
            put_bytes(&mut idx, self.syms[old as usize].as_bytes());
        }
        put_uvarint(&mut idx, self.series.len() as u64);
        for (e, ls, metas) in &self.series {
            put_uvarint(&mut idx, remap[*e as usize] as u64);
            put_uvarint(&mut idx, ls.len() as u64);
            for (n, v) in ls {
                put_uvarint(&mut idx, remap[*n as usize] as u64);
                put_uvarint(&mut idx, remap[*v as usize] as u64);
            }
            put_uvarint(&mut idx, metas.len() as u64);
            for m in metas {
                idx.push(m.enc);
                put_varint(&mut idx, m.mint);
                put_uvarint(&mut idx, m.maxt.wrapping_sub(m.mint) as u64);
                put_uvarint(&mut idx, m.off);
                put_uvarint(&mut idx, m.len as u64);
                put_uvarint(&mut idx, m.samples as u64);
            }
        }
        let crc = crc32c::crc32c(&idx);
        idx.extend_from_slice(&crc.to_le_bytes());
        let ipath = self.tmp.join("index");
        write_synced(&ipath, &idx, "write block index")?;
        self.meta.chunk_bytes = self.off;
        self.meta.index_bytes = idx.len() as u64;
        self.meta.sources = sources;
        self.meta.downsampled = downsampled;
        self.meta.bucket_end = self.meta.resolution_ms > 0 && !self.unsure_buckets;
        self.meta.edges = self.meta.bucket_end && !self.unsure_edges;
        write_meta(&self.tmp, &self.meta)?;
        sync_dir(&self.tmp)?;
        fs::rename(&self.tmp, &self.dir)
            .map_err(Error::io("rename block into place", &self.dir))?;
        if let Some(parent) = self.dir.parent() {
            sync_dir(parent)?;
        }
        Ok(Some(std::mem::replace(&mut self.meta, empty_meta())))
    }
}

impl Drop for BlockWriter {
    fn drop(&mut self) {
        // An unfinished writer leaves nothing behind.
        if self.tmp.exists() {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

fn write_synced(path: &Path, data: &[u8], op: &'static str) -> Result<()> {
    let mut f = File::create(path).map_err(Error::io(op, path))?;
    f.write_all(data).map_err(Error::io(op, path))?;
    f.sync_all().map_err(Error::io(op, path))
}

/// Writes `meta.json` atomically (temp file, fsync, rename).
pub(crate) fn write_meta(dir: &Path, meta: &BlockMeta) -> Result<()> {
    let tmp = dir.join("meta.json.tmp");
    let data = serde_json::to_vec_pretty(meta)
        .map_err(|e| Error::InvalidRequest(format!("serialize block meta: {e}")))?;
    write_synced(&tmp, &data, "write block meta")?;
    let fin = dir.join("meta.json");
    fs::rename(&tmp, &fin).map_err(Error::io("rename block meta", &fin))?;
    sync_dir(dir)
}

impl Block {
    /// Opens a block directory, verifying its metadata and index.
    pub fn open(dir: &Path) -> Result<Self> {
        let mpath = dir.join("meta.json");
        let raw = fs::read(&mpath).map_err(Error::io("read block meta", &mpath))?;
        let v: serde_json::Value = serde_json::from_slice(&raw)
            .map_err(|e| Error::corrupt(&mpath, e.column() as u64, e.to_string()))?;
        let version = v
            .get("format_version")
            .and_then(|x| x.as_u64())
            .unwrap_or(0) as u32;
        if version > BLOCK_VERSION {
            return Err(Error::FutureFormat {
                path: mpath,
                found: version,
                supported: BLOCK_VERSION,
            });
        }
        let meta: BlockMeta =
            serde_json::from_value(v).map_err(|e| Error::corrupt(&mpath, 0, e.to_string()))?;
        let ipath = dir.join("index");
        let idx = fs::read(&ipath).map_err(Error::io("read block index", &ipath))?;
        let (symbols, series) =
            parse_index(&idx).map_err(|(off, why)| Error::corrupt(&ipath, off, why))?;
        let cpath = dir.join("chunks");
        let file = File::open(&cpath).map_err(Error::io("open block chunks", &cpath))?;
        let len = file
            .metadata()
            .map_err(Error::io("stat block chunks", &cpath))?
            .len();
        let mut h = [0u8; CHUNKS_HEADER as usize];
        file.read_exact_at(&mut h, 0)
            .map_err(|_| Error::corrupt(&cpath, 0, "chunks header unreadable"))?;
        if &h[..4] != CHUNKS_MAGIC {
            return Err(Error::corrupt(&cpath, 0, "bad chunks magic"));
        }
        if h[4] as u32 > BLOCK_VERSION {
            return Err(Error::FutureFormat {
                path: cpath,
                found: h[4] as u32,
                supported: BLOCK_VERSION,
            });
        }
        let need = series
            .iter()
            .flat_map(|s| s.chunks.iter())
            .map(|c| c.off + c.len as u64 + 4)
            .max()
            .unwrap_or(CHUNKS_HEADER);
        if len < need || len != meta.chunk_bytes {
            return Err(Error::corrupt(
                &cpath,
                len,
                format!(
                    "chunks file is {len} bytes; index and meta need {need} and say {}",
                    meta.chunk_bytes
                ),
            ));
        }
        let mut postings: HashMap<u32, EnvPostings> = HashMap::new();
        for (i, s) in series.iter().enumerate() {
            postings.entry(s.env).or_default().add(i as u32, &s.labels);
        }
        Ok(Self {
            meta,
            dir: dir.to_path_buf(),
            file,
            symbols,
            series,
            postings,
            ts_cache: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// The block's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes on disk (chunks + index + meta).
    pub fn size_bytes(&self) -> u64 {
        self.meta.chunk_bytes + self.meta.index_bytes + 1024
    }

    pub(crate) fn sym(&self, id: u32) -> &str {
        self.symbols.get(id as usize).map_or("", |s| s.as_str())
    }

    fn id_of(&self, s: &str) -> Option<u32> {
        self.symbols
            .binary_search_by(|x| (**x).cmp(s))
            .ok()
            .map(|i| i as u32)
    }

    pub(crate) fn labels(&self, s: &BlockSeries) -> Labels {
        Labels::from_sorted(
            s.labels
                .iter()
                .map(|&(n, v)| Label {
                    name: self.symbols.get(n as usize).cloned().unwrap_or_default(),
                    value: self.symbols.get(v as usize).cloned().unwrap_or_default(),
                })
                .collect(),
        )
    }

    /// A hash of a series' label names and values (the same for equal label sets in any
    /// block), computed without building its labels.
    pub(crate) fn labels_hash(&self, s: &BlockSeries) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = foldhash::fast::FixedState::with_seed(0x5167_696c).build_hasher();
        for &(n, v) in s.labels.iter() {
            h.write(self.sym(n).as_bytes());
            h.write_u8(0xff);
            h.write(self.sym(v).as_bytes());
            h.write_u8(0xfe);
        }
        h.finish()
    }

    /// Whether a series' labels are `l`, without building them.
    pub(crate) fn labels_eq(&self, s: &BlockSeries, l: &Labels) -> bool {
        s.labels.len() == l.len()
            && s.labels.iter().zip(l.iter()).all(|(&(n, v), x)| {
                self.sym(n) == x.name.as_str() && self.sym(v) == x.value.as_str()
            })
    }

    pub(crate) fn env_of(&self, s: &BlockSeries) -> &str {
        self.sym(s.env)
    }

    /// Indexes of series in `env` matching `matchers`.
    pub(crate) fn select_ids(&self, env: &str, matchers: &[Matcher]) -> Vec<u32> {
        let Some(e) = self.id_of(env) else {
            return Vec::new();
        };
        let Some(p) = self.postings.get(&e) else {
            return Vec::new();
        };
        p.select(matchers, &|s| self.id_of(s), &|i| self.sym(i))
    }

    /// Environments present.
    /// The oldest sample (or rollup point) time of environment `env` here.
    pub(crate) fn env_min_time(&self, env: &str) -> Option<i64> {
        let e = self.id_of(env)?;
        self.series
            .iter()
            .filter(|s| s.env == e)
            .filter_map(|s| s.chunks.iter().map(|c| c.mint).min())
            .min()
    }

    pub(crate) fn envs(&self) -> Vec<String> {
        self.postings
            .keys()
            .map(|e| self.sym(*e).to_string())
            .collect()
    }

    /// Label names in `env` (among series matching `matchers`, or all).
    pub(crate) fn label_names(
        &self,
        env: &str,
        matchers: &[Matcher],
        out: &mut std::collections::BTreeSet<String>,
    ) {
        if matchers.is_empty() {
            let Some(p) = self.id_of(env).and_then(|e| self.postings.get(&e)) else {
                return;
            };
            for &(n, _) in p.by_label.keys() {
                out.insert(self.sym(n).to_string());
            }
            return;
        }
        for i in self.select_ids(env, matchers) {
            for &(n, _) in self.series[i as usize].labels.iter() {
                out.insert(self.sym(n).to_string());
            }
        }
    }

    /// Values of `name` in `env`.
    pub(crate) fn label_values(
        &self,
        env: &str,
        name: &str,
        matchers: &[Matcher],
        out: &mut std::collections::BTreeSet<String>,
    ) {
        let Some(n) = self.id_of(name) else { return };
        if matchers.is_empty() {
            let Some(p) = self.id_of(env).and_then(|e| self.postings.get(&e)) else {
                return;
            };
            for (v, _) in p.values_of(n) {
                out.insert(self.sym(v).to_string());
            }
            return;
        }
        for i in self.select_ids(env, matchers) {
            if let Some(&(_, v)) = self.series[i as usize].labels.iter().find(|l| l.0 == n) {
                out.insert(self.sym(v).to_string());
            }
        }
    }

    /// Reads and verifies a chunk's bytes.
    pub(crate) fn read_chunk(&self, c: &ChunkMeta, buf: &mut Vec<u8>) -> Result<()> {
        buf.resize(c.len as usize + 4, 0);
        self.read_at(buf, c.off)?;
        self.checked(c, buf)?;
        buf.truncate(c.len as usize);
        Ok(())
    }

    /// Reads `buf.len()` bytes of the chunks file at `off`: several chunks stored one after
    /// another are read with one call, then each is checked by [`checked`](Self::checked).
    pub(crate) fn read_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        self.file.read_exact_at(buf, off).map_err(|e| Error::Io {
            op: "read block chunk",
            path: self.dir.join("chunks"),
            source: e,
        })
    }

    /// A chunk's data from its bytes as stored (`c.len` bytes of data, then their CRC-32C),
    /// once the checksum matches.
    pub(crate) fn checked<'a>(&self, c: &ChunkMeta, raw: &'a [u8]) -> Result<&'a [u8]> {
        let corrupt = |what: &str| Error::corrupt(self.dir.join("chunks"), c.off, what);
        let (data, crc) = raw
            .split_at_checked(c.len as usize)
            .ok_or_else(|| corrupt("chunk cut short"))?;
        let want = u32::from_le_bytes(crc.try_into().map_err(|_| corrupt("chunk cut short"))?);
        if crc32c::crc32c(data) != want {
            return Err(corrupt("chunk checksum mismatch"));
        }
        Ok(data)
    }

    /// Decodes a raw chunk's samples into `out` (appending).
    pub(crate) fn decode_chunk(
        &self,
        c: &ChunkMeta,
        buf: &mut Vec<u8>,
        out: &mut Vec<(i64, f64)>,
    ) -> Result<()> {
        self.read_chunk(c, buf)?;
        self.decode_data(c, buf, out)
    }

    /// [`decode_chunk`](Self::decode_chunk) of data already read and checked.
    fn decode_data(&self, c: &ChunkMeta, data: &[u8], out: &mut Vec<(i64, f64)>) -> Result<()> {
        let enc = Encoding::from_u8(c.enc).ok_or_else(|| {
            Error::corrupt(
                self.dir.join("index"),
                0,
                format!("unknown chunk encoding {}", c.enc),
            )
        })?;
        let corrupt = |e: codec::DecodeError| Error::corrupt(self.dir.join("chunks"), c.off, e.0);
        if !matches!(enc, Encoding::PcoSharedTs | Encoding::DecimalSharedTs) {
            return codec::decode(enc, data, out).map_err(corrupt);
        }
        let (n, ts_off, ts_len, vals) = codec::parse_shared_ts(data).map_err(corrupt)?;
        let values = codec::decode_shared_values(enc, vals, n, n).map_err(corrupt)?;
        let ts = self.ts_column(ts_off, ts_len, n)?;
        out.extend(ts.iter().copied().zip(values));
        Ok(())
    }

    /// [`decode_chunk`](Self::decode_chunk) for a reader of `[mint, maxt]` only: a chunk
    /// with shared timestamps decodes its values only up to the last one the reader wants
    /// (pcodec decodes in order, in batches of 256) and appends only those in the range.
    pub(crate) fn decode_chunk_in(
        &self,
        c: &ChunkMeta,
        mint: i64,
        maxt: i64,
        buf: &mut Vec<u8>,
        out: &mut Vec<(i64, f64)>,
    ) -> Result<()> {
        self.read_chunk(c, buf)?;
        self.decode_data_in(c, buf, mint, maxt, out)
    }

    /// [`decode_chunk_in`](Self::decode_chunk_in) of the chunk's bytes as stored (data and
    /// checksum, as [`read_at`](Self::read_at) read them with their neighbours).
    pub(crate) fn decode_raw_in(
        &self,
        c: &ChunkMeta,
        raw: &[u8],
        mint: i64,
        maxt: i64,
        out: &mut Vec<(i64, f64)>,
    ) -> Result<()> {
        let data = self.checked(c, raw)?;
        self.decode_data_in(c, data, mint, maxt, out)
    }

    fn decode_data_in(
        &self,
        c: &ChunkMeta,
        data: &[u8],
        mint: i64,
        maxt: i64,
        out: &mut Vec<(i64, f64)>,
    ) -> Result<()> {
        let enc = match Encoding::from_u8(c.enc) {
            Some(e @ (Encoding::PcoSharedTs | Encoding::DecimalSharedTs))
                if mint > c.mint || maxt < c.maxt =>
            {
                e
            }
            _ => return self.decode_data(c, data, out),
        };
        let corrupt = |e: codec::DecodeError| Error::corrupt(self.dir.join("chunks"), c.off, e.0);
        let (n, ts_off, ts_len, vals) = codec::parse_shared_ts(data).map_err(corrupt)?;
        let ts = self.ts_column(ts_off, ts_len, n)?;
        let (a, b) = (
            ts.partition_point(|&t| t < mint),
            ts.partition_point(|&t| t <= maxt),
        );
        let values = codec::decode_shared_values(enc, vals, n, b).map_err(corrupt)?;
        if a < b {
            out.extend(ts[a..b].iter().copied().zip(values[a..b].iter().copied()));
        }
        Ok(())
    }

    fn ts_column(&self, off: u64, len: usize, n: usize) -> Result<std::sync::Arc<[i64]>> {
        self.shared_column(off, len, n, codec::decode_ts_column)
    }

    /// A shared column of `n` values stored at `off` (`len` bytes), decoded by `decode` (as
    /// i64s or their bit patterns) and cached: every chunk sharing it is read without decoding
    /// it again.
    fn shared_column(
        &self,
        off: u64,
        len: usize,
        n: usize,
        decode: impl FnOnce(&[u8], usize) -> std::result::Result<Vec<i64>, codec::DecodeError>,
    ) -> Result<std::sync::Arc<[i64]>> {
        if let Some(t) = self.ts_cache.lock().get(&off)
            && t.len() == n
        {
            return Ok(t.clone());
        }
        let len = u32::try_from(len).map_err(|_| {
            Error::corrupt(self.dir.join("chunks"), off, "timestamp column too long")
        })?;
        let mut b = Vec::new();
        self.read_chunk(
            &ChunkMeta {
                enc: 0,
                mint: 0,
                maxt: 0,
                off,
                len,
                samples: 0,
            },
            &mut b,
        )?;
        let ts: std::sync::Arc<[i64]> = decode(&b, n)
            .map_err(|e| Error::corrupt(self.dir.join("chunks"), off, e.0))?
            .into();
        let mut cache = self.ts_cache.lock();
        if cache.len() >= TS_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(off, ts.clone());
        Ok(ts)
    }

    /// Decodes a rollup chunk into `out` (appending).
    pub(crate) fn decode_rollup_chunk(
        &self,
        c: &ChunkMeta,
        buf: &mut Vec<u8>,
        out: &mut Vec<RollupPoint>,
    ) -> Result<()> {
        self.decode_rollup_fields(c, codec::RollupFields::ALL, buf, out)
    }

    /// [`decode_rollup_chunk`](Self::decode_rollup_chunk) decoding only `fields` where that
    /// saves work.
    pub(crate) fn decode_rollup_fields(
        &self,
        c: &ChunkMeta,
        fields: codec::RollupFields,
        buf: &mut Vec<u8>,
        out: &mut Vec<RollupPoint>,
    ) -> Result<()> {
        self.read_chunk(c, buf)?;
        let corrupt = |e: codec::DecodeError| Error::corrupt(self.dir.join("chunks"), c.off, e.0);
        if c.enc != Encoding::RollupPcoShared as u8 {
            return codec::decode_rollup_fields(c.enc, buf, fields, out).map_err(corrupt);
        }
        let (n, cols) =
            codec::parse_rollup_columns(Encoding::RollupPcoShared, buf).map_err(corrupt)?;
        let mut inline: [Option<Vec<i64>>; codec::ROLLUP_COLUMNS] = Default::default();
        let mut shared: [Option<std::sync::Arc<[i64]>>; codec::ROLLUP_COLUMNS] = Default::default();
        for (i, col) in cols.iter().enumerate() {
            if !codec::rollup_column_needed(i, fields) {
                continue;
            }
            match *col {
                codec::RollupColumn::Inline(b) => {
                    inline[i] = Some(codec::decode_rollup_column(i, b, n).map_err(corrupt)?);
                }
                codec::RollupColumn::Shared { off, len } => {
                    let decode = |b: &[u8], n| codec::decode_rollup_column(i, b, n);
                    shared[i] = Some(self.shared_column(off, len, n, decode)?);
                }
                codec::RollupColumn::Absent => {}
            }
        }
        let mut cols: [Option<&[i64]>; codec::ROLLUP_COLUMNS] = [None; codec::ROLLUP_COLUMNS];
        for (i, c) in cols.iter_mut().enumerate() {
            *c = inline[i].as_deref().or(shared[i].as_deref());
        }
        codec::assemble_rollup(n, &cols, out).map_err(corrupt)
    }

    /// Verifies every chunk's checksum.
    pub fn verify(&self) -> Result<()> {
        let (mut buf, mut out, mut pts) = (Vec::new(), Vec::new(), Vec::new());
        for s in &self.series {
            for c in s.chunks.iter() {
                if codec::is_rollup(c.enc) {
                    self.decode_rollup_chunk(c, &mut buf, &mut pts)?;
                } else {
                    self.decode_chunk(c, &mut buf, &mut out)?;
                }
                out.clear();
                pts.clear();
            }
        }
        Ok(())
    }

    /// All series grouped as (env, labels) → index, in order.
    pub(crate) fn series_map(&self) -> BTreeMap<(String, Labels), u32> {
        self.series
            .iter()
            .enumerate()
            .map(|(i, s)| ((self.env_of(s).to_string(), self.labels(s)), i as u32))
            .collect()
    }
}

type Parsed = (Vec<vigil_model::LabelStr>, Vec<BlockSeries>);

fn parse_index(idx: &[u8]) -> std::result::Result<Parsed, (u64, String)> {
    if idx.len() < 9 {
        return Err((0, "index too short".into()));
    }
    let (body, crc) = idx.split_at(idx.len() - 4);
    let want = u32::from_le_bytes(crc.try_into().unwrap_or_default());
    if crc32c::crc32c(body) != want {
        return Err((0, "index checksum mismatch".into()));
    }
    if &body[..4] != INDEX_MAGIC {
        return Err((0, "bad index magic".into()));
    }
    let mut r = Reader::new(&body[5..]);
    let bad =
        |r: &Reader<'_>, what: &str| (r.pos() as u64 + 5, format!("index truncated in {what}"));
    let nsym = r.count(1).ok_or_else(|| bad(&r, "symbol count"))?;
    let mut symbols = Vec::with_capacity(nsym);
    for _ in 0..nsym {
        symbols.push(vigil_model::LabelStr::from(
            r.str().ok_or_else(|| bad(&r, "symbols"))?,
        ));
    }
    let nser = r.count(3).ok_or_else(|| bad(&r, "series count"))?;
    let mut series = Vec::with_capacity(nser);
    let sym = |r: &mut Reader<'_>| -> Option<u32> {
        let v = r.uvarint()?;
        if v < nsym as u64 {
            Some(v as u32)
        } else {
            None
        }
    };
    for _ in 0..nser {
        let env = sym(&mut r).ok_or_else(|| bad(&r, "series env"))?;
        let nl = r.count(2).ok_or_else(|| bad(&r, "label count"))?;
        let mut labels = Vec::with_capacity(nl);
        for _ in 0..nl {
            let n = sym(&mut r).ok_or_else(|| bad(&r, "label name"))?;
            let v = sym(&mut r).ok_or_else(|| bad(&r, "label value"))?;
            labels.push((n, v));
        }
        let nc = r.count(6).ok_or_else(|| bad(&r, "chunk count"))?;
        let mut chunks = Vec::with_capacity(nc);
        for _ in 0..nc {
            let enc = r.u8().ok_or_else(|| bad(&r, "chunk encoding"))?;
            let mint = r.varint().ok_or_else(|| bad(&r, "chunk mint"))?;
            let span = r.uvarint().ok_or_else(|| bad(&r, "chunk maxt"))?;
            let off = r.uvarint().ok_or_else(|| bad(&r, "chunk offset"))?;
            let len = r.uvarint().ok_or_else(|| bad(&r, "chunk length"))?;
            let samples = r.uvarint().ok_or_else(|| bad(&r, "chunk samples"))?;
            let len = u32::try_from(len).map_err(|_| bad(&r, "chunk length"))?;
            chunks.push(ChunkMeta {
                enc,
                mint,
                maxt: mint.wrapping_add(span as i64),
                off,
                len,
                samples: samples.min(u32::MAX as u64) as u32,
            });
        }
        series.push(BlockSeries {
            env,
            labels: labels.into_boxed_slice(),
            chunks: chunks.into_boxed_slice(),
        });
    }
    if !r.is_empty() {
        return Err((r.pos() as u64 + 5, "trailing bytes in index".into()));
    }
    Ok((symbols, series))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parse_index_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_index(&b);
            // Also with a valid checksum, so the parser itself is exercised.
            let mut v = b.clone();
            if v.len() >= 5 { v[..4].copy_from_slice(INDEX_MAGIC); }
            let crc = crc32c::crc32c(&v);
            v.extend_from_slice(&crc.to_le_bytes());
            let _ = parse_index(&v);
        }
    }
}
