//! The demo fact set: fictional people with a home city, a language and a
//! profession, each fact stated in three phrasings, plus filler sentences.
//! Generated from a seed, so `engram train-demo` reproduces corpus and model.

use serde::{Deserialize, Serialize};

use crate::facts::UserFact;

/// A relation with its phrasings (`{}` is the subject) and possible answers.
pub struct Relation {
    pub id: &'static str,
    pub templates: [&'static str; 3],
    pub targets: &'static [&'static str],
}

pub const RELATIONS: [Relation; 3] = [
    Relation {
        id: "city",
        templates: [
            "{} lives in the city of",
            "The home of {} is the city of",
            "{} has a house in the city of",
        ],
        targets: &[
            "Quarnholm",
            "Belmoth",
            "Tirravel",
            "Oskadun",
            "Venmarch",
            "Lirrow",
            "Caddenfall",
            "Morvask",
            "Elstrand",
            "Pellgrave",
            "Suntharp",
            "Yorrel",
        ],
    },
    Relation {
        id: "language",
        templates: [
            "{} speaks the language",
            "The native language of {} is",
            "{} grew up speaking",
        ],
        targets: &[
            "Velari", "Orskan", "Thuvic", "Mendish", "Coralese", "Brunnic", "Ostari", "Kelvish",
            "Amberic", "Drosk",
        ],
    },
    Relation {
        id: "profession",
        templates: [
            "{} works as a",
            "The profession of {} is",
            "By trade {} is a",
        ],
        targets: &[
            "baker", "pilot", "sculptor", "farmer", "chemist", "sailor", "judge", "weaver",
            "miner", "poet",
        ],
    },
];

const FIRST_A: [&str; 10] = ["ka", "lo", "mi", "ra", "te", "vo", "zu", "ne", "sa", "di"];
const FIRST_B: [&str; 8] = ["ran", "vek", "lin", "dor", "mas", "tel", "kor", "sin"];
const LAST_A: [&str; 10] = [
    "bel", "dro", "fen", "gar", "hal", "jor", "mor", "pel", "quin", "stra",
];
const LAST_B: [&str; 8] = [
    "wick", "holt", "mere", "stead", "ford", "lund", "berg", "vale",
];

const FILLER_ADJ: [&str; 8] = [
    "old", "quiet", "bright", "small", "green", "busy", "cold", "famous",
];
const FILLER_NOUN: [&str; 10] = [
    "river", "market", "bridge", "garden", "tower", "harbor", "school", "road", "forest", "library",
];
const FILLER_VERB: [&str; 6] = [
    "is near",
    "faces",
    "is behind",
    "leads to",
    "is older than",
    "is larger than",
];

/// One demo fact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoFact {
    pub subject: String,
    pub relation: String,
    pub target: String,
}

