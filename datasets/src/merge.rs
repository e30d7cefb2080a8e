//! Sharded studies: a run made with `--shard K/N` took every N-th case; the
//! shards' runs are joined back into one run here. Per-case tables are
//! interleaved in shard order (shard K's i-th row is the study's row
//! i·N + K − 1, as the unsharded run would have written it where no case was
//! skipped), `summary` tables are recomputed from the joined `cases`, and
//! tables that only a whole run can compute (curves, averaged effects) are
//! refused rather than joined wrongly.

use polars::prelude::*;
use serde_json::Value;

use crate::error::{DatasetError, Result};
use crate::store::{RunInfo, RunParams, RunStore};
use crate::summary::{mean_ci, MetricSummary};

/// A shard, as `K/N` (1-based K).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// `K/N` with 1 ≤ K ≤ N.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || {
            DatasetError::Store(format!(
                "--shard {text:?}: write K/N with 1 <= K <= N, e.g. 1/4"
            ))
        };
        let (k, n) = text.split_once('/').ok_or_else(bad)?;
        let index: usize = k.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || count == 0 || index > count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }

    /// Whether the item at `position` (0-based) belongs to this shard.
    pub fn takes(&self, position: usize) -> bool {
        position % self.count == self.index - 1
    }

    /// This shard's share of the first `n` items.
    pub fn share_of(&self, n: usize) -> usize {
        (n + self.count - self.index) / self.count
    }

    /// The items of this shard, in order.
    pub fn select<T>(&self, items: Vec<T>) -> Vec<T> {
        items
            .into_iter()
            .enumerate()
            .filter(|(i, _)| self.takes(*i))
            .map(|(_, x)| x)
            .collect()
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Tables that a shard cannot compute alone.
const WHOLE_RUN_TABLES: [&str; 4] = ["curve", "effects", "effects_by_group", "average"];

fn shard_of(run: &RunInfo) -> Result<Shard> {
    let text = run
        .params
        .hyperparameters
        .get("shard")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            DatasetError::Store(format!(
                "run {} was not made with --shard K/N, so it is not a shard",
                run.id
            ))
        })?;
    Shard::parse(text)
}

/// The hyperparameters without the shard, for comparing shards of one study.
pub fn study(params: &RunParams) -> Value {
    let mut h = params.hyperparameters.clone();
    if let Some(m) = h.as_object_mut() {
        for k in [
            "shard",
            "skipped",
            "notes",
            "S",
            "facts_traced",
            "facts_skipped",
        ] {
            m.remove(k);
        }
    }
    h
}

