//! Vigil's metadata store: environments and API tokens today; rules, channels, policies,
//! silences and the audit chain as later issues add them.
//!
//! One SQLite database (`<data-dir>/meta.db`) in WAL mode, so the CLI (`vigil token create`)
//! and a running server can use it at the same time. The schema is versioned: [`Meta::open`]
//! applies every migration newer than the database's `user_version` in one transaction, and
//! refuses a database written by a newer Vigil.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let meta = vigil_meta::Meta::open(&dir.path().join("meta.db")).unwrap();
//! let t = vigil_meta::TokenRecord {
//!     jti: "abc".into(), sub: "ci".into(), role: "agent".into(),
//!     envs: vec!["prod".into()], created_ms: 1, expires_ms: 2, revoked_ms: None,
//! };
//! meta.insert_token(&t).unwrap();
//! assert!(!meta.is_revoked("abc").unwrap());
//! meta.revoke_token("abc", 5).unwrap();
//! assert!(meta.is_revoked("abc").unwrap());
//! ```

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Metadata store errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite failed.
    #[error("metadata store {path}: {op}: {source}")]
    Sqlite {
        /// Database file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The database was written by a newer Vigil.
    #[error(
        "metadata store {path} has schema version {found}; this build knows up to {supported}. Upgrade Vigil"
    )]
    FutureSchema {
        /// Database file.
        path: PathBuf,
        /// Version found.
        found: i64,
        /// Newest known.
        supported: i64,
    },
    /// No such record.
    #[error("{what} {key:?} not found")]
    NotFound {
        /// Kind of record.
        what: &'static str,
        /// Its key.
        key: String,
    },
}

/// Migrations, in order; entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: environments and tokens.
    "CREATE TABLE environments (
        name TEXT PRIMARY KEY,
        created_ms INTEGER NOT NULL
     );
     CREATE TABLE tokens (
        jti TEXT PRIMARY KEY,
        sub TEXT NOT NULL,
        role TEXT NOT NULL,
        envs TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        revoked_ms INTEGER
     );",
    // 2: the agent registry and agent state history.
    "CREATE TABLE agents (
        env TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        zone TEXT NOT NULL,
        labels TEXT NOT NULL,
        interval_ms INTEGER NOT NULL,
        version TEXT NOT NULL,
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        PRIMARY KEY (env, agent_id)
     );
     CREATE TABLE agent_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        env TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        from_state TEXT,
        to_state TEXT,
        detail TEXT NOT NULL
     );
     CREATE INDEX agent_events_by_agent ON agent_events (env, agent_id, at_ms);",
    // 3: alerting: state documents, the notification outbox and alert history.
    "CREATE TABLE docs (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        env TEXT NOT NULL,
        body TEXT NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (kind, key)
     );
     CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_ms INTEGER NOT NULL,
        env TEXT NOT NULL,
        receiver TEXT NOT NULL,
        channel TEXT NOT NULL,
        target TEXT NOT NULL,
        request TEXT NOT NULL,
        summary TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_ms INTEGER NOT NULL,
        last_error TEXT,
        delivered_ms INTEGER
     );
     CREATE INDEX outbox_due ON outbox (state, next_attempt_ms);
     CREATE TABLE alert_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        env TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        alertname TEXT NOT NULL,
        source TEXT NOT NULL,
        event TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        by TEXT
     );
     CREATE INDEX alert_history_by_time ON alert_history (env, at_ms);",
];

mod alerting;
pub use alerting::{AlertTx, DocOp, HistoryRecord, OutboxNew, OutboxRow};

/// An agent as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    /// Environment.
    pub env: String,
    /// Agent id.
    pub agent_id: String,
    /// Zone.
    pub zone: String,
    /// Labels as a JSON object.
    pub labels: String,
    /// Declared heartbeat interval, ms.
    pub interval_ms: i64,
    /// Reported version.
    pub version: String,
    /// First heartbeat, ms.
    pub first_seen_ms: i64,
    /// Latest heartbeat, ms.
    pub last_seen_ms: i64,
}

/// A state change or other agent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEventRecord {
    /// Environment.
    pub env: String,
    /// Agent id (for zone events: the agent that triggered it).
    pub agent_id: String,
    /// When, ms.
    pub at_ms: i64,
    /// `state`, `partition_suspected`, `partition_ended`, `restarted`.
    pub kind: String,
    /// Previous state, for `state`.
    pub from_state: Option<String>,
    /// New state, for `state`.
    pub to_state: Option<String>,
    /// Free text (e.g. the zone).
    pub detail: String,
}

