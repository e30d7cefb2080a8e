//! Typed rows ⇄ polars DataFrames. Rows are plain `Serialize`/`Deserialize`
//! structs (the source of truth in code); columns follow the struct's fields.
//! Numbers become f64 or i64, flags bool, text String; nested values are stored as JSON text.

use polars::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{DatasetError, Result};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Float,
    Bool,
    Str,
}

fn kind_of(v: &Value) -> Option<Kind> {
    match v {
        Value::Null => None,
        Value::Bool(_) => Some(Kind::Bool),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(Kind::Int),
        Value::Number(_) => Some(Kind::Float),
        _ => Some(Kind::Str),
    }
}

/// Build a DataFrame from rows; column order is the struct's field order.
pub fn to_frame<T: Serialize>(rows: &[T]) -> Result<DataFrame> {
    let objects: Vec<Map<String, Value>> = rows
        .iter()
        .map(|r| match serde_json::to_value(r) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(DatasetError::Store("rows must serialize to objects".into())),
            Err(e) => Err(DatasetError::Store(e.to_string())),
        })
        .collect::<Result<_>>()?;
    if objects.is_empty() {
        return Ok(DataFrame::empty());
    }
    // Every key of every row, in first-seen order: a row may lack a measure
    // (null there) that later rows have.
    let mut names: Vec<String> = Vec::new();
    for o in &objects {
        for k in o.keys() {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    let mut columns = Vec::with_capacity(names.len());
    for name in &names {
        let values: Vec<&Value> = objects
            .iter()
            .map(|o| o.get(name).unwrap_or(&Value::Null))
            .collect();
        // Integers mixed with floats are floats; anything else mixed is text.
        let mut kind = None;
        for v in &values {
            kind = match (kind, kind_of(v)) {
                (k, None) => k,
                (None, k) => k,
                (Some(Kind::Int), Some(Kind::Float)) | (Some(Kind::Float), Some(Kind::Int)) => {
                    Some(Kind::Float)
                }
                (Some(a), Some(b)) if a == b => Some(a),
                _ => Some(Kind::Str),
            };
        }
        let col = match kind.unwrap_or(Kind::Str) {
            Kind::Int => Column::new(
                name.as_str().into(),
                values.iter().map(|v| v.as_i64()).collect::<Vec<_>>(),
            ),
            Kind::Float => Column::new(
                name.as_str().into(),
                values.iter().map(|v| v.as_f64()).collect::<Vec<_>>(),
            ),
            Kind::Bool => Column::new(
                name.as_str().into(),
                values.iter().map(|v| v.as_bool()).collect::<Vec<_>>(),
            ),
            Kind::Str => Column::new(
                name.as_str().into(),
                values
                    .iter()
                    .map(|v| match v {
                        Value::Null => None,
                        Value::String(s) => Some(s.clone()),
                        other => Some(other.to_string()),
                    })
                    .collect::<Vec<_>>(),
            ),
        };
        columns.push(col);
    }
    Ok(DataFrame::new(objects.len(), columns)?)
}

/// Rows back from a DataFrame written by [`to_frame`].
pub fn from_frame<T: DeserializeOwned>(df: &DataFrame) -> Result<Vec<T>> {
    let cols = df.columns();
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let mut obj = Map::new();
        for c in cols {
            let v = match c.get(i)? {
                AnyValue::Null => Value::Null,
                AnyValue::Boolean(b) => Value::Bool(b),
                AnyValue::Int64(x) => Value::from(x),
                AnyValue::Int32(x) => Value::from(x),
                AnyValue::UInt64(x) => Value::from(x),
                AnyValue::UInt32(x) => Value::from(x),
                AnyValue::Float64(x) => Value::from(x),
                AnyValue::Float32(x) => Value::from(x as f64),
                AnyValue::String(s) => text_value(s),
                AnyValue::StringOwned(s) => text_value(s.as_str()),
                other => Value::String(other.to_string()),
            };
            obj.insert(c.name().to_string(), v);
        }
        out.push(
            serde_json::from_value(Value::Object(obj))
                .map_err(|e| DatasetError::Store(format!("row {i}: {e}")))?,
        );
    }
    Ok(out)
}

/// Text columns may hold JSON written for nested values; plain text stays text.
fn text_value(s: &str) -> Value {
    if s.starts_with('[') || s.starts_with('{') {
        if let Ok(v) = serde_json::from_str(s) {
            return v;
        }
    }
    Value::String(s.to_string())
}

/// A numeric column as f64 values (nulls dropped).
pub fn f64_column(df: &DataFrame, name: &str) -> Result<Vec<f64>> {
    let c = df.column(name)?.cast(&DataType::Float64)?;
    Ok(c.f64()?.iter().flatten().collect())
}

/// A column as text, one entry per row.
pub fn str_column(df: &DataFrame, name: &str) -> Result<Vec<String>> {
    let c = df.column(name)?.cast(&DataType::String)?;
    Ok(c.str()?
        .iter()
        .map(|s| s.unwrap_or("").to_string())
        .collect())
}
