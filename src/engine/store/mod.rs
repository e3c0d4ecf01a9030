//! The node's state: one redb file per data directory (`tern.redb`).
//!
//! Tables map string keys to JSON values: small records read far less often
//! than the data path runs, where a readable, self-describing encoding is worth
//! more than bytes. Hot data (journals, caches) never lives here.
//!
//! Schema versions: `meta["schema_version"]` holds the version the file was last
//! migrated to. [`MIGRATIONS`]`[i]` upgrades version `i` to `i + 1` inside one write
//! transaction, so a crash mid-upgrade leaves the old version intact. A file
//! from a newer Tern is refused rather than guessed at.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub type Table = TableDefinition<'static, &'static str, &'static [u8]>;

pub const META: Table = TableDefinition::new("meta");
pub const USERS: Table = TableDefinition::new("users");
pub const API_TOKENS: Table = TableDefinition::new("api_tokens");
pub const ENROLL_TOKENS: Table = TableDefinition::new("enroll_tokens");
pub const HOSTS: Table = TableDefinition::new("hosts");
pub const PAIRS: Table = TableDefinition::new("pairs");
pub const VOLUMES: Table = TableDefinition::new("volumes");
/// Alerts, active and cleared, keyed by zero-padded id (oldest first).
pub const ALERTS: Table = TableDefinition::new("alerts");
/// Notification receivers (SNMP, SMTP), keyed by id.
pub const RECEIVERS: Table = TableDefinition::new("alert_receivers");
/// Health report rows, keyed `PAIR/YYYY-MM-DD` (UTC days).
pub const HEALTH: Table = TableDefinition::new("health_days");
/// Jobs (key: the id, zero-padded to 16 digits so keys sort by id).
pub const JOBS: Table = TableDefinition::new("jobs");
/// Commands to nodes (bookmarks), pending and done (key: the command id).
pub const COMMANDS: Table = TableDefinition::new("commands");
/// The audit log of state-changing API calls (key: seq, zero-padded to 16 digits).
pub const AUDIT: Table = TableDefinition::new("audit");

type Migration = fn(&WriteTransaction) -> Result<(), StoreError>;

/// Ordered upgrades; the schema version is `MIGRATIONS.len()`.
pub const MIGRATIONS: &[Migration] = &[
    migrate_0_to_1,
    migrate_1_to_2,
    migrate_2_to_3,
    migrate_3_to_4,
    migrate_4_to_5,
    migrate_5_to_6,
];
pub const SCHEMA_VERSION: u64 = MIGRATIONS.len() as u64;

/// Version 1: the skeleton's tables.
fn migrate_0_to_1(tx: &WriteTransaction) -> Result<(), StoreError> {
    for t in [USERS, API_TOKENS, ENROLL_TOKENS, HOSTS] {
        tx.open_table(t)?;
    }
    Ok(())
}

/// Version 2: replication pairs and agent volumes added through the API.
fn migrate_1_to_2(tx: &WriteTransaction) -> Result<(), StoreError> {
    for t in [PAIRS, VOLUMES] {
        tx.open_table(t)?;
    }
    Ok(())
}

/// Version 3: monitoring (alerts, receivers, health report days).
fn migrate_2_to_3(tx: &WriteTransaction) -> Result<(), StoreError> {
    for t in [ALERTS, RECEIVERS, HEALTH] {
        tx.open_table(t)?;
    }
    Ok(())
}

/// Version 4: jobs.
fn migrate_3_to_4(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(JOBS)?;
    Ok(())
}

/// Version 5: commands to nodes, kept until done.
fn migrate_4_to_5(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(COMMANDS)?;
    Ok(())
}

