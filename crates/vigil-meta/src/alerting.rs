//! Alerting state: JSON documents by kind and key (alert lifecycles, dispatcher state,
//! silences, threshold rules, API-loaded rule files), the notification outbox and the alert
//! history. [`Meta::apply_alert_tx`] writes all of one dispatcher step in a single transaction,
//! so a crash never leaves a notification half-recorded.

use rusqlite::params;

use crate::{Meta, Result};

/// Write or delete one document.
#[derive(Debug, Clone)]
pub enum DocOp {
    /// Insert or replace `(kind, key)`.
    Put {
        /// Document kind (`alert`, `tracked`, `group`, `silence`, `threshold`, `rules`).
        kind: &'static str,
        /// Key within the kind.
        key: String,
        /// Environment it belongs to (`*` when several).
        env: String,
        /// JSON body.
        body: String,
    },
    /// Delete `(kind, key)`.
    Delete {
        /// Document kind.
        kind: &'static str,
        /// Key within the kind.
        key: String,
    },
}

/// A notification to deliver.
#[derive(Debug, Clone)]
pub struct OutboxNew {
    /// Environment (`*` when the notification spans several).
    pub env: String,
    /// Receiver name.
    pub receiver: String,
    /// `webhook`, `slack`, `email`, `alertmanager`.
    pub channel: String,
    /// URL or address, for the delivery log.
    pub target: String,
    /// Everything the sender needs (JSON).
    pub request: String,
    /// One line for humans (title).
    pub summary: String,
}

/// A notification in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OutboxRow {
    /// Id.
    pub id: i64,
    /// When it was queued (ms).
    pub created_ms: i64,
    /// Environment.
    pub env: String,
    /// Receiver.
    pub receiver: String,
    /// Channel kind.
    pub channel: String,
    /// URL or address.
    pub target: String,
    /// Request (JSON).
    #[serde(skip)]
    pub request: String,
    /// Title.
    pub summary: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    /// Attempts so far.
    pub attempts: i64,
    /// Next attempt (ms), while pending.
    pub next_attempt_ms: i64,
    /// Last error.
    pub last_error: Option<String>,
    /// Delivery time (ms).
    pub delivered_ms: Option<i64>,
}

/// An alert lifecycle event, for analytics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryRecord {
    /// Environment.
    pub env: String,
    /// Alert fingerprint (hex).
    pub fingerprint: String,
    /// `alertname`.
    pub alertname: String,
    /// Rule source.
    pub source: String,
    /// `pending`, `firing`, `resolved`, `acknowledged`.
    pub event: String,
    /// When (ms).
    pub at_ms: i64,
    /// Who (acknowledgements).
    pub by: Option<String>,
}

/// One atomic alerting write.
#[derive(Debug, Default)]
pub struct AlertTx {
    /// Documents to write or delete.
    pub docs: Vec<DocOp>,
    /// Notifications to queue.
    pub outbox: Vec<OutboxNew>,
    /// History events.
    pub history: Vec<HistoryRecord>,
}

impl AlertTx {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty() && self.outbox.is_empty() && self.history.is_empty()
    }
}

const OUTBOX_COLS: &str = "id, created_ms, env, receiver, channel, target, request, summary, state, attempts, next_attempt_ms, last_error, delivered_ms";

fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRow> {
    Ok(OutboxRow {
        id: r.get(0)?,
        created_ms: r.get(1)?,
        env: r.get(2)?,
        receiver: r.get(3)?,
        channel: r.get(4)?,
        target: r.get(5)?,
        request: r.get(6)?,
        summary: r.get(7)?,
        state: r.get(8)?,
        attempts: r.get(9)?,
        next_attempt_ms: r.get(10)?,
        last_error: r.get(11)?,
        delivered_ms: r.get(12)?,
    })
}

