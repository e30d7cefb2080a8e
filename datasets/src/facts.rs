//! Fact sets: CounterFact (ROME's nested form and EasyEdit's flat form),
//! ROME's `known_1000.json`, zsRE (MEND/ROME schema), and user facts (CSV/JSONL).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, Result};
use crate::records::{parse_all, read_json_records, Loaded, OnBadRecord, Rec};

/// One CounterFact rewrite case, in ROME's terms. Targets are stored as in the
/// file (no leading space); evaluation tokenizes them as `" " + target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CounterFactCase {
    pub case_id: u64,
    pub subject: String,
    /// The rewrite prompt with `{}` where the subject goes.
    pub prompt_template: String,
    pub relation_id: Option<String>,
    pub target_new: String,
    pub target_true: String,
    pub paraphrase_prompts: Vec<String>,
    pub neighborhood_prompts: Vec<String>,
    /// The answer expected on neighbourhood prompts (ROME: `target_true`).
    pub neighborhood_target: String,
    pub attribute_prompts: Vec<String>,
    pub generation_prompts: Vec<String>,
}

impl CounterFactCase {
    /// The rewrite prompt with the subject filled in.
    pub fn prompt(&self) -> String {
        self.prompt_template.replacen("{}", &self.subject, 1)
    }
}

/// Load CounterFact in either form; the form is detected per record.
pub fn load_counterfact(path: &Path, on_bad: OnBadRecord) -> Result<Loaded<CounterFactCase>> {
    let values = read_json_records(path)?;
    parse_all(path, &values, on_bad, |r| {
        if r.get("requested_rewrite").is_some() {
            counterfact_rome(r)
        } else {
            counterfact_easyedit(r)
        }
    })
}

fn counterfact_rome(r: &Rec<'_>) -> Result<CounterFactCase> {
    let template = r.non_empty_str("requested_rewrite.prompt")?;
    if !template.contains("{}") {
        return Err(r.err("requested_rewrite.prompt", "has no `{}` for the subject"));
    }
    let target_true = r.non_empty_str("requested_rewrite.target_true.str")?;
    Ok(CounterFactCase {
        case_id: r.u64("case_id")?,
        subject: r.non_empty_str("requested_rewrite.subject")?,
        prompt_template: template,
        relation_id: r.opt_str("requested_rewrite.relation_id")?,
        target_new: r.non_empty_str("requested_rewrite.target_new.str")?,
        neighborhood_target: target_true.clone(),
        target_true,
        paraphrase_prompts: r.str_list("paraphrase_prompts")?,
        neighborhood_prompts: r.str_list("neighborhood_prompts")?,
        attribute_prompts: r.str_list("attribute_prompts")?,
        generation_prompts: r.str_list("generation_prompts")?,
    })
}

fn counterfact_easyedit(r: &Rec<'_>) -> Result<CounterFactCase> {
    let subject = r.non_empty_str("subject")?;
    let prompt = r.text_with_subject("prompt", &subject)?;
    let target_true = r.non_empty_str("ground_truth")?;
    Ok(CounterFactCase {
        case_id: r.u64("case_id")?,
        prompt_template: prompt.replacen(&subject, "{}", 1),
        subject,
        relation_id: r.opt_str("relation_id")?,
        target_new: r.non_empty_str("target_new")?,
        neighborhood_target: r
            .opt_str("locality_ground_truth")?
            .unwrap_or_else(|| target_true.clone()),
        target_true,
        paraphrase_prompts: r.str_list("rephrase_prompt")?,
        neighborhood_prompts: r.str_list("locality_prompt")?,
        attribute_prompts: Vec::new(),
        generation_prompts: Vec::new(),
    })
}

/// One fact of ROME's `known_1000.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnownFact {
    pub known_id: u64,
    pub subject: String,
    pub attribute: String,
    pub template: String,
    /// GPT-2 XL's greedy continuation, as recorded by ROME.
    pub prediction: String,
    pub prompt: String,
    pub relation_id: String,
}

pub fn load_known(path: &Path, on_bad: OnBadRecord) -> Result<Loaded<KnownFact>> {
    let values = read_json_records(path)?;
    parse_all(path, &values, on_bad, |r| {
        let subject = r.non_empty_str("subject")?;
        let prompt = r.text_with_subject("prompt", &subject)?;
        Ok(KnownFact {
            known_id: r.u64("known_id")?,
            subject,
            attribute: r.non_empty_str("attribute")?,
            template: r.str("template")?,
            prediction: r.opt_str("prediction")?.unwrap_or_default(),
            prompt,
            relation_id: r.non_empty_str("relation_id")?,
        })
    })
}

