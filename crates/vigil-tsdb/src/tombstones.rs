//! Deletions by matchers over a time range.
//!
//! A deletion is applied to the head at once (the affected chunks are rewritten, and the WAL
//! records it), and recorded here with the blocks it still has to be applied to. Reads hide
//! deleted samples; maintenance rewrites the pending blocks and then forgets the tombstone.
//! Persisted as `tombstones.json` (written atomically).

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vigil_model::{MatchOp, Matcher};

use crate::error::{Error, Result};

/// A pending deletion.
#[derive(Debug, Clone)]
pub struct Tombstone {
    /// Environment.
    pub env: String,
    /// Series selector.
    pub matchers: Vec<Matcher>,
    /// First deleted timestamp (inclusive).
    pub mint: i64,
    /// Last deleted timestamp (inclusive).
    pub maxt: i64,
    /// Blocks not yet rewritten without the deleted samples.
    pub pending_blocks: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    env: String,
    matchers: Vec<(String, String, String)>,
    mint: i64,
    maxt: i64,
    pending_blocks: Vec<String>,
}

fn op_from(s: &str) -> Option<MatchOp> {
    Some(match s {
        "=" => MatchOp::Eq,
        "!=" => MatchOp::Ne,
        "=~" => MatchOp::Re,
        "!~" => MatchOp::Nre,
        _ => return None,
    })
}

/// Loads `tombstones.json` from `dir` (empty when absent).
pub(crate) fn load(dir: &Path) -> Result<Vec<Tombstone>> {
    let path = dir.join("tombstones.json");
    let raw = match fs::read(&path) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read tombstones", &path)(e)),
    };
    let stored: Vec<Stored> = serde_json::from_slice(&raw)
        .map_err(|e| Error::corrupt(&path, e.column() as u64, e.to_string()))?;
    let mut out = Vec::new();
    for s in stored {
        let mut ms = Vec::new();
        for (op, n, v) in s.matchers {
            let op = op_from(&op)
                .ok_or_else(|| Error::corrupt(&path, 0, format!("bad matcher op {op}")))?;
            ms.push(Matcher::new(op, &n, &v).map_err(|e| Error::corrupt(&path, 0, e.to_string()))?);
        }
        out.push(Tombstone {
            env: s.env,
            matchers: ms,
            mint: s.mint,
            maxt: s.maxt,
            pending_blocks: s.pending_blocks,
        });
    }
    Ok(out)
}

/// Writes `tombstones.json` atomically.
pub(crate) fn store(dir: &Path, ts: &[Tombstone]) -> Result<()> {
    let stored: Vec<Stored> = ts
        .iter()
        .map(|t| Stored {
            env: t.env.clone(),
            matchers: t
                .matchers
                .iter()
                .map(|m| (m.op.as_str().to_string(), m.name.clone(), m.value.clone()))
                .collect(),
            mint: t.mint,
            maxt: t.maxt,
            pending_blocks: t.pending_blocks.clone(),
        })
        .collect();
    let data =
        serde_json::to_vec_pretty(&stored).map_err(|e| Error::InvalidRequest(e.to_string()))?;
    let tmp = dir.join("tombstones.json.tmp");
    let fin = dir.join("tombstones.json");
    {
        use std::io::Write;
        let mut f = fs::File::create(&tmp).map_err(Error::io("write tombstones", &tmp))?;
        f.write_all(&data)
            .map_err(Error::io("write tombstones", &tmp))?;
        f.sync_all().map_err(Error::io("fsync tombstones", &tmp))?;
    }
    fs::rename(&tmp, &fin).map_err(Error::io("rename tombstones", &fin))?;
    crate::wal::sync_dir(dir)
}