impl Meta {
    /// Writes documents, queues notifications and appends history in one transaction.
    pub fn apply_alert_tx(&self, t: &AlertTx, now_ms: i64) -> Result<()> {
        if t.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.lock();
        let tx = c.transaction().map_err(self.err("begin alerting write"))?;
        {
            let mut put = tx
                .prepare_cached("INSERT OR REPLACE INTO docs (kind, key, env, body, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(self.err("prepare document write"))?;
            let mut del = tx
                .prepare_cached("DELETE FROM docs WHERE kind = ?1 AND key = ?2")
                .map_err(self.err("prepare document delete"))?;
            for d in &t.docs {
                match d {
                    DocOp::Put {
                        kind,
                        key,
                        env,
                        body,
                    } => {
                        put.execute(params![kind, key, env, body, now_ms])
                            .map_err(self.err("write document"))?;
                    }
                    DocOp::Delete { kind, key } => {
                        del.execute(params![kind, key])
                            .map_err(self.err("delete document"))?;
                    }
                }
            }
            let mut ob = tx
                .prepare_cached(
                    "INSERT INTO outbox (created_ms, env, receiver, channel, target, request, summary, state, attempts, next_attempt_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', 0, ?1)",
                )
                .map_err(self.err("prepare outbox insert"))?;
            for o in &t.outbox {
                ob.execute(params![
                    now_ms, o.env, o.receiver, o.channel, o.target, o.request, o.summary
                ])
                .map_err(self.err("queue notification"))?;
            }
            let mut h = tx
                .prepare_cached(
                    "INSERT INTO alert_history (env, fingerprint, alertname, source, event, at_ms, by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(self.err("prepare history insert"))?;
            for r in &t.history {
                h.execute(params![
                    r.env,
                    r.fingerprint,
                    r.alertname,
                    r.source,
                    r.event,
                    r.at_ms,
                    r.by
                ])
                .map_err(self.err("append alert history"))?;
            }
        }
        tx.commit().map_err(self.err("commit alerting write"))?;
        Ok(())
    }

    /// All documents of a kind: (key, env, body).
    pub fn docs(&self, kind: &str) -> Result<Vec<(String, String, String)>> {
        let c = self.conn.lock();
        let mut st = c
            .prepare("SELECT key, env, body FROM docs WHERE kind = ?1 ORDER BY key")
            .map_err(self.err("list documents"))?;
        let rows = st
            .query_map(params![kind], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(self.err("list documents"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err("list documents"))
    }

    /// Pending notifications due at `now_ms`, oldest first.
    pub fn outbox_due(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxRow>> {
        let c = self.conn.lock();
        let mut st = c
            .prepare_cached(&format!(
                "SELECT {OUTBOX_COLS} FROM outbox WHERE state = 'pending' AND next_attempt_ms <= ?1 ORDER BY next_attempt_ms, id LIMIT ?2"
            ))
            .map_err(self.err("list due notifications"))?;
        let rows = st
            .query_map(params![now_ms, limit as i64], outbox_row)
            .map_err(self.err("list due notifications"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err("list due notifications"))
    }

    /// When the next pending notification is due.
    pub fn outbox_next_due(&self) -> Result<Option<i64>> {
        self.conn
            .lock()
            .query_row(
                "SELECT MIN(next_attempt_ms) FROM outbox WHERE state = 'pending'",
                [],
                |r| r.get(0),
            )
            .map_err(self.err("read next due notification"))
    }

    /// Records the outcome of an attempt.
    pub fn outbox_update(
        &self,
        id: i64,
        state: &str,
        attempts: i64,
        next_attempt_ms: i64,
        last_error: Option<&str>,
        delivered_ms: Option<i64>,
    ) -> Result<()> {
        self.conn
            .lock()
            .execute(
                "UPDATE outbox SET state = ?2, attempts = ?3, next_attempt_ms = ?4, last_error = ?5, delivered_ms = ?6 WHERE id = ?1",
                params![id, state, attempts, next_attempt_ms, last_error, delivered_ms],
            )
            .map_err(self.err("update notification"))?;
        Ok(())
    }

    /// The delivery log, newest first; `env` `None` lists every environment.
    pub fn outbox_list(
        &self,
        env: Option<&str>,
        state: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OutboxRow>> {
        let c = self.conn.lock();
        let mut st = c
            .prepare(&format!(
                "SELECT {OUTBOX_COLS} FROM outbox WHERE (?1 IS NULL OR env = ?1 OR env = '*') AND (?2 IS NULL OR state = ?2)
                 ORDER BY id DESC LIMIT ?3"
            ))
            .map_err(self.err("list notifications"))?;
        let rows = st
            .query_map(params![env, state, limit as i64], outbox_row)
            .map_err(self.err("list notifications"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err("list notifications"))
    }

    /// Alert history of `env` (every environment when `None`) at or after `since_ms`, oldest first.
    pub fn alert_history(&self, env: Option<&str>, since_ms: i64) -> Result<Vec<HistoryRecord>> {
        let c = self.conn.lock();
        let mut st = c
            .prepare(
                "SELECT env, fingerprint, alertname, source, event, at_ms, by FROM alert_history
                 WHERE (?1 IS NULL OR env = ?1) AND at_ms >= ?2 ORDER BY at_ms, id",
            )
            .map_err(self.err("list alert history"))?;
        let rows = st
            .query_map(params![env, since_ms], |r| {
                Ok(HistoryRecord {
                    env: r.get(0)?,
                    fingerprint: r.get(1)?,
                    alertname: r.get(2)?,
                    source: r.get(3)?,
                    event: r.get(4)?,
                    at_ms: r.get(5)?,
                    by: r.get(6)?,
                })
            })
            .map_err(self.err("list alert history"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err("list alert history"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_outbox_and_history_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(&dir.path().join("meta.db")).unwrap();
        let tx = AlertTx {
            docs: vec![DocOp::Put {
                kind: "silence",
                key: "s1".into(),
                env: "prod".into(),
                body: "{}".into(),
            }],
            outbox: vec![OutboxNew {
                env: "prod".into(),
                receiver: "ops".into(),
                channel: "webhook".into(),
                target: "http://x".into(),
                request: "{}".into(),
                summary: "[FIRING:1] X".into(),
            }],
            history: vec![HistoryRecord {
                env: "prod".into(),
                fingerprint: "ab".into(),
                alertname: "X".into(),
                source: "t".into(),
                event: "firing".into(),
                at_ms: 5,
                by: None,
            }],
        };
        m.apply_alert_tx(&tx, 100).unwrap();
        assert_eq!(m.docs("silence").unwrap().len(), 1);
        let due = m.outbox_due(100, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(m.outbox_next_due().unwrap(), Some(100));
        m.outbox_update(due[0].id, "delivered", 1, 0, None, Some(150))
            .unwrap();
        assert!(m.outbox_due(1000, 10).unwrap().is_empty());
        assert_eq!(
            m.outbox_list(Some("prod"), Some("delivered"), 10)
                .unwrap()
                .len(),
            1
        );
        assert!(m.outbox_list(Some("staging"), None, 10).unwrap().is_empty());
        assert_eq!(m.alert_history(Some("prod"), 0).unwrap().len(), 1);
        m.apply_alert_tx(
            &AlertTx {
                docs: vec![DocOp::Delete {
                    kind: "silence",
                    key: "s1".into(),
                }],
                ..Default::default()
            },
            200,
        )
        .unwrap();
        assert!(m.docs("silence").unwrap().is_empty());
    }
}
