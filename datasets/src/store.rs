//! The run store: every analysis or edit run is a directory
//! `runs/<kind>/<timestamp>-<short-id>/` holding `params.json` and parquet tables.
//!
//! Writes are atomic (temporary file, fsync, rename), so a killed process never
//! leaves a half-written table: the catalogue lists only complete `.parquet` files.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, Result};

/// What a run was: enough to reproduce it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RunParams {
    /// The model's path or hub id.
    pub model: String,
    /// Content hash of the model files (`engram_model::source::model_hash`).
    pub model_hash: String,
    /// Method hyperparameters, as the method names them.
    pub hyperparameters: serde_json::Value,
    pub dataset: Option<String>,
    pub record_ids: Vec<String>,
    pub seed: Option<u64>,
    pub engram_version: String,
    pub device: String,
}

/// A run as listed by the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// `<timestamp>-<short-id>`
    pub id: String,
    pub kind: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub params: RunParams,
    /// Complete tables, by name (without `.parquet`).
    pub tables: Vec<String>,
    /// Whether the writer called [`RunWriter::finish`].
    pub finished: bool,
    /// What is wrong with a broken run (its `params.json` missing or
    /// unreadable); `None` for a sound one. A broken run is listed, never hidden.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct ParamsFile {
    id: String,
    kind: String,
    created: u64,
    params: RunParams,
}