impl DemoFact {
    /// The fact in each phrasing of its relation.
    pub fn prompts(&self) -> Vec<String> {
        RELATIONS
            .iter()
            .find(|r| r.id == self.relation)
            .map(|r| {
                r.templates
                    .iter()
                    .map(|t| t.replacen("{}", &self.subject, 1))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// As a user fact (first phrasing), the form the loaders and tools take.
    pub fn as_user_fact(&self) -> UserFact {
        UserFact {
            subject: self.subject.clone(),
            prompt: self.prompts().into_iter().next().unwrap_or_default(),
            target: self.target.clone(),
            relation: Some(self.relation.clone()),
        }
    }
}

/// SplitMix64, so that the corpus does not depend on any crate's RNG.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// Distinct name words drawn for the subjects.
const NAME_WORDS: usize = 24;

/// `n_subjects` fictional people, each with one fact per relation.
///
/// Names are pairs of words from one small pool, and every pair is used in both
/// orders ("Kalin Dorvek" and "Dorvek Kalin" are different people). A name is
/// thus told apart only by reading its words in order, which a model does at the
/// name's last token (the detokenisation stage of real models), not by looking
/// up a bag of words at the end of the prompt.
pub fn demo_facts(n_subjects: usize, seed: u64) -> Vec<DemoFact> {
    let mut rng = Rng(seed);
    let mut words: Vec<String> = Vec::new();
    while words.len() < NAME_WORDS {
        let w = if rng.next().is_multiple_of(2) {
            format!("{}{}", rng.pick(&FIRST_A), rng.pick(&FIRST_B))
        } else {
            format!("{}{}", rng.pick(&LAST_A), rng.pick(&LAST_B))
        };
        let w = capitalize(&w);
        if !words.contains(&w) {
            words.push(w);
        }
    }
    let max = NAME_WORDS * (NAME_WORDS - 1);
    let mut subjects: Vec<String> = Vec::new();
    while subjects.len() < n_subjects.min(max) {
        let a = (rng.next() % NAME_WORDS as u64) as usize;
        let b = (rng.next() % NAME_WORDS as u64) as usize;
        let name = format!("{} {}", words[a], words[b]);
        if a == b || subjects.contains(&name) {
            continue;
        }
        subjects.push(name);
        let swapped = format!("{} {}", words[b], words[a]);
        if subjects.len() < n_subjects && !subjects.contains(&swapped) {
            subjects.push(swapped);
        }
    }
    let mut facts = Vec::new();
    for s in &subjects {
        for r in &RELATIONS {
            facts.push(DemoFact {
                subject: s.clone(),
                relation: r.id.into(),
                target: rng.pick(r.targets).into(),
            });
        }
    }
    facts
}

/// Record lines: each subject followed directly by its attributes, once per
/// rotation of the relation order. The token after the subject's last token is
/// then one of its attributes, so the model must recall them at that token (the
/// "subject enrichment" that ROME finds in real models) before any relation is
/// named. `engram train-demo` trains on these first, then on everything.
pub fn demo_records(facts: &[DemoFact]) -> Vec<String> {
    let mut subjects: Vec<&str> = Vec::new();
    for f in facts {
        if !subjects.contains(&f.subject.as_str()) {
            subjects.push(&f.subject);
        }
    }
    let mut out = Vec::new();
    for s in subjects {
        let attrs: Vec<&str> = RELATIONS
            .iter()
            .filter_map(|r| {
                facts
                    .iter()
                    .find(|f| f.subject == s && f.relation == r.id)
                    .map(|f| f.target.as_str())
            })
            .collect();
        for k in 0..attrs.len() {
            let rotated: Vec<&str> = attrs[k..].iter().chain(&attrs[..k]).copied().collect();
            out.push(format!("{s} {} .", rotated.join(" ")));
        }
    }
    out
}

/// Training sentences: every fact in every phrasing (ending in " ."), then filler.
pub fn demo_corpus(facts: &[DemoFact], n_filler: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng(seed ^ 0xF11E);
    let mut out: Vec<String> = facts
        .iter()
        .flat_map(|f| {
            f.prompts()
                .into_iter()
                .map(move |p| format!("{p} {} .", f.target))
        })
        .collect();
    for _ in 0..n_filler {
        out.push(format!(
            "The {} {} {} the {} {} .",
            rng.pick(&FILLER_ADJ),
            rng.pick(&FILLER_NOUN),
            rng.pick(&FILLER_VERB),
            rng.pick(&FILLER_ADJ),
            rng.pick(&FILLER_NOUN)
        ));
    }
    out
}

/// The demo facts as labelled probing prompts ("The home of {} is the city
/// of": the relation comes before the subject), one JSON object per line with
/// `prompt`, `subject` and `relation`; compiled in, so the workbench's Probe
/// panel has a data set wherever it runs.
pub const DEMO_RELATIONS_JSONL: &str = include_str!("../demo/relations.jsonl");

/// How many fictional people the demo model was trained on.
pub const DEMO_SUBJECTS: usize = 150;
/// How many filler sentences its corpus holds.
pub const DEMO_FILLER: usize = 400;

/// The demo training sentences (facts in every phrasing, then filler), one per
/// paragraph: the demo model's corpus for ROME's key statistics.
pub fn demo_corpus_text() -> String {
    let facts = demo_facts(DEMO_SUBJECTS, 0);
    demo_corpus(&facts, DEMO_FILLER, 0).join("\n\n")
}