/// Version 6: the audit log.
fn migrate_5_to_6(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(AUDIT)?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: cannot open state database: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error(
        "{path}: written by a newer Tern (schema {found}, this build knows up to {known}); upgrade tern or restore a backup"
    )]
    TooNew {
        path: PathBuf,
        found: u64,
        known: u64,
    },
    #[error("state database: {0}")]
    Db(String),
    #[error("state database record {key:?}: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.to_string()) }
        }
    )*};
}
db_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Shared handle to the node's database.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl Store {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("tern.redb")
    }

    /// Open (creating if needed) and migrate to [`SCHEMA_VERSION`].
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(data_dir, MIGRATIONS)
    }

    fn open_with(data_dir: &Path, migrations: &[Migration]) -> Result<Store, StoreError> {
        let path = Self::path(data_dir);
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Db(e.to_string()))?;
        let db = Database::create(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        let store = Store { db: Arc::new(db) };
        let found = store.schema_version()?;
        let known = migrations.len() as u64;
        if found > known {
            return Err(StoreError::TooNew { path, found, known });
        }
        for v in found..known {
            let tx = store.db.begin_write()?;
            migrations[v as usize](&tx)?;
            tx.open_table(META)?
                .insert("schema_version", (v + 1).to_le_bytes().as_slice())?;
            tx.commit()?;
            tracing::info!(path = %path.display(), from = v, to = v + 1, "state database migrated");
        }
        Ok(store)
    }

    pub fn schema_version(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        let t = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        Ok(match t.get("schema_version")? {
            Some(v) => {
                let b = v.value();
                let mut a = [0u8; 8];
                if b.len() == 8 {
                    a.copy_from_slice(b);
                }
                u64::from_le_bytes(a)
            }
            None => 0,
        })
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table)?;
        let v = t.get(key)?;
        v.map(|v| decode(key, v.value())).transpose()
    }

    pub fn list<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<(String, T)>, StoreError> {
        let tx = self.db.begin_read()?;
        rows(&tx.open_table(table)?)
    }

    /// Up to `limit` records that `keep` accepts, from the last key below
    /// `before` (or the last of all) backwards; and whether more were left.
    /// Reads (and decodes) only as far as it needs to.
    pub fn page_rev<T: DeserializeOwned>(
        &self,
        table: Table,
        before: Option<&str>,
        limit: usize,
        mut keep: impl FnMut(&T) -> bool,
    ) -> Result<(Vec<(String, T)>, bool), StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table)?;
        let range = match before {
            Some(b) => t.range::<&str>(..b)?,
            None => t.range::<&str>(..)?,
        };
        let mut out = Vec::new();
        for row in range.rev() {
            let (k, v) = row?;
            let rec: T = decode(k.value(), v.value())?;
            if !keep(&rec) {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push((k.value().to_owned(), rec));
        }
        Ok((out, false))
    }

    pub fn put<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<(), StoreError> {
        self.update(|tx| put_in(tx, table, key, value))
    }

    pub fn remove(&self, table: Table, key: &str) -> Result<bool, StoreError> {
        self.update(|tx| Ok(tx.open_table(table)?.remove(key)?.is_some()))
    }

    /// Run `f` in one write transaction; it commits only if `f` returns Ok.
    pub fn update<R, E>(&self, f: impl FnOnce(&WriteTransaction) -> Result<R, E>) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        let tx = self.db.begin_write().map_err(StoreError::from)?;
        let r = f(&tx)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(r)
    }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        key: key.to_owned(),
        source,
    })
}

/// Every record of a table inside a write transaction.
pub fn list_in<T: DeserializeOwned>(
    tx: &WriteTransaction,
    table: Table,
) -> Result<Vec<(String, T)>, StoreError> {
    rows(&tx.open_table(table)?)
}

/// Every record of an open table, decoded.
fn rows<T: DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<(String, T)>, StoreError> {
    let mut out = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        out.push((k.value().to_owned(), decode(k.value(), v.value())?));
    }
    Ok(out)
}

/// Remove a record inside a write transaction.
pub fn remove_in(tx: &WriteTransaction, table: Table, key: &str) -> Result<bool, StoreError> {
    Ok(tx.open_table(table)?.remove(key)?.is_some())
}

