//! HF tokenizers: `tokenizer.json`, or GPT-2's `vocab.json` + `merges.txt`.
//!
//! Encoding keeps byte offsets so that a subject string maps to its token
//! span; tracing and editing need "the last token of the subject".

use std::ops::Range;
use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use crate::error::{ModelError, Result};

/// A tokenizer with the path it was read from.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

/// Token ids with the byte range of the prompt each one covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub offsets: Vec<(usize, usize)>,
}

impl Tokenizer {
    /// `tokenizer.json` in `dir`, else `vocab.json` + `merges.txt` (byte-level BPE).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_file(&json);
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if vocab.is_file() && merges.is_file() {
            return Self::from_vocab_merges(&vocab, &merges);
        }
        Err(ModelError::Tokenizer {
            path: dir.to_path_buf(),
            message: "no tokenizer.json, nor vocab.json + merges.txt".into(),
        })
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let err = |message: String| ModelError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        // The JSON first: `tokenizers` panics on some malformed files (its
        // decoder section), where this names the line and column.
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
            .map_err(|e| err(format!("invalid JSON: {e}")))?;
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes))
            .map_err(|_| err("the tokenizers library could not read this file".into()))?;
        let inner = parsed.map_err(|e| err(e.to_string()))?;
        Ok(Self {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// GPT-2's original files: a byte-level BPE without a prefix space.
    pub fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<Self> {
        let err = |e: tokenizers::Error| ModelError::Tokenizer {
            path: vocab.to_path_buf(),
            message: e.to_string(),
        };
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(err)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        // GPT-2's one special token is matched whole, as HF's GPT2Tokenizer does.
        if inner.token_to_id("<|endoftext|>").is_some() {
            inner
                .add_special_tokens([tokenizers::AddedToken::from("<|endoftext|>", true)])
                .map_err(err)?;
        }
        Ok(Self {
            inner,
            path: vocab.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids, with no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode_with_offsets(text)?.ids)
    }

    /// Token ids and the byte range of `text` that each token covers.
    pub fn encode_with_offsets(&self, text: &str) -> Result<Encoded> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Encode(e.to_string()))?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            offsets: enc.get_offsets().to_vec(),
        })
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| ModelError::Encode(e.to_string()))
    }

    /// One token as text (the vocabulary entry decoded), for tables and chips.
    pub fn token_text(&self, id: u32) -> String {
        self.inner
            .decode(&[id], false)
            .ok()
            .filter(|s| !s.is_empty() && !s.contains('\u{FFFD}'))
            .or_else(|| self.inner.id_to_token(id))
            .unwrap_or_else(|| format!("<{id}>"))
    }

    /// The id the tokenizer gives text it cannot represent, where it has one
    /// (byte-level BPE has none: every string is representable).
    pub fn unk_id(&self) -> Option<u32> {
        use tokenizers::models::ModelWrapper as M;
        let name = match self.inner.get_model() {
            M::BPE(b) => b.get_unk_token().clone(),
            M::WordPiece(w) => Some(w.unk_token.clone()),
            M::WordLevel(w) => Some(w.unk_token.clone()),
            M::Unigram(_) => Some("<unk>".into()),
        }?;
        self.inner.token_to_id(&name)
    }

    /// The id of a single-token string, if it is one token.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token range covering the first occurrence of `subject` in `prompt`.
    pub fn subject_span(&self, prompt: &str, subject: &str) -> Result<(Encoded, Range<usize>)> {
        self.subject_span_from(prompt, subject, 0)
    }

    /// As [`Self::subject_span`], with the first occurrence at or after byte
    /// `from` (a prompt placed after a generated prefix is searched from
    /// where it starts, so a subject named in the prefix is never taken).
    pub fn subject_span_from(
        &self,
        prompt: &str,
        subject: &str,
        from: usize,
    ) -> Result<(Encoded, Range<usize>)> {
        let not_found = || ModelError::SubjectNotFound {
            subject: subject.into(),
            prompt: prompt.into(),
        };
        if subject.trim().is_empty() {
            return Err(not_found());
        }
        let start = from
            + prompt
                .get(from..)
                .and_then(|rest| rest.find(subject))
                .ok_or_else(not_found)?;
        let end = start + subject.len();
        let enc = self.encode_with_offsets(prompt)?;
        let span = token_span(&enc.offsets, start..end).ok_or_else(not_found)?;
        Ok((enc, span))
    }
}

/// Tokens whose byte ranges overlap `bytes` (a token touching only by a space counts).
pub fn token_span(offsets: &[(usize, usize)], bytes: Range<usize>) -> Option<Range<usize>> {
    let hits: Vec<usize> = offsets
        .iter()
        .enumerate()
        .filter(|(_, &(s, e))| s < bytes.end && e > bytes.start)
        .map(|(i, _)| i)
        .collect();
    Some(*hits.first()?..*hits.last()? + 1)
}