/// A directory of runs.
#[derive(Debug, Clone)]
pub struct RunStore {
    root: PathBuf,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl RunStore {
    /// Open (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| DatasetError::io(&root, e))?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Start a run of `kind` (e.g. `trace`, `rome`, `eval-counterfact`).
    pub fn create(&self, kind: &str, params: RunParams) -> Result<RunWriter> {
        if kind.is_empty()
            || !kind
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(DatasetError::Store(format!("bad run kind {kind:?}")));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let seed = now.as_nanos() as u64
            ^ ((std::process::id() as u64) << 32)
            ^ COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{:06x}", timestamp(now.as_secs()), mix(seed) & 0xff_ffff);
        let dir = self.root.join(kind).join(&id);
        fs::create_dir_all(&dir).map_err(|e| DatasetError::io(&dir, e))?;
        let file = ParamsFile {
            id: id.clone(),
            kind: kind.into(),
            created: now.as_secs(),
            params,
        };
        let json =
            serde_json::to_vec_pretty(&file).map_err(|e| DatasetError::Store(e.to_string()))?;
        write_atomic(&dir.join("params.json"), &json)?;
        Ok(RunWriter {
            dir,
            id,
            kind: kind.into(),
        })
    }

    /// Every run, oldest first.
    pub fn list(&self) -> Result<Vec<RunInfo>> {
        let mut runs = Vec::new();
        let kinds = match fs::read_dir(&self.root) {
            Ok(k) => k,
            Err(e) => return Err(DatasetError::io(&self.root, e)),
        };
        for kind in kinds.flatten() {
            if !kind.path().is_dir() {
                continue;
            }
            for run in fs::read_dir(kind.path())
                .map_err(|e| DatasetError::io(kind.path(), e))?
                .flatten()
            {
                if run.path().is_dir() {
                    runs.push(read_info(&run.path()));
                }
            }
        }
        runs.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(runs)
    }

    /// A run by its id or a unique prefix or suffix of it.
    pub fn find(&self, id: &str) -> Result<RunInfo> {
        let runs = self.list()?;
        if let Some(exact) = runs.iter().find(|r| r.id == id) {
            return Ok(exact.clone());
        }
        let hits: Vec<&RunInfo> = runs
            .iter()
            .filter(|r| !id.is_empty() && (r.id.starts_with(id) || r.id.ends_with(id)))
            .collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(DatasetError::Store(format!(
                "no run {id:?} in {}",
                self.root.display()
            ))),
            many => Err(DatasetError::Store(format!(
                "{id:?} matches {} runs: {}",
                many.len(),
                many.iter()
                    .map(|r| r.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Read a table of a run back as a DataFrame.
    pub fn read_table(&self, run: &RunInfo, table: &str) -> Result<DataFrame> {
        let path = run.dir.join(format!("{table}.parquet"));
        if !path.is_file() {
            return Err(DatasetError::Store(format!(
                "run {} has no table {table:?} (tables: {})",
                run.id,
                run.tables.join(", ")
            )));
        }
        read_parquet(&path)
    }
}

/// A run directory as the catalogue lists it: from its `params.json`, or, where
/// that is missing or unreadable, from its path, with the problem said.
fn read_info(dir: &Path) -> RunInfo {
    let mut tables: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    (!name.starts_with('.'))
                        .then(|| name.strip_suffix(".parquet").map(String::from))?
                })
                .collect()
        })
        .unwrap_or_default();
    tables.sort();
    let finished = dir.join("finished").is_file();
    let params_path = dir.join("params.json");
    let parsed = fs::read_to_string(&params_path)
        .map_err(|e| format!("{}: {e}", params_path.display()))
        .and_then(|text| {
            serde_json::from_str::<ParamsFile>(&text)
                .map_err(|e| format!("{}: invalid: {e}", params_path.display()))
        });
    match parsed {
        Ok(p) => RunInfo {
            id: p.id,
            kind: p.kind,
            created: p.created,
            params: p.params,
            tables,
            finished,
            problem: None,
            dir: dir.to_path_buf(),
        },
        Err(problem) => RunInfo {
            id: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            kind: dir
                .parent()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            created: fs::metadata(dir)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
            params: RunParams::default(),
            tables,
            finished,
            problem: Some(problem),
            dir: dir.to_path_buf(),
        },
    }
}

/// Writes the tables of one run.
#[derive(Debug)]
pub struct RunWriter {
    dir: PathBuf,
    id: String,
    kind: String,
}

impl RunWriter {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write `df` as `<name>.parquet`, atomically.
    pub fn write_table(&self, name: &str, df: &mut DataFrame) -> Result<PathBuf> {
        if name.is_empty() || name.starts_with('.') || name.contains('/') {
            return Err(DatasetError::Store(format!("bad table name {name:?}")));
        }
        let path = self.dir.join(format!("{name}.parquet"));
        let tmp = self.dir.join(format!(
            ".{name}.parquet.tmp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut bytes = Vec::new();
        ParquetWriter::new(&mut bytes).finish(df)?;
        {
            let mut file = File::create(&tmp).map_err(|e| DatasetError::io(&tmp, e))?;
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .map_err(|e| DatasetError::io(&tmp, e))?;
        }
        // The checksum first: a table without one is read unverified, never
        // the other way round.
        write_atomic(&checksum_path(&path), checksum_line(&bytes).as_bytes())?;
        fs::rename(&tmp, &path).map_err(|e| DatasetError::io(&path, e))?;
        Ok(path)
    }

    /// Typed rows as a table.
    pub fn write_rows<T: Serialize>(&self, name: &str, rows: &[T]) -> Result<PathBuf> {
        let mut df = crate::table::to_frame(rows)?;
        self.write_table(name, &mut df)
    }

    /// Mark the run complete.
    pub fn finish(self) -> Result<RunInfo> {
        write_atomic(&self.dir.join("finished"), b"")?;
        let info = read_info(&self.dir);
        match &info.problem {
            Some(p) => Err(DatasetError::Store(format!("run {}: {p}", self.id))),
            None => Ok(info),
        }
    }
}

/// Write bytes to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    {
        let mut f = File::create(&tmp).map_err(|e| DatasetError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| DatasetError::io(&tmp, e))?;
        f.sync_all().map_err(|e| DatasetError::io(&tmp, e))?;
    }
    fs::rename(&tmp, path).map_err(|e| DatasetError::io(path, e))
}

/// A parquet file as a DataFrame; a corrupt file's error names it. A table
/// the store wrote is checked against its checksum before it is decoded (a
/// corrupt page can make the decoder abort on a huge allocation).
pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let bytes = fs::read(path).map_err(|e| DatasetError::io(path, e))?;
    if let Ok(want) = fs::read_to_string(checksum_path(path)) {
        let have = checksum_line(&bytes);
        if want.trim() != have.trim() {
            return Err(DatasetError::Format {
                path: path.to_path_buf(),
                message: format!(
                    "changed since Engram wrote it (checksum {}, now {}): the table is corrupt",
                    want.trim(),
                    have.trim()
                ),
            });
        }
    }
    ParquetReader::new(std::io::Cursor::new(bytes))
        .finish()
        .map_err(|e| DatasetError::Format {
            path: path.to_path_buf(),
            message: format!("not a readable parquet table: {e}"),
        })
}

/// `.<file>.sum` beside a table: its length and 64-bit FNV-1a checksum.
pub fn checksum_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.sum"))
}

/// `fnv1a64 <hex> <length>` of `bytes`.
pub fn checksum_line(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("fnv1a64 {h:016x} {}\n", bytes.len())
}

pub fn write_csv(df: &mut DataFrame, path: &Path) -> Result<()> {
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf).finish(df)?;
    write_atomic(path, &buf)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
fn timestamp(secs: u64) -> String {
    let (y, m, d, h, min, s) = utc(secs);
    format!("{y:04}{m:02}{d:02}T{h:02}{min:02}{s:02}Z")
}

/// `YYYY-MM-DD HH:MM` in UTC, as the Runs panel shows a run's time.
pub fn utc_minutes(secs: u64) -> String {
    let (y, m, d, h, min, _) = utc(secs);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{min:02}")
}

/// (year, month, day, hour, minute, second) in UTC of seconds since the epoch.
fn utc(secs: u64) -> (i64, i64, i64, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(super::timestamp(0), "19700101T000000Z");
        assert_eq!(super::timestamp(1_795_000_000), "20261118T110640Z");
        assert_eq!(super::timestamp(951_782_400), "20000229T000000Z");
    }
}
