//! Reading record files: a JSON array or JSON lines, with typed field access
//! that names the record and field, and an option to skip bad records.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{DatasetError, Result};

/// What to do with a malformed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBadRecord {
    /// Stop with an error naming the record and field.
    #[default]
    Fail,
    /// Skip it and report it in [`Loaded::skipped`].
    Skip,
}

/// Records read from a file, with the ones skipped and why.
#[derive(Debug)]
pub struct Loaded<T> {
    pub records: Vec<T>,
    pub skipped: Vec<DatasetError>,
}

/// The raw JSON records of a file: a top-level array, or one object per line.
pub fn read_json_records(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| DatasetError::io(path, e))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(&text).map_err(|e| DatasetError::Json {
            path: path.to_path_buf(),
            line: Some(e.line()),
            message: e.to_string(),
        })?;
        match v {
            Value::Array(a) => Ok(a),
            _ => unreachable!("starts with ["),
        }
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| DatasetError::Json {
                    path: path.to_path_buf(),
                    line: Some(i + 1),
                    message: e.to_string(),
                })
            })
            .collect()
    }
}

/// Parse every record with `parse`, failing or skipping bad ones.
pub fn parse_all<T>(
    path: &Path,
    values: &[Value],
    on_bad: OnBadRecord,
    parse: impl Fn(&Rec<'_>) -> Result<T>,
) -> Result<Loaded<T>> {
    let mut records = Vec::with_capacity(values.len());
    let mut skipped = Vec::new();
    for (index, value) in values.iter().enumerate() {
        let rec = Rec { path, index, value };
        match parse(&rec) {
            Ok(r) => records.push(r),
            Err(e) if on_bad == OnBadRecord::Skip => skipped.push(e),
            Err(e) => return Err(e),
        }
    }
    Ok(Loaded { records, skipped })
}

/// One JSON record with its file and index, for error messages.
pub struct Rec<'a> {
    pub path: &'a Path,
    pub index: usize,
    pub value: &'a Value,
}

impl Rec<'_> {
    pub fn err(&self, field: &str, message: impl Into<String>) -> DatasetError {
        DatasetError::Record {
            path: PathBuf::from(self.path),
            index: self.index,
            field: field.into(),
            message: message.into(),
        }
    }

    /// The value at a dotted path, e.g. `requested_rewrite.target_new.str`.
    pub fn get(&self, field: &str) -> Option<&Value> {
        let mut v = self.value;
        for part in field.split('.') {
            v = v.get(part)?;
        }
        (!v.is_null()).then_some(v)
    }

    pub fn str(&self, field: &str) -> Result<String> {
        match self.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(self.err(field, "expected a string")),
            None => Err(self.err(field, "missing")),
        }
    }

    pub fn opt_str(&self, field: &str) -> Result<Option<String>> {
        match self.get(field) {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.err(field, "expected a string")),
            None => Ok(None),
        }
    }

    pub fn non_empty_str(&self, field: &str) -> Result<String> {
        let s = self.str(field)?;
        if s.trim().is_empty() {
            return Err(self.err(field, "is empty"));
        }
        Ok(s)
    }

    /// A non-empty string field that must contain `subject`.
    pub fn text_with_subject(&self, field: &str, subject: &str) -> Result<String> {
        let text = self.non_empty_str(field)?;
        if !text.contains(subject) {
            return Err(self.err(field, format!("does not contain the subject {subject:?}")));
        }
        Ok(text)
    }

    pub fn u64(&self, field: &str) -> Result<u64> {
        match self.get(field) {
            Some(v) => v
                .as_u64()
                .ok_or_else(|| self.err(field, "expected a non-negative integer")),
            None => Err(self.err(field, "missing")),
        }
    }

    /// A list of strings; absent means empty.
    pub fn str_list(&self, field: &str) -> Result<Vec<String>> {
        match self.get(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(String::from)
                        .ok_or_else(|| self.err(&format!("{field}[{i}]"), "expected a string"))
                })
                .collect(),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(_) => Err(self.err(field, "expected a list of strings")),
        }
    }
}