/// One zsRE question in the MEND/ROME schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZsreRecord {
    /// The record's index in its file.
    pub case_id: u64,
    pub subject: String,
    pub src: String,
    pub pred: String,
    pub rephrase: String,
    /// The new answer to edit in (empty in a few records of the MEND split: see [`ZsreRecord::is_editable`]).
    pub alt: String,
    pub answers: Vec<String>,
    pub loc: String,
    pub loc_ans: String,
}

impl ZsreRecord {
    /// Whether the record names a new answer to edit in.
    pub fn is_editable(&self) -> bool {
        !self.alt.trim().is_empty()
    }
}

pub fn load_zsre(path: &Path, on_bad: OnBadRecord) -> Result<Loaded<ZsreRecord>> {
    let values = read_json_records(path)?;
    parse_all(path, &values, on_bad, |r| {
        let subject = r.non_empty_str("subject")?;
        let src = r.text_with_subject("src", &subject)?;
        Ok(ZsreRecord {
            case_id: r.index as u64,
            subject,
            src,
            pred: r.opt_str("pred")?.unwrap_or_default(),
            rephrase: r.non_empty_str("rephrase")?,
            alt: r.str("alt")?,
            answers: r.str_list("answers")?,
            loc: r.str("loc")?,
            loc_ans: r.str("loc_ans")?,
        })
    })
}

/// A user's fact: a subject, a prompt containing it (or a template with `{}`), and the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserFact {
    pub subject: String,
    pub prompt: String,
    pub target: String,
    pub relation: Option<String>,
}

fn user_fact(r: &Rec<'_>) -> Result<UserFact> {
    let subject = r.non_empty_str("subject")?;
    let raw = r.non_empty_str("prompt")?;
    let prompt = if raw.contains("{}") {
        raw.replacen("{}", &subject, 1)
    } else {
        raw
    };
    if !prompt.contains(&subject) {
        return Err(r.err(
            "prompt",
            format!("does not contain the subject {subject:?}"),
        ));
    }
    Ok(UserFact {
        subject,
        prompt,
        target: r.non_empty_str("target")?,
        relation: r.opt_str("relation")?,
    })
}

/// User facts from `.csv` (header `subject,prompt,target[,relation]`) or `.json`/`.jsonl`.
pub fn load_user_facts(path: &Path, on_bad: OnBadRecord) -> Result<Loaded<UserFact>> {
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let values = if is_csv {
        read_csv_records(path)?
    } else {
        read_json_records(path)?
    };
    parse_all(path, &values, on_bad, user_fact)
}

/// CSV rows as JSON objects keyed by the header.
pub fn read_csv_records(path: &Path) -> Result<Vec<serde_json::Value>> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| DatasetError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| DatasetError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let mut out = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.map_err(|e| DatasetError::Record {
            path: path.to_path_buf(),
            index: i,
            field: "(row)".into(),
            message: e.to_string(),
        })?;
        let obj: serde_json::Map<String, serde_json::Value> = header
            .iter()
            .zip(row.iter())
            .map(|(h, v)| (h.clone(), serde_json::Value::String(v.to_string())))
            .collect();
        out.push(serde_json::Value::Object(obj));
    }
    Ok(out)
}

/// Any fact file as `subject / prompt / target` triples, the form that probing
/// and tracing take. known_1000 (`known_id`: target = `attribute`), CounterFact
/// (`requested_rewrite` or EasyEdit's `ground_truth`: target = the true answer)
/// and user facts (CSV/JSON/JSONL) are told apart by their fields.
pub fn load_fact_set(path: &Path, on_bad: OnBadRecord) -> Result<Loaded<UserFact>> {
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if is_csv {
        return load_user_facts(path, on_bad);
    }
    let values = read_json_records(path)?;
    let first = values.first();
    let has = |field: &str| first.is_some_and(|v| v.get(field).is_some());
    if has("known_id") {
        let loaded = load_known(path, on_bad)?;
        return Ok(Loaded {
            records: loaded
                .records
                .into_iter()
                .map(|k| UserFact {
                    subject: k.subject,
                    prompt: k.prompt,
                    target: k.attribute,
                    relation: Some(k.relation_id),
                })
                .collect(),
            skipped: loaded.skipped,
        });
    }
    if has("requested_rewrite") || has("ground_truth") {
        let loaded = load_counterfact(path, on_bad)?;
        return Ok(Loaded {
            records: loaded
                .records
                .into_iter()
                .map(|c| UserFact {
                    prompt: c.prompt(),
                    subject: c.subject,
                    target: c.target_true,
                    relation: c.relation_id,
                })
                .collect(),
            skipped: loaded.skipped,
        });
    }
    load_user_facts(path, on_bad)
}