/// Read a record inside a write transaction.
pub fn get_in<T: DeserializeOwned>(
    tx: &WriteTransaction,
    table: Table,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let t = tx.open_table(table)?;
    let v = t.get(key)?;
    v.map(|v| decode(key, v.value())).transpose()
}

/// Write a record inside a write transaction.
pub fn put_in<T: Serialize>(
    tx: &WriteTransaction,
    table: Table,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).expect("records serialize");
    tx.open_table(table)?.insert(key, bytes.as_slice())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_run_backwards_from_a_key_and_say_whether_more_are_left() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        for i in 1..=25u64 {
            s.put(JOBS, &format!("{i:016}"), &i).unwrap();
        }
        let (p, more) = s.page_rev::<u64>(JOBS, None, 10, |_| true).unwrap();
        assert_eq!(
            p.iter().map(|r| r.1).collect::<Vec<_>>(),
            (16..=25).rev().collect::<Vec<_>>()
        );
        assert!(more);
        let (p, more) = s
            .page_rev::<u64>(JOBS, Some(&format!("{:016}", 16)), 10, |_| true)
            .unwrap();
        assert_eq!(p.first().map(|r| r.1), Some(15));
        assert_eq!(p.last().map(|r| r.1), Some(6));
        assert!(more);
        let (p, more) = s
            .page_rev::<u64>(JOBS, Some(&format!("{:016}", 6)), 10, |_| true)
            .unwrap();
        assert_eq!(p.len(), 5);
        assert!(!more);
        // A filter skips records without ending the page early.
        let (p, more) = s.page_rev::<u64>(JOBS, None, 3, |v| v % 5 == 0).unwrap();
        assert_eq!(p.iter().map(|r| r.1).collect::<Vec<_>>(), vec![25, 20, 15]);
        assert!(more);
        let (_, more) = s.page_rev::<u64>(JOBS, None, 5, |v| v % 5 == 0).unwrap();
        assert!(!more, "exactly five match: nothing is left");
    }

    #[test]
    fn fresh_database_is_migrated_to_current_version() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        s.put(HOSTS, "h1", &serde_json::json!({"name": "a"}))
            .unwrap();
        drop(s);
        // Reopening runs no migration and keeps the data.
        let s = Store::open(d.path()).unwrap();
        let v: serde_json::Value = s.get(HOSTS, "h1").unwrap().unwrap();
        assert_eq!(v["name"], "a");
    }

    fn add_column(tx: &WriteTransaction) -> Result<(), StoreError> {
        // A stand-in for a future migration: rewrite every host record.
        let rows: Vec<(String, serde_json::Value)> = {
            let t = tx.open_table(HOSTS)?;
            let mut v = Vec::new();
            for r in t.iter()? {
                let (k, val) = r?;
                v.push((k.value().to_owned(), decode(k.value(), val.value())?));
            }
            v
        };
        for (k, mut v) in rows {
            v["migrated"] = serde_json::json!(true);
            put_in(tx, HOSTS, &k, &v)?;
        }
        Ok(())
    }

    /// This build's migrations and one more.
    fn with_add_column() -> Vec<Migration> {
        MIGRATIONS
            .iter()
            .copied()
            .chain([add_column as Migration])
            .collect()
    }

    #[test]
    fn a_later_migration_upgrades_existing_records() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        s.put(HOSTS, "h1", &serde_json::json!({"name": "a"}))
            .unwrap();
        drop(s);
        let next = with_add_column();
        let s = Store::open_with(d.path(), &next).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION + 1);
        let v: serde_json::Value = s.get(HOSTS, "h1").unwrap().unwrap();
        assert_eq!(v["migrated"], true);
    }

    #[test]
    fn database_from_a_newer_tern_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let next = with_add_column();
        let s = Store::open_with(d.path(), &next).unwrap();
        drop(s);
        match Store::open(d.path()) {
            Err(StoreError::TooNew { found, known, .. })
                if found == SCHEMA_VERSION + 1 && known == SCHEMA_VERSION => {}
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a newer schema must be refused"),
        }
    }
}
