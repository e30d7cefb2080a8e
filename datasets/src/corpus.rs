//! A streaming plain-text corpus: documents one at a time, never the whole file.
//! WikiText files split at top-level ` = Title = ` headings; other files at blank lines.

use std::fs::File;
use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};

use crate::error::{DatasetError, Result};

/// Iterates over the documents of a text file.
pub struct Corpus {
    path: PathBuf,
    lines: Lines<BufReader<File>>,
    wikitext: Option<bool>,
    pending: Option<String>,
    done: bool,
}

impl Corpus {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| DatasetError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            lines: BufReader::new(file).lines(),
            wikitext: None,
            pending: None,
            done: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// ` = Title = ` but not ` = = Section = = `.
fn is_wikitext_title(line: &str) -> bool {
    let t = line.trim();
    t.len() > 4 && t.starts_with("= ") && t.ends_with(" =") && !t.starts_with("= =")
}

impl Iterator for Corpus {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut doc = self.pending.take().unwrap_or_default();
        loop {
            match self.lines.next() {
                None => {
                    self.done = true;
                    let doc = doc.trim().to_string();
                    return (!doc.is_empty()).then_some(Ok(doc));
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(DatasetError::io(&self.path, e)));
                }
                Some(Ok(line)) => {
                    if self.wikitext.is_none() && !line.trim().is_empty() {
                        self.wikitext = Some(is_wikitext_title(&line));
                    }
                    let boundary = match self.wikitext {
                        Some(true) => is_wikitext_title(&line),
                        _ => line.trim().is_empty(),
                    };
                    if boundary && !doc.trim().is_empty() {
                        if self.wikitext == Some(true) {
                            self.pending = Some(format!("{}\n", line.trim()));
                        }
                        return Some(Ok(doc.trim().to_string()));
                    }
                    if !line.trim().is_empty() {
                        doc.push_str(line.trim());
                        doc.push('\n');
                    }
                }
            }
        }
    }
}
