//! The registry's metadata in SQLite (`REGISTRY/registry.db`): each version's parent,
//! data, configuration, metrics and status; each retraining run; each promotion and
//! rollback. The `PRODUCTION` pointer stays the truth the server follows: a promotion
//! renames the pointer first and then records it, and opening the registry reconciles
//! the records with the pointer, so a crash between the two leaves nothing
//! inconsistent.

use super::{production, set_production, version_dir, PRODUCTION_FILE, VERSIONS_DIR};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use slimformer::{Error, Result};
use std::path::{Path, PathBuf};

pub const DB_FILE: &str = "registry.db";

/// The database's file name inside a registry.
pub fn db_file() -> &'static str {
    DB_FILE
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionStatus {
    Candidate,
    Production,
    Retired,
    Rejected,
}

impl VersionStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            VersionStatus::Candidate => "candidate",
            VersionStatus::Production => "production",
            VersionStatus::Retired => "retired",
            VersionStatus::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> VersionStatus {
        match s {
            "production" => VersionStatus::Production,
            "retired" => VersionStatus::Retired,
            "rejected" => VersionStatus::Rejected,
            _ => VersionStatus::Candidate,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionRow {
    pub name: String,
    pub parent: Option<String>,
    pub created_at: String,
    pub status: VersionStatus,
    pub config: serde_json::Value,
    pub data: serde_json::Value,
    pub holdout: serde_json::Value,
    pub note: String,
}

/// One retraining run as recorded.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RunRecord {
    pub id: i64,
    pub started_at: String,
    pub finished_at: String,
    /// promoted, rejected, skipped or failed.
    pub outcome: String,
    pub reason: String,
    pub candidate: Option<String>,
    pub production_before: Option<String>,
    pub candidate_score: Option<f64>,
    pub production_score: Option<f64>,
    pub quarantined: serde_json::Value,
}

pub struct Registry {
    pub dir: PathBuf,
    conn: Connection,
}

pub fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    format!("{secs:.3}")
}

fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::file(path, format!("registry database: {e}"))
}

impl Registry {
    /// Opens (creating if needed) the registry in `dir` and reconciles its records
    /// with the production pointer.
    pub fn open(dir: &Path) -> Result<Registry> {
        std::fs::create_dir_all(dir.join(VERSIONS_DIR)).map_err(|e| Error::file(dir, e))?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(db_err(&path))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             PRAGMA busy_timeout=10000;
             CREATE TABLE IF NOT EXISTS versions (
               name TEXT PRIMARY KEY, parent TEXT, created_at TEXT NOT NULL,
               status TEXT NOT NULL, config TEXT NOT NULL DEFAULT '{}',
               data TEXT NOT NULL DEFAULT '{}', holdout TEXT NOT NULL DEFAULT '{}',
               note TEXT NOT NULL DEFAULT '');
             CREATE TABLE IF NOT EXISTS runs (
               id INTEGER PRIMARY KEY AUTOINCREMENT, started_at TEXT NOT NULL,
               finished_at TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT NOT NULL,
               candidate TEXT, production_before TEXT, candidate_score REAL,
               production_score REAL, quarantined TEXT NOT NULL DEFAULT '[]');
             CREATE TABLE IF NOT EXISTS events (
               id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, kind TEXT NOT NULL,
               from_version TEXT, to_version TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS seen_files (
               hash TEXT PRIMARY KEY, name TEXT NOT NULL, version TEXT NOT NULL);",
        )
        .map_err(db_err(&path))?;
        let reg = Registry {
            dir: dir.to_path_buf(),
            conn,
        };
        reg.reconcile()?;
        Ok(reg)
    }

    fn path(&self) -> PathBuf {
        self.dir.join(DB_FILE)
    }

