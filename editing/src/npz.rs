//! ROME/MEMIT's statistics files: numpy `.npz` archives (a zip of `.npy`
//! arrays) as written by `numpy.savez` in ROME's `layer_stats`:
//! `mom2.mom2` float32 `[d, d]` (Σ k kᵀ over the keys), `mom2.count` int64,
//! `mom2.constructor`, `constructor` and `sample_size`. ROME divides `mom2.mom2`
//! by `mom2.count`. Read: stored and deflated members; written: stored, with
//! CRC-32, as numpy does.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{EditError, Result};
use crate::stats::{LayerStats, StatsKey};

/// One array of an archive.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyArray {
    F32 {
        shape: Vec<usize>,
        data: Vec<f32>,
    },
    F64 {
        shape: Vec<usize>,
        data: Vec<f64>,
    },
    I64 {
        shape: Vec<usize>,
        data: Vec<i64>,
    },
    /// Unicode strings (`<U…`), e.g. a stat's constructor.
    Text(Vec<String>),
}

fn bad(path: &Path, message: impl Into<String>) -> EditError {
    EditError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// CRC-32 (IEEE, reflected), as zip stores it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    !bytes.iter().fold(!0u32, |c, &b| {
        table[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// The members of a zip archive by name: the central directory is read, each
/// member's data is inflated where deflated, and its CRC-32 checked.
pub fn read_zip(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>> {
    // The end-of-central-directory record: its signature, searched backwards
    // over the longest comment a zip allows.
    let lowest = bytes.len().saturating_sub(22 + 65_535);
    let eocd = (lowest..bytes.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(bytes, i) == Some(0x0605_4b50))
        .ok_or_else(|| {
            bad(
                path,
                "not a zip archive (.npz): no end of central directory",
            )
        })?;
    let count = u16_at(bytes, eocd + 10).unwrap_or(0) as usize;
    let mut at = u32_at(bytes, eocd + 16).unwrap_or(u32::MAX) as usize;
    let mut out = BTreeMap::new();
    for _ in 0..count {
        let truncated = || bad(path, "truncated central directory");
        if u32_at(bytes, at) != Some(0x0201_4b50) {
            return Err(truncated());
        }
        let method = u16_at(bytes, at + 10).ok_or_else(truncated)?;
        let crc = u32_at(bytes, at + 16).ok_or_else(truncated)?;
        let packed = u32_at(bytes, at + 20).ok_or_else(truncated)? as usize;
        let size = u32_at(bytes, at + 24).ok_or_else(truncated)? as usize;
        let name_len = u16_at(bytes, at + 28).ok_or_else(truncated)? as usize;
        let extra_len = u16_at(bytes, at + 30).ok_or_else(truncated)? as usize;
        let comment_len = u16_at(bytes, at + 32).ok_or_else(truncated)? as usize;
        let local = u32_at(bytes, at + 42).ok_or_else(truncated)? as usize;
        let name = bytes
            .get(at + 46..at + 46 + name_len)
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .ok_or_else(truncated)?;
        if packed == u32::MAX as usize || size == u32::MAX as usize {
            return Err(bad(
                path,
                format!("member {name}: zip64 archives are not supported"),
            ));
        }
        at += 46 + name_len + extra_len + comment_len;
        // The local header's own name and extra lengths place the data.
        let lname = u16_at(bytes, local + 26).ok_or_else(truncated)? as usize;
        let lextra = u16_at(bytes, local + 28).ok_or_else(truncated)? as usize;
        let start = local + 30 + lname + lextra;
        let data = bytes
            .get(start..start.saturating_add(packed))
            .ok_or_else(|| bad(path, format!("member {name} runs past the end of the file")))?;
        let data = match method {
            0 => data.to_vec(),
            8 => miniz_oxide::inflate::decompress_to_vec_with_limit(data, size)
                .map_err(|e| bad(path, format!("member {name}: cannot inflate: {e:?}")))?,
            m => {
                return Err(bad(
                    path,
                    format!("member {name}: compression method {m} (stored and deflated are read)"),
                ))
            }
        };
        if data.len() != size || crc32(&data) != crc {
            return Err(bad(path, format!("member {name}: size or CRC-32 mismatch")));
        }
        out.insert(name, data);
    }
    Ok(out)
}

/// A zip archive of `members`, stored (no compression), as `numpy.savez` writes.
pub fn write_zip(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in members {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let header = |sig: u32, central: bool| -> Vec<u8> {
            let mut h = Vec::new();
            h.extend(sig.to_le_bytes());
            if central {
                h.extend(20u16.to_le_bytes()); // made by
            }
            h.extend(20u16.to_le_bytes()); // needed
            h.extend(0u16.to_le_bytes()); // flags
            h.extend(0u16.to_le_bytes()); // stored
            h.extend(0u32.to_le_bytes()); // time, date
            h.extend(crc.to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((name.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes()); // extra
            if central {
                h.extend([0u8; 6]); // comment length, disk, internal attributes
                h.extend(0u32.to_le_bytes()); // external attributes
                h.extend(offset.to_le_bytes());
            }
            h.extend(name.as_bytes());
            h
        };
        out.extend(header(0x0403_4b50, false));
        out.extend(data);
        central.extend(header(0x0201_4b50, true));
    }
    let dir_offset = out.len() as u32;
    let n = members.len() as u16;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend(n.to_le_bytes());
    out.extend(n.to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(dir_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

/// Parse one `.npy` member (format 1.0–3.0, C order, little endian).
pub fn read_npy(path: &Path, name: &str, b: &[u8]) -> Result<NpyArray> {
    let err = |m: &str| bad(path, format!("{name}: {m}"));
    if b.get(..6) != Some(b"\x93NUMPY") {
        return Err(err("not a .npy array"));
    }
    let (len, start) = match b.get(6) {
        Some(1) => (u16_at(b, 8).map(usize::from), 10),
        Some(2 | 3) => (u32_at(b, 8).map(|v| v as usize), 12),
        _ => return Err(err("unknown .npy version")),
    };
    let len = len.ok_or_else(|| err("truncated header"))?;
    let header = b
        .get(start..start + len)
        .map(String::from_utf8_lossy)
        .ok_or_else(|| err("truncated header"))?;
    let field = |key: &str| -> Option<String> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
        let end = if rest.starts_with('(') {
            rest.find(')')? + 1
        } else {
            rest.find([',', '}'])?
        };
        Some(rest[..end].trim().trim_matches('\'').to_string())
    };
    let descr = field("descr").ok_or_else(|| err("no descr"))?;
    if field("fortran_order").as_deref() == Some("True") {
        return Err(err("Fortran order is not supported"));
    }
    let shape: Vec<usize> = field("shape")
        .ok_or_else(|| err("no shape"))?
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().map_err(|_| err("bad shape")))
        .collect::<Result<_>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| err("shape overflows"))?;
    let data = &b[start + len..];
    let need = |width: usize| -> Result<&[u8]> {
        data.get(..n.checked_mul(width).ok_or_else(|| err("shape overflows"))?)
            .ok_or_else(|| err("data shorter than its shape"))
    };
    Ok(match descr.as_str() {
        "<f4" => NpyArray::F32 {
            data: need(4)?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            shape,
        },
        "<f8" => NpyArray::F64 {
            data: need(8)?
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
            shape,
        },
        "<i8" => NpyArray::I64 {
            data: need(8)?
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
            shape,
        },
        d if d.starts_with("<U") => {
            let width: usize = d[2..].parse().map_err(|_| err("bad string width"))?;
            let chars = need(4 * width)?;
            NpyArray::Text(
                chars
                    .chunks_exact(4 * width.max(1))
                    .map(|s| {
                        s.chunks_exact(4)
                            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .take_while(|&c| c != 0)
                            .filter_map(char::from_u32)
                            .collect()
                    })
                    .collect(),
            )
        }
        other => return Err(err(&format!("dtype {other} is not read"))),
    })
}

/// One `.npy` member (format 1.0).
pub fn write_npy(array: &NpyArray) -> Vec<u8> {
    let (descr, shape, body): (String, Vec<usize>, Vec<u8>) = match array {
        NpyArray::F32 { shape, data } => (
            "<f4".into(),
            shape.clone(),
            data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        NpyArray::F64 { shape, data } => (
            "<f8".into(),
            shape.clone(),
            data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        NpyArray::I64 { shape, data } => (
            "<i8".into(),
            shape.clone(),
            data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        NpyArray::Text(items) => {
            let width = items
                .iter()
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(1)
                .max(1);
            let mut body = Vec::new();
            for s in items {
                let mut chars: Vec<u32> = s.chars().map(u32::from).collect();
                chars.resize(width, 0);
                body.extend(chars.iter().flat_map(|c| c.to_le_bytes()));
            }
            let shape = if items.len() == 1 {
                vec![]
            } else {
                vec![items.len()]
            };
            (format!("<U{width}"), shape, body)
        }
    };
    let dims = match shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // Pad with spaces so that the data starts on a 64-byte boundary, then '\n'.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(body);
    out
}

/// The arrays of an `.npz` file by name (without `.npy`).
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, NpyArray>> {
    let bytes = std::fs::read(path).map_err(|e| bad(path, e.to_string()))?;
    read_zip(path, &bytes)?
        .into_iter()
        .map(|(name, data)| {
            let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
            Ok((key, read_npy(path, &name, &data)?))
        })
        .collect()
}

/// A layer's statistics from ROME's `.npz` (`mom2.mom2` as Σ k kᵀ over
/// `mom2.count` keys). `key` says which model and layer they are meant for;
/// its token count is taken from the file.
pub fn stats_from_npz(path: &Path, mut key: StatsKey) -> Result<LayerStats> {
    let arrays = read_npz(path)?;
    let (shape, mom2) = match arrays.get("mom2.mom2") {
        Some(NpyArray::F32 { shape, data }) => (
            shape.clone(),
            data.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
        ),
        Some(NpyArray::F64 { shape, data }) => (shape.clone(), data.clone()),
        Some(_) => return Err(bad(path, "mom2.mom2 must be float32 or float64")),
        None => return Err(bad(path, "no mom2.mom2: not a ROME statistics file")),
    };
    let count = match arrays.get("mom2.count") {
        Some(NpyArray::I64 { data, .. }) if data.len() == 1 && data[0] > 0 => data[0] as u64,
        _ => return Err(bad(path, "mom2.count must be one positive int64")),
    };
    let [rows, cols] = shape[..] else {
        return Err(bad(
            path,
            format!("mom2.mom2 has shape {shape:?}, expected [d, d]"),
        ));
    };
    if rows != cols {
        return Err(bad(
            path,
            format!("mom2.mom2 is {rows} x {cols}, not square"),
        ));
    }
    if let Some(x) = mom2.iter().find(|x| !x.is_finite()) {
        return Err(bad(path, format!("mom2.mom2 holds {x}")));
    }
    key.tokens = count;
    Ok(LayerStats {
        key,
        dim: rows,
        sum_outer: mom2,
    })
}

/// ROME's `.npz` of `stats`: `mom2.mom2` (float32, Σ k kᵀ), `mom2.count`,
/// the constructors ROME's loader reads back, and `sample_size`.
pub fn stats_to_npz(stats: &LayerStats) -> Vec<u8> {
    let d = stats.dim;
    let members = [
        (
            "constructor",
            NpyArray::Text(vec!["util.runningstats.CombinedStat()".into()]),
        ),
        (
            "mom2.constructor",
            NpyArray::Text(vec!["util.runningstats.SecondMoment()".into()]),
        ),
        (
            "mom2.count",
            NpyArray::I64 {
                shape: vec![],
                data: vec![stats.key.tokens as i64],
            },
        ),
        (
            "mom2.mom2",
            NpyArray::F32 {
                shape: vec![d, d],
                data: stats.sum_outer.iter().map(|&x| x as f32).collect(),
            },
        ),
        (
            "sample_size",
            NpyArray::I64 {
                shape: vec![],
                data: vec![stats.key.tokens as i64],
            },
        ),
    ];
    write_zip(
        &members
            .iter()
            .map(|(n, a)| (format!("{n}.npy"), write_npy(a)))
            .collect::<Vec<_>>(),
    )
}