/// The newest schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A token as recorded when it was minted (the token itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenRecord {
    /// Token id (the JWT `jti`).
    pub jti: String,
    /// Subject.
    pub sub: String,
    /// Role name.
    pub role: String,
    /// Environments, or `["*"]`.
    pub envs: Vec<String>,
    /// Minted at, ms.
    pub created_ms: i64,
    /// Expires at, ms.
    pub expires_ms: i64,
    /// Revoked at, ms.
    pub revoked_ms: Option<i64>,
}

/// The metadata store.
#[derive(Debug)]
pub struct Meta {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl Meta {
    /// Opens (creating if needed) the database and migrates it to [`SCHEMA_VERSION`].
    pub fn open(path: &Path) -> Result<Self> {
        let err = |op| {
            let path = path.to_path_buf();
            move |source| Error::Sqlite { path, op, source }
        };
        let mut conn = Connection::open(path).map_err(err("open"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err("set busy timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err("enable WAL mode"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err("set synchronous"))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err("read schema version"))?;
        if version > SCHEMA_VERSION {
            return Err(Error::FutureSchema {
                path: path.to_path_buf(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version < SCHEMA_VERSION {
            let tx = conn.transaction().map_err(err("begin migration"))?;
            for m in &MIGRATIONS[version as usize..] {
                tx.execute_batch(m).map_err(err("migrate"))?;
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(err("set schema version"))?;
            tx.commit().map_err(err("commit migration"))?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    fn err(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
        move |source| Error::Sqlite {
            path: self.path.clone(),
            op,
            source,
        }
    }

    /// Records an environment (idempotent).
    pub fn ensure_environment(&self, name: &str, now_ms: i64) -> Result<()> {
        self.conn
            .lock()
            .execute(
                "INSERT OR IGNORE INTO environments (name, created_ms) VALUES (?1, ?2)",
                params![name, now_ms],
            )
            .map_err(self.err("insert environment"))?;
        Ok(())
    }

    /// Known environments.
    pub fn environments(&self) -> Result<Vec<String>> {
        let c = self.conn.lock();
        let mut st = c
            .prepare("SELECT name FROM environments ORDER BY name")
            .map_err(self.err("list environments"))?;
        let rows = st
            .query_map([], |r| r.get(0))
            .map_err(self.err("list environments"))?;
        rows.collect::<rusqlite::Result<Vec<String>>>()
            .map_err(self.err("list environments"))
    }

    /// Inserts or updates agents in one transaction.
    pub fn upsert_agents(&self, agents: &[AgentRecord]) -> Result<()> {
        let mut c = self.conn.lock();
        let tx = c.transaction().map_err(self.err("begin agent upsert"))?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO agents (env, agent_id, zone, labels, interval_ms, version, first_seen_ms, last_seen_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (env, agent_id) DO UPDATE SET zone = excluded.zone, labels = excluded.labels,
                       interval_ms = excluded.interval_ms, version = excluded.version, last_seen_ms = excluded.last_seen_ms",
                )
                .map_err(self.err("prepare agent upsert"))?;
            for a in agents {
                st.execute(params![
                    a.env,
                    a.agent_id,
                    a.zone,
                    a.labels,
                    a.interval_ms,
                    a.version,
                    a.first_seen_ms,
                    a.last_seen_ms
                ])
                .map_err(self.err("upsert agent"))?;
            }
        }
        tx.commit().map_err(self.err("commit agent upsert"))?;
        Ok(())
    }

    /// Removes an agent from the registry (its history stays).
    pub fn delete_agent(&self, env: &str, agent_id: &str) -> Result<bool> {
        let n = self
            .conn
            .lock()
            .execute(
                "DELETE FROM agents WHERE env = ?1 AND agent_id = ?2",
                params![env, agent_id],
            )
            .map_err(self.err("delete agent"))?;
        Ok(n > 0)
    }

    /// Every registered agent.
    pub fn agents(&self) -> Result<Vec<AgentRecord>> {
        let c = self.conn.lock();
        let mut st = c
            .prepare("SELECT env, agent_id, zone, labels, interval_ms, version, first_seen_ms, last_seen_ms FROM agents ORDER BY env, agent_id")
            .map_err(self.err("list agents"))?;
        let rows = st
            .query_map([], |r| {
                Ok(AgentRecord {
                    env: r.get(0)?,
                    agent_id: r.get(1)?,
                    zone: r.get(2)?,
                    labels: r.get(3)?,
                    interval_ms: r.get(4)?,
                    version: r.get(5)?,
                    first_seen_ms: r.get(6)?,
                    last_seen_ms: r.get(7)?,
                })
            })
            .map_err(self.err("list agents"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err("list agents"))
    }

    /// Appends agent events in one transaction.
    pub fn insert_agent_events(&self, events: &[AgentEventRecord]) -> Result<()> {
        let mut c = self.conn.lock();
        let tx = c.transaction().map_err(self.err("begin event insert"))?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO agent_events (env, agent_id, at_ms, kind, from_state, to_state, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(self.err("prepare event insert"))?;
            for e in events {
                st.execute(params![
                    e.env,
                    e.agent_id,
                    e.at_ms,
                    e.kind,
                    e.from_state,
                    e.to_state,
                    e.detail
                ])
                .map_err(self.err("insert event"))?;
            }
        }
        tx.commit().map_err(self.err("commit event insert"))?;
        Ok(())
    }

    /// The newest `limit` events of an agent, newest first.
    pub fn agent_events(
        &self,
        env: &str,
        agent_id: &str,
        limit: usize,
    ) -> Result<Vec<AgentEventRecord>> {
        let c = self.conn.lock();
        let mut st = c
            .prepare(
                "SELECT env, agent_id, at_ms, kind, from_state, to_state, detail FROM agent_events
                 WHERE env = ?1 AND agent_id = ?2 ORDER BY at_ms DESC, id DESC LIMIT ?3",
            )
            .map_err(self.err("list agent events"))?;
        let rows = st
            .query_map(params![env, agent_id, limit as i64], |r| {
                Ok(AgentEventRecord {
                    env: r.get(0)?,
                    agent_id: r.get(1)?,
                    at_ms: r.get(2)?,
                    kind: r.get(3)?,
                    from_state: r.get(4)?,
                    to_state: r.get(5)?,
                    detail: r.get(6)?,
                })
            })
            .map_err(self.err("list agent events"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err("list agent events"))
    }

    /// State changes of `env` at or after `since_ms`: (agent, at, new state), by agent and time.
    pub fn state_changes_since(
        &self,
        env: &str,
        since_ms: i64,
    ) -> Result<Vec<(String, i64, String)>> {
        let c = self.conn.lock();
        let mut st = c
            .prepare(
                "SELECT agent_id, at_ms, to_state FROM agent_events
                 WHERE env = ?1 AND kind = 'state' AND at_ms >= ?2 ORDER BY agent_id, at_ms, id",
            )
            .map_err(self.err("list state changes"))?;
        let rows = st
            .query_map(params![env, since_ms], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(self.err("list state changes"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err("list state changes"))
    }

    /// Each agent's last state before `before_ms` in `env`.
    pub fn states_before(&self, env: &str, before_ms: i64) -> Result<Vec<(String, String)>> {
        let c = self.conn.lock();
        let mut st = c
            .prepare(
                "SELECT e.agent_id, e.to_state FROM agent_events e
                 JOIN (SELECT agent_id, MAX(id) AS mid FROM agent_events
                       WHERE env = ?1 AND kind = 'state' AND at_ms < ?2 GROUP BY agent_id) m
                 ON e.id = m.mid",
            )
            .map_err(self.err("list states before"))?;
        let rows = st
            .query_map(params![env, before_ms], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.err("list states before"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err("list states before"))
    }

    /// Records a minted token.
    pub fn insert_token(&self, t: &TokenRecord) -> Result<()> {
        let envs = serde_json::to_string(&t.envs).unwrap_or_else(|_| "[]".into());
        self.conn
            .lock()
            .execute(
                "INSERT INTO tokens (jti, sub, role, envs, created_ms, expires_ms, revoked_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![t.jti, t.sub, t.role, envs, t.created_ms, t.expires_ms, t.revoked_ms],
            )
            .map_err(self.err("insert token"))?;
        Ok(())
    }

    /// All tokens, newest first.
    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        let c = self.conn.lock();
        let mut st = c
            .prepare("SELECT jti, sub, role, envs, created_ms, expires_ms, revoked_ms FROM tokens ORDER BY created_ms DESC, jti")
            .map_err(self.err("list tokens"))?;
        let rows = st
            .query_map([], |r| {
                let envs: String = r.get(3)?;
                Ok(TokenRecord {
                    jti: r.get(0)?,
                    sub: r.get(1)?,
                    role: r.get(2)?,
                    envs: serde_json::from_str(&envs).unwrap_or_default(),
                    created_ms: r.get(4)?,
                    expires_ms: r.get(5)?,
                    revoked_ms: r.get(6)?,
                })
            })
            .map_err(self.err("list tokens"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err("list tokens"))
    }

    /// Revokes a token; revoking twice keeps the first time.
    pub fn revoke_token(&self, jti: &str, now_ms: i64) -> Result<()> {
        let n = self
            .conn
            .lock()
            .execute(
                "UPDATE tokens SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE jti = ?1",
                params![jti, now_ms],
            )
            .map_err(self.err("revoke token"))?;
        if n == 0 {
            return Err(Error::NotFound {
                what: "token",
                key: jti.to_string(),
            });
        }
        Ok(())
    }

    /// Whether a token id is revoked.
    pub fn is_revoked(&self, jti: &str) -> Result<bool> {
        let r: Option<Option<i64>> = self
            .conn
            .lock()
            .query_row(
                "SELECT revoked_ms FROM tokens WHERE jti = ?1",
                params![jti],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err("check revocation"))?;
        Ok(matches!(r, Some(Some(_))))
    }

    /// Every revoked token id.
    pub fn revoked(&self) -> Result<Vec<String>> {
        let c = self.conn.lock();
        let mut st = c
            .prepare("SELECT jti FROM tokens WHERE revoked_ms IS NOT NULL")
            .map_err(self.err("list revoked"))?;
        let rows = st
            .query_map([], |r| r.get(0))
            .map_err(self.err("list revoked"))?;
        rows.collect::<rusqlite::Result<Vec<String>>>()
            .map_err(self.err("list revoked"))
    }

    /// A number that changes whenever another connection commits (SQLite `data_version`):
    /// lets a cache notice changes made by the CLI cheaply.
    pub fn data_version(&self) -> Result<i64> {
        self.conn
            .lock()
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(self.err("read data version"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(jti: &str) -> TokenRecord {
        TokenRecord {
            jti: jti.into(),
            sub: "s".into(),
            role: "viewer".into(),
            envs: vec!["*".into()],
            created_ms: 1,
            expires_ms: 9,
            revoked_ms: None,
        }
    }

    #[test]
    fn agents_upsert_reload_and_events() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(&dir.path().join("meta.db")).unwrap();
        let mut a = AgentRecord {
            env: "prod".into(),
            agent_id: "web-1".into(),
            zone: "z1".into(),
            labels: "{}".into(),
            interval_ms: 10_000,
            version: "1.0".into(),
            first_seen_ms: 5,
            last_seen_ms: 5,
        };
        m.upsert_agents(std::slice::from_ref(&a)).unwrap();
        a.last_seen_ms = 99;
        a.first_seen_ms = 77; // ignored on update: the first sighting stays
        m.upsert_agents(std::slice::from_ref(&a)).unwrap();
        drop(m);
        let m = Meta::open(&dir.path().join("meta.db")).unwrap();
        let got = m.agents().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].first_seen_ms, got[0].last_seen_ms), (5, 99));
        let e = AgentEventRecord {
            env: "prod".into(),
            agent_id: "web-1".into(),
            at_ms: 100,
            kind: "state".into(),
            from_state: Some("healthy".into()),
            to_state: Some("failed".into()),
            detail: String::new(),
        };
        m.insert_agent_events(std::slice::from_ref(&e)).unwrap();
        assert_eq!(m.agent_events("prod", "web-1", 10).unwrap(), vec![e]);
        assert!(m.delete_agent("prod", "web-1").unwrap());
        assert!(m.agents().unwrap().is_empty());
    }

    #[test]
    fn migrates_once_and_reopens() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("meta.db");
        let m = Meta::open(&p).unwrap();
        m.ensure_environment("prod", 1).unwrap();
        m.ensure_environment("prod", 2).unwrap();
        drop(m);
        let m = Meta::open(&p).unwrap();
        assert_eq!(m.environments().unwrap(), vec!["prod"]);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("meta.db");
        Connection::open(&p)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            Meta::open(&p),
            Err(Error::FutureSchema { found: 99, .. })
        ));
    }

    #[test]
    fn tokens_list_and_revoke() {
        let d = tempfile::tempdir().unwrap();
        let m = Meta::open(&d.path().join("meta.db")).unwrap();
        m.insert_token(&rec("a")).unwrap();
        m.insert_token(&rec("b")).unwrap();
        assert!(m.insert_token(&rec("a")).is_err(), "duplicate jti");
        m.revoke_token("a", 5).unwrap();
        m.revoke_token("a", 7).unwrap();
        assert!(matches!(
            m.revoke_token("zz", 5),
            Err(Error::NotFound { .. })
        ));
        let l = m.list_tokens().unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l.iter().find(|t| t.jti == "a").unwrap().revoked_ms, Some(5));
        assert_eq!(m.revoked().unwrap(), vec!["a"]);
    }

    #[test]
    fn another_connection_sees_revocations() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("meta.db");
        let server = Meta::open(&p).unwrap();
        let cli = Meta::open(&p).unwrap();
        cli.insert_token(&rec("x")).unwrap();
        let v0 = server.data_version().unwrap();
        cli.revoke_token("x", 3).unwrap();
        assert_ne!(server.data_version().unwrap(), v0);
        assert!(server.is_revoked("x").unwrap());
    }
}