    /// Makes the records agree with what is on disk: the pointer's version is the
    /// production one; a version folder without a record (a crash between the two)
    /// is recorded as rejected; a leftover staging folder is removed.
    fn reconcile(&self) -> Result<()> {
        let p = self.path();
        let staging = self.dir.join(".staging");
        if staging.exists() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        if let Ok(entries) = std::fs::read_dir(self.dir.join(VERSIONS_DIR)) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    let _ = std::fs::remove_dir_all(entry.path());
                    continue;
                }
                let known: Option<String> = self
                    .conn
                    .query_row("SELECT name FROM versions WHERE name = ?1", [&name], |r| {
                        r.get(0)
                    })
                    .optional()
                    .map_err(db_err(&p))?;
                if known.is_none() {
                    self.conn
                        .execute(
                            "INSERT INTO versions (name, created_at, status, note) VALUES (?1, ?2, 'rejected', ?3)",
                            params![name, now(), "found without a record (an interrupted run): never promoted"],
                        )
                        .map_err(db_err(&p))?;
                }
            }
        }
        if self.dir.join(PRODUCTION_FILE).exists() {
            let (prod, _) = production(&self.dir)?;
            let recorded: Option<String> = self
                .conn
                .query_row(
                    "SELECT name FROM versions WHERE status = 'production'",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err(&p))?;
            if recorded.as_deref() != Some(prod.as_str()) {
                let tx = self.conn.unchecked_transaction().map_err(db_err(&p))?;
                tx.execute(
                    "UPDATE versions SET status = 'retired' WHERE status = 'production'",
                    [],
                )
                .map_err(db_err(&p))?;
                tx.execute(
                    "UPDATE versions SET status = 'production' WHERE name = ?1",
                    [&prod],
                )
                .map_err(db_err(&p))?;
                tx.execute(
                    "INSERT INTO events (at, kind, from_version, to_version) VALUES (?1, 'reconcile', ?2, ?3)",
                    params![now(), recorded, prod],
                )
                .map_err(db_err(&p))?;
                tx.commit().map_err(db_err(&p))?;
            }
        }
        Ok(())
    }

    /// The next free version name: v1, v2, ...
    pub fn next_version(&self) -> Result<String> {
        let mut n = 0u64;
        if let Ok(entries) = std::fs::read_dir(self.dir.join(VERSIONS_DIR)) {
            for e in entries.flatten() {
                if let Some(k) = e
                    .file_name()
                    .to_string_lossy()
                    .strip_prefix('v')
                    .and_then(|k| k.parse::<u64>().ok())
                {
                    n = n.max(k);
                }
            }
        }
        Ok(format!("v{}", n + 1))
    }

    /// A folder to build a version in before [`Registry::add_version`] moves it.
    pub fn staging_dir(&self, name: &str) -> PathBuf {
        self.dir.join(".staging").join(name)
    }

    /// Moves a built version into place and records it as a candidate, with the
    /// hashes of the data files it saw (so they are never trained on twice).
    #[allow(clippy::too_many_arguments)]
    pub fn add_version(
        &self,
        name: &str,
        built: &Path,
        parent: Option<&str>,
        config: &serde_json::Value,
        data: &serde_json::Value,
        holdout: &serde_json::Value,
        files: &[(String, String)],
    ) -> Result<()> {
        super::check_version_name(name)?;
        let dest = version_dir(&self.dir, name);
        if dest.exists() {
            return Err(Error::file(&dest, "a version of that name exists"));
        }
        std::fs::rename(built, &dest).map_err(|e| Error::file(&dest, e))?;
        super::fault_point("version-moved");
        let p = self.path();
        let tx = self.conn.unchecked_transaction().map_err(db_err(&p))?;
        tx.execute(
            "INSERT INTO versions (name, parent, created_at, status, config, data, holdout) VALUES (?1, ?2, ?3, 'candidate', ?4, ?5, ?6)",
            params![name, parent, now(), config.to_string(), data.to_string(), holdout.to_string()],
        )
        .map_err(db_err(&p))?;
        for (hash, file) in files {
            tx.execute(
                "INSERT OR IGNORE INTO seen_files (hash, name, version) VALUES (?1, ?2, ?3)",
                params![hash, file, name],
            )
            .map_err(db_err(&p))?;
        }
        tx.commit().map_err(db_err(&p))
    }

    pub fn seen(&self, hash: &str) -> Result<bool> {
        let p = self.path();
        Ok(self
            .conn
            .query_row("SELECT 1 FROM seen_files WHERE hash = ?1", [hash], |_| {
                Ok(())
            })
            .optional()
            .map_err(db_err(&p))?
            .is_some())
    }

    /// Imports a model folder as the first production version.
    pub fn init(dir: &Path, model: &Path, name: &str) -> Result<Registry> {
        let reg = Registry::open(dir)?;
        if reg.dir.join(PRODUCTION_FILE).exists() {
            return Err(Error::file(
                dir,
                "the registry already has a production version",
            ));
        }
        reg.import(model, name)?;
        reg.promote(name, "initial version")?;
        Ok(reg)
    }

    /// Copies a model folder (trained elsewhere) in as candidate version `name`;
    /// `promote` makes it production.
    pub fn import(&self, model: &Path, name: &str) -> Result<()> {
        super::check_version_name(name)?;
        slimformer::checkpoint::Checkpoint::open(model)?;
        let staging = self.staging_dir(name);
        copy_dir(model, &staging)?;
        self.add_version(
            name,
            &staging,
            None,
            &serde_json::json!({"imported_from": model}),
            &serde_json::json!({}),
            &serde_json::json!({}),
            &[],
        )
    }

    /// Makes `name` production: the pointer first (atomic), then the records.
    pub fn promote(&self, name: &str, reason: &str) -> Result<()> {
        let status = self.show(name)?.status;
        if status == VersionStatus::Rejected {
            return Err(Error::Input(format!(
                "{name} was rejected and cannot be promoted"
            )));
        }
        let before = production(&self.dir).ok().map(|(v, _)| v);
        set_production(&self.dir, name)?;
        super::fault_point("pointer-written");
        self.reconcile()?;
        let p = self.path();
        self.conn
            .execute(
                "INSERT INTO events (at, kind, from_version, to_version) VALUES (?1, 'promote', ?2, ?3)",
                params![now(), before, name],
            )
            .map_err(db_err(&p))?;
        self.conn
            .execute(
                "UPDATE versions SET note = ?2 WHERE name = ?1",
                params![name, reason],
            )
            .map_err(db_err(&p))?;
        Ok(())
    }

    pub fn reject(&self, name: &str, reason: &str) -> Result<()> {
        let p = self.path();
        self.conn
            .execute(
                "UPDATE versions SET status = 'rejected', note = ?2 WHERE name = ?1 AND status = 'candidate'",
                params![name, reason],
            )
            .map_err(db_err(&p))?;
        Ok(())
    }

    /// Back to the version that was production before the current one.
    pub fn rollback(&self) -> Result<String> {
        let (current, _) = production(&self.dir)?;
        let p = self.path();
        let previous: Option<String> = self
            .conn
            .query_row(
                "SELECT from_version FROM events WHERE kind IN ('promote', 'rollback') AND to_version = ?1 AND from_version IS NOT NULL ORDER BY id DESC LIMIT 1",
                [&current],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err(&p))?;
        let previous = previous.ok_or_else(|| {
            Error::Input(format!(
                "{current} has no earlier production version to roll back to"
            ))
        })?;
        set_production(&self.dir, &previous)?;
        self.reconcile()?;
        self.conn
            .execute(
                "INSERT INTO events (at, kind, from_version, to_version) VALUES (?1, 'rollback', ?2, ?3)",
                params![now(), current, previous],
            )
            .map_err(db_err(&p))?;
        Ok(previous)
    }

    fn row(r: &rusqlite::Row) -> rusqlite::Result<VersionRow> {
        let json = |s: String| serde_json::from_str(&s).unwrap_or(serde_json::Value::Null);
        Ok(VersionRow {
            name: r.get(0)?,
            parent: r.get(1)?,
            created_at: r.get(2)?,
            status: VersionStatus::parse(&r.get::<_, String>(3)?),
            config: json(r.get(4)?),
            data: json(r.get(5)?),
            holdout: json(r.get(6)?),
            note: r.get(7)?,
        })
    }

    pub fn list(&self) -> Result<Vec<VersionRow>> {
        let p = self.path();
        let mut stmt = self
            .conn
            .prepare("SELECT name, parent, created_at, status, config, data, holdout, note FROM versions ORDER BY created_at, name")
            .map_err(db_err(&p))?;
        let rows = stmt.query_map([], Self::row).map_err(db_err(&p))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_err(&p))
    }

    pub fn show(&self, name: &str) -> Result<VersionRow> {
        let p = self.path();
        self.conn
            .query_row(
                "SELECT name, parent, created_at, status, config, data, holdout, note FROM versions WHERE name = ?1",
                [name],
                Self::row,
            )
            .optional()
            .map_err(db_err(&p))?
            .ok_or_else(|| Error::Input(format!("no version {name:?} in {}", self.dir.display())))
    }

    pub fn record_run(&self, run: &RunRecord) -> Result<i64> {
        let p = self.path();
        self.conn
            .execute(
                "INSERT INTO runs (started_at, finished_at, outcome, reason, candidate, production_before, candidate_score, production_score, quarantined) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![run.started_at, run.finished_at, run.outcome, run.reason, run.candidate, run.production_before, run.candidate_score, run.production_score, run.quarantined.to_string()],
            )
            .map_err(db_err(&p))?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn runs(&self) -> Result<Vec<RunRecord>> {
        let p = self.path();
        let mut stmt = self
            .conn
            .prepare("SELECT id, started_at, finished_at, outcome, reason, candidate, production_before, candidate_score, production_score, quarantined FROM runs ORDER BY id")
            .map_err(db_err(&p))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(RunRecord {
                    id: r.get(0)?,
                    started_at: r.get(1)?,
                    finished_at: r.get(2)?,
                    outcome: r.get(3)?,
                    reason: r.get(4)?,
                    candidate: r.get(5)?,
                    production_before: r.get(6)?,
                    candidate_score: r.get(7)?,
                    production_score: r.get(8)?,
                    quarantined: serde_json::from_str(&r.get::<_, String>(9)?).unwrap_or_default(),
                })
            })
            .map_err(db_err(&p))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_err(&p))
    }
}

/// Copies the files of a model folder (and its sub-folders one level down).
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::file(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::file(from, e))? {
        let path = entry.map_err(|e| Error::file(from, e))?.path();
        let dest = to.join(path.file_name().expect("entry"));
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "resume") {
                continue;
            }
            copy_dir(&path, &dest)?;
        } else {
            std::fs::copy(&path, &dest).map_err(|e| Error::file(&path, e))?;
        }
    }
    Ok(())
}