/// The runs `ids` as the shards of one study, in shard order: each shard of a
/// `N`-way study once, all finished, of one kind, model, data and
/// hyperparameters (the shard aside), with the same tables.
pub fn check_shards(store: &RunStore, ids: &[String]) -> Result<Vec<(Shard, RunInfo)>> {
    if ids.len() < 2 {
        return Err(DatasetError::Store(
            "name the runs of every shard (at least two)".into(),
        ));
    }
    let runs = ids
        .iter()
        .map(|id| store.find(id))
        .collect::<Result<Vec<_>>>()?;
    let mut shards: Vec<(Shard, RunInfo)> = runs
        .into_iter()
        .map(|r| shard_of(&r).map(|s| (s, r)))
        .collect::<Result<_>>()?;
    shards.sort_by_key(|(s, _)| s.index);
    let (first_shard, first) = (shards[0].0, shards[0].1.clone());
    for (i, (s, r)) in shards.iter().enumerate() {
        if s.count != shards.len() || s.index != i + 1 {
            return Err(DatasetError::Store(format!(
                "the runs are shards {} of a {}-way study: give each of 1/{n} .. {n}/{n} once",
                shards
                    .iter()
                    .map(|(s, _)| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                first_shard.count,
                n = first_shard.count
            )));
        }
        if !r.finished {
            return Err(DatasetError::Store(format!(
                "run {} is unfinished (its writer did not finish)",
                r.id
            )));
        }
        let same = r.kind == first.kind
            && r.params.model_hash == first.params.model_hash
            && r.params.dataset == first.params.dataset
            && study(&r.params) == study(&first.params);
        if !same {
            return Err(DatasetError::Store(format!(
                "run {} is not a shard of the same study as run {}: kind, model, data or \
                 hyperparameters differ",
                r.id, first.id
            )));
        }
        if r.tables != first.tables {
            return Err(DatasetError::Store(format!(
                "run {} has tables [{}] but run {} has [{}]",
                r.id,
                r.tables.join(", "),
                first.id,
                first.tables.join(", ")
            )));
        }
    }
    Ok(shards)
}

/// Join the shards `ids` (every shard of one study, each once) into a new run
/// of the same kind; returns it. Traces, whose averaged effects need the
/// analysis crate, are merged by `engram_analysis::jobs::trace::merge_trace_shards`.
pub fn merge_shards(store: &RunStore, ids: &[String]) -> Result<RunInfo> {
    let shards = check_shards(store, ids)?;
    let first = shards[0].1.clone();
    let first = &first;
    if first.kind == "probe" {
        return merge_by_layer(store, ids, &shards);
    }
    if let Some(t) = first
        .tables
        .iter()
        .find(|t| WHOLE_RUN_TABLES.contains(&t.as_str()))
    {
        return Err(DatasetError::Store(format!(
            "run {} has a `{t}` table, which only a whole run can compute; shards do not join into it",
            first.id
        )));
    }
    let mut params = first.params.clone();
    if let Some(m) = params.hyperparameters.as_object_mut() {
        m.remove("shard");
        m.insert("merged_from".into(), Value::from(ids.to_vec()));
        // Each shard's skipped cases and notes, joined.
        for key in ["skipped", "notes"] {
            let joined: Vec<Value> = shards
                .iter()
                .flat_map(|(_, r)| {
                    r.params
                        .hyperparameters
                        .get(key)
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                })
                .collect();
            if !joined.is_empty() {
                m.insert(key.into(), Value::from(joined));
            }
        }
    }
    let mut tables: Vec<(String, DataFrame)> = Vec::new();
    for name in first.tables.iter().filter(|t| *t != "summary") {
        let frames = shards
            .iter()
            .map(|(_, r)| store.read_table(r, name))
            .collect::<Result<Vec<_>>>()?;
        tables.push((name.clone(), interleave(&frames)?));
    }
    params.record_ids = shards
        .iter()
        .map(|(_, r)| r.params.record_ids.clone())
        .collect::<Vec<_>>()
        .pipe_interleave();
    let run = store.create(&first.kind, params)?;
    for (name, df) in &mut tables {
        run.write_table(name, df)?;
    }
    if first.tables.iter().any(|t| t == "summary") {
        let metrics: Vec<String> =
            crate::table::str_column(&store.read_table(first, "summary")?, "metric")?;
        let cases = tables
            .iter()
            .find(|(n, _)| n == "cases")
            .map(|(_, df)| df)
            .ok_or_else(|| {
                DatasetError::Store("the shards have a summary but no cases table".into())
            })?;
        let summary: Vec<MetricSummary> = metrics
            .iter()
            .map(|m| Ok(mean_ci(m, &crate::table::f64_column(cases, m)?)))
            .collect::<Result<_>>()?;
        run.write_rows("summary", &summary)?;
    }
    run.finish()
}

/// Probe shards split the layers: their tables joined and ordered by layer,
/// and the figure drawn again from the joined curve.
fn merge_by_layer(
    store: &RunStore,
    ids: &[String],
    shards: &[(Shard, RunInfo)],
) -> Result<RunInfo> {
    let first = &shards[0].1;
    let mut params = first.params.clone();
    if let Some(m) = params.hyperparameters.as_object_mut() {
        m.remove("shard");
        m.insert("merged_from".into(), Value::from(ids.to_vec()));
    }
    let run = store.create(&first.kind, params.clone())?;
    for name in &first.tables {
        let mut joined: Option<DataFrame> = None;
        for (_, r) in shards {
            let df = store.read_table(r, name)?;
            match &mut joined {
                None => joined = Some(df),
                Some(j) => {
                    j.vstack_mut(&df)?;
                }
            }
        }
        let Some(df) = joined else { continue };
        let mut df = if df.get_column_names().iter().any(|c| c.as_str() == "layer") {
            df.sort(
                ["layer"],
                SortMultipleOptions::default().with_maintain_order(true),
            )?
        } else {
            df
        };
        run.write_table(name, &mut df)?;
        if name == "curve" {
            let points: Vec<crate::figures::CurvePoint> = crate::table::from_frame(&df)?;
            let fig = params.hyperparameters.get("figure");
            let text = |k: &str| {
                fig.and_then(|f| f.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            for ext in ["svg", "png"] {
                crate::figures::curve_lines(
                    &points,
                    &text("title"),
                    &text("y"),
                    &run.dir().join(format!("probe.{ext}")),
                )?;
            }
        }
    }
    run.finish()
}

/// Rows of `frames` in turn: the first of each, then the second of each, …
fn interleave(frames: &[DataFrame]) -> Result<DataFrame> {
    let longest = frames.iter().map(DataFrame::height).max().unwrap_or(0);
    let mut out: Option<DataFrame> = None;
    for i in 0..longest {
        for f in frames.iter().filter(|f| i < f.height()) {
            let row = f.slice(i as i64, 1);
            match &mut out {
                None => out = Some(row),
                Some(o) => {
                    o.vstack_mut(&row)?;
                }
            }
        }
    }
    match out {
        Some(o) => Ok(o),
        None => Ok(frames.first().cloned().unwrap_or_default()),
    }
}

/// Interleave lists the way [`interleave`] does tables.
trait PipeInterleave {
    fn pipe_interleave(self) -> Vec<String>;
}

impl PipeInterleave for Vec<Vec<String>> {
    fn pipe_interleave(self) -> Vec<String> {
        let longest = self.iter().map(Vec::len).max().unwrap_or(0);
        (0..longest)
            .flat_map(|i| self.iter().filter_map(move |v| v.get(i).cloned()))
            .collect()
    }
}
