//! Verticals declared in a TOML file, run without recompiling trust (`trust eval --vertical-spec
//! FILE`, `trust score --vertical-spec FILE`).
//!
//! A spec names a data file (JSON Lines or CSV) and how its fields map into a prompt template,
//! the decoding settings, a parser that turns each reply into a label (`keywords`, `regex` or
//! `options`), an optional text scorer, and metrics (label rates and means, optionally sliced by
//! a field). It runs through the same [`Runner`](trust_core::Runner) as the built-in verticals:
//! the same manifest, resume, report and paired comparisons. The whole resolved spec (and the
//! data file's sha256) is recorded in each manifest's `options.spec`, so a resume with an edited
//! spec or data file is refused, and `trust report` / `trust check` rebuild the vertical from
//! the run itself ([`register_specs_in_run`]).
//!
//! ```
//! use trust_verticals::spec::SpecVertical;
//! # let dir = tempfile::tempdir().unwrap();
//! # std::fs::write(dir.path().join("q.jsonl"), "{\"id\": \"a\", \"q\": \"Say hi\"}\n").unwrap();
//! let spec = r#"
//! name = "refusal"
//! [data]
//! file = "q.jsonl"
//! id = "id"
//! [prompt]
//! template = "Human: {q}\n\nAssistant:"
//! [parser]
//! kind = "keywords"
//! default = "complied"
//! labels = [{ label = "refused", any = ["I can't", "I cannot", "I'm sorry"] }]
//! [[metrics]]
//! kind = "label_rate"
//! name = "refusal_rate"
//! labels = ["refused"]
//! "#;
//! let v = SpecVertical::from_toml(spec, dir.path()).unwrap();
//! assert_eq!(trust_core::Vertical::name(&v), "refusal");
//! assert_eq!(v.parse_reply("I'm sorry, I can't help."), Some("refused".to_string()));
//! ```
//!
//! The format, field by field, is in `docs/vertical-specs.md`; `examples/specs/` has two
//! complete specs (a refusal rate and a jailbreak-compliance rate) with their data.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use trust_core::metric::{LabelRate, MeanOf, Metric, Sliced};
use trust_core::{
    DataDir, DecodingConfig, Error, GenerateRequest, Outcome, Request, Requirements, Response,
    Result, ScoreContext, Scores, Vertical,
};

/// The label of a reply no parser rule matched (and the spec gave no `default`).
pub const UNPARSED: &str = "unparsed";

/// A declarative vertical, as written in its TOML file (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerticalSpec {
    /// Vertical name: the run's sub-folder and the report's row; letters, digits, `_`, `-`.
    pub name: String,
    /// Protocol name recorded in manifests (default `spec`).
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Version recorded in manifests (default `1`); bump it when the meaning changes.
    #[serde(default = "default_version")]
    pub version: String,
    /// Free text shown nowhere but kept in the manifest.
    #[serde(default)]
    pub description: String,
    /// The data file and its fields.
    pub data: DataSpec,
    /// How a row becomes a prompt.
    pub prompt: PromptSpec,
    /// Decoding settings.
    #[serde(default)]
    pub decoding: DecodingSpec,
    /// How a reply becomes a label.
    pub parser: ParserSpec,
    /// Score every reply with the run's text scorer (`--scorer`).
    #[serde(default)]
    pub scorer: Option<ScorerSpec>,
    /// What is reported.
    pub metrics: Vec<MetricSpec>,
}

fn default_protocol() -> String {
    "spec".into()
}
fn default_version() -> String {
    "1".into()
}

/// `[data]`: the samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// A `.jsonl` (one JSON object per line) or `.csv` (with a header) file; relative paths are
    /// relative to the spec file's folder.
    pub file: PathBuf,
    /// Field holding each sample's id (unique). Default: `NAME/LINE`, the row's line number.
    #[serde(default)]
    pub id: Option<String>,
    /// Expected sha256 of the file (hex); checked when given.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Field whose value is the sample's stratum for `--sample N` (default: the first metric's
    /// `by` field, else none).
    #[serde(default)]
    pub stratum: Option<String>,
}

/// `[prompt]`: either a raw `template`, or chat messages (`user`, optional `system`) rendered
/// with the model's chat template under `--chat-template auto` (else the HH layout
/// `{system}\n\nHuman: {user}\n\nAssistant:`). `{field}` inserts a row's field; `{{` and `}}`
/// are literal braces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    /// Raw prompt text.
    #[serde(default)]
    pub template: Option<String>,
    /// Chat: the system message (may be empty).
    #[serde(default)]
    pub system: Option<String>,
    /// Chat: the user message.
    #[serde(default)]
    pub user: Option<String>,
}

/// `[decoding]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodingSpec {
    /// New tokens at most (default 64).
    #[serde(default = "default_max_new")]
    pub max_new_tokens: usize,
    /// 0 (default) = greedy; else sampling at this temperature.
    #[serde(default)]
    pub temperature: f64,
    /// Nucleus sampling mass (default 1).
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    /// Generations per prompt (default 1; sampled decoding only).
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// The reply is cut before the first of these strings.
    #[serde(default)]
    pub stop: Vec<String>,
}

fn default_max_new() -> usize {
    64
}
fn default_top_p() -> f64 {
    1.0
}
fn default_samples() -> usize {
    1
}

impl Default for DecodingSpec {
    fn default() -> Self {
        DecodingSpec {
            max_new_tokens: default_max_new(),
            temperature: 0.0,
            top_p: default_top_p(),
            samples: default_samples(),
            stop: Vec::new(),
        }
    }
}

/// `[parser]`: reply → label. Rules are tried in order; the first that matches gives the label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ParserSpec {
    /// A label when the reply contains any of its phrases.
    Keywords {
        /// The rules.
        labels: Vec<KeywordRule>,
        /// Label when no rule matches (default: `unparsed`).
        #[serde(default)]
        default: Option<String>,
        /// Match case exactly (default: case-insensitive).
        #[serde(default)]
        case_sensitive: bool,
    },
    /// A label when its regular expression (Rust `regex` syntax) matches the reply.
    Regex {
        /// The rules.
        labels: Vec<RegexRule>,
        /// Label when no rule matches (default: `unparsed`).
        #[serde(default)]
        default: Option<String>,
    },
    /// Multiple choice: the label is the option the reply starts with (after whitespace, `(`,
    /// `[` or quotes; the option followed by a non-alphanumeric character or the end), e.g.
    /// `options = ["A", "B", "C"]` reads "B) because…" as `B`.
    Options {
        /// The options.
        options: Vec<String>,
        /// Field holding the correct option: each sample then gets the value `correct` (the
        /// share of its parsed replies that chose it), for a `mean` metric.
        #[serde(default)]
        answer: Option<String>,
        /// Match case exactly (default: case-insensitive).
        #[serde(default)]
        case_sensitive: bool,
    },
}

/// One keyword rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeywordRule {
    /// The label.
    pub label: String,
    /// Phrases; any one is enough.
    pub any: Vec<String>,
}

/// One regex rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRule {
    /// The label.
    pub label: String,
    /// The pattern (use `(?i)` for case-insensitive).
    pub pattern: String,
}

/// `[scorer]`: every reply is scored; a sample's value `score` is the mean over its replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScorerSpec {
    /// Scorer label read (default: `--scorer-label`, else the scorer's primary label).
    #[serde(default)]
    pub label: Option<String>,
}

/// `[[metrics]]`: one reported metric (plus one per value of `by`, named `NAME[FIELD=VALUE]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum MetricSpec {
    /// Share of all replies whose label is one of `labels` (replies labelled in `exclude` left
    /// out of the denominator).
    LabelRate {
        /// Report name.
        name: String,
        /// Labels counted.
        labels: Vec<String>,
        /// Labels removed from the denominator (e.g. `["unparsed"]`).
        #[serde(default)]
        exclude: Vec<String>,
        /// Also one metric per value of this field.
        #[serde(default)]
        by: Option<String>,
        /// The values of `by` (default: every value in the data, sorted). Filled in when the
        /// spec is resolved, so a recorded spec rebuilds the same metrics without the data.
        #[serde(default)]
        values: Vec<String>,
    },
    /// Mean over samples of a per-sample value: `score` (needs `[scorer]`) or `correct`
    /// (needs an `options` parser with `answer`).
    Mean {
        /// Report name.
        name: String,
        /// `score` or `correct`.
        value: String,
        /// Also one metric per value of this field.
        #[serde(default)]
        by: Option<String>,
        /// The values of `by` (see `label_rate`).
        #[serde(default)]
        values: Vec<String>,
    },
}

impl MetricSpec {
    fn by(&self) -> Option<&str> {
        match self {
            MetricSpec::LabelRate { by, .. } | MetricSpec::Mean { by, .. } => by.as_deref(),
        }
    }
    fn values_mut(&mut self) -> &mut Vec<String> {
        match self {
            MetricSpec::LabelRate { values, .. } | MetricSpec::Mean { values, .. } => values,
        }
    }
}

/// One sample of a spec vertical.
#[derive(Debug, Clone)]
pub struct SpecSample {
    /// Sample id.
    pub id: String,
    /// The row's fields as text.
    pub fields: BTreeMap<String, String>,
    /// The rendered prompt.
    pub prompt: String,
}

/// A compiled parser.
#[derive(Debug, Clone)]
enum Parser {
    Keywords {
        rules: Vec<(String, Vec<String>)>,
        default: Option<String>,
        case_sensitive: bool,
    },
    Regex {
        rules: Vec<(String, regex::Regex)>,
        default: Option<String>,
    },
    Options {
        options: Vec<String>,
        case_sensitive: bool,
    },
}

/// A [`VerticalSpec`] ready to run: validated, data path resolved, slice values filled in.
#[derive(Debug, Clone)]
pub struct SpecVertical {
    spec: VerticalSpec,
    /// Where the spec was read from (for messages).
    origin: String,
    data_path: PathBuf,
    data_sha256: String,
    parser: Parser,
    chat: Option<trust_core::SharedChatFormat>,
    scorer_label: Option<String>,
}

fn spec_error(origin: &str, message: impl std::fmt::Display) -> Error {
    Error::Config(format!("{origin}: {message}"))
}

impl SpecVertical {
    /// Reads and checks the spec in `path` (TOML); its data file is read too (to check every
    /// row renders and to find the slice values).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml_named(&text, base, &path.display().to_string())
    }

    /// [`SpecVertical::from_file`] on TOML text; relative data paths start at `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self> {
        Self::from_toml_named(text, base, "<vertical spec>")
    }

    fn from_toml_named(text: &str, base: &Path, origin: &str) -> Result<Self> {
        let spec: VerticalSpec = toml::from_str(text).map_err(|e| {
            // toml's message names the line and column and quotes the line.
            spec_error(origin, e.to_string().trim_end())
        })?;
        Self::from_spec(spec, base, origin)
    }

    /// A recorded spec (a manifest's `options.spec`): the data file is the recorded absolute
    /// path; it is not read until the vertical loads its samples.
    pub fn from_recorded(value: &serde_json::Value) -> Result<Self> {
        let spec: VerticalSpec = serde_json::from_value(value["spec"].clone())
            .map_err(|e| Error::Config(format!("recorded vertical spec: {e}")))?;
        let sha = value["data_sha256"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut v = Self::checked(spec, "recorded vertical spec")?;
        v.data_sha256 = sha;
        Ok(v)
    }

    /// Checks `spec`, resolves its data file against `base` and fills in slice values.
    pub fn from_spec(mut spec: VerticalSpec, base: &Path, origin: &str) -> Result<Self> {
        if spec.data.file.is_relative() {
            spec.data.file = base.join(&spec.data.file);
        }
        // Absolute, so the recorded spec finds the data from any working directory.
        if let Ok(abs) = std::path::absolute(&spec.data.file) {
            spec.data.file = abs;
        }
        let mut v = Self::checked(spec, origin)?;
        let bytes = std::fs::read(&v.data_path).map_err(|e| Error::io(&v.data_path, e))?;
        v.data_sha256 = trust_core::data::sha256_bytes(&bytes);
        if let Some(want) = &v.spec.data.sha256
            && !want.eq_ignore_ascii_case(&v.data_sha256)
        {
            return Err(spec_error(
                origin,
                format!(
                    "{} has sha256 {}, the spec expects {want}",
                    v.data_path.display(),
                    v.data_sha256
                ),
            ));
        }
        let samples = v.read_samples(&bytes)?;
        if samples.is_empty() {
            return Err(spec_error(
                origin,
                format!("{} holds no samples", v.data_path.display()),
            ));
        }
        for m in &mut v.spec.metrics {
            if let Some(by) = m.by().map(str::to_string)
                && m.values_mut().is_empty()
            {
                let found: BTreeSet<&str> = samples
                    .iter()
                    .filter_map(|s| s.fields.get(&by).map(String::as_str))
                    .collect();
                *m.values_mut() = found.into_iter().map(str::to_string).collect();
            }
        }
        Ok(v)
    }

    /// Validation that needs no data.
    fn checked(spec: VerticalSpec, origin: &str) -> Result<Self> {
        let bad = |m: String| spec_error(origin, m);
        let name_ok = !spec.name.is_empty()
            && spec
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_ok {
            return Err(bad(format!(
                "name `{}` must be letters, digits, `_` or `-` (it names the run's folder)",
                spec.name
            )));
        }
        if crate::registry::VERTICALS.contains(&spec.name.as_str()) {
            return Err(bad(format!(
                "name `{}` is a built-in vertical; choose another",
                spec.name
            )));
        }
        if data_format(&spec.data.file).is_none() {
            return Err(bad(format!(
                "[data] file {}: data files must end in .jsonl or .csv",
                spec.data.file.display()
            )));
        }
        match (&spec.prompt.template, &spec.prompt.user) {
            (Some(_), None) if spec.prompt.system.is_none() => {}
            (None, Some(_)) => {}
            _ => {
                return Err(bad(
                    "[prompt] needs either `template` (raw text) or `user` (chat, with an optional `system`), not both"
                        .into(),
                ));
            }
        }
        let d = &spec.decoding;
        if d.max_new_tokens == 0 || d.samples == 0 {
            return Err(bad(
                "[decoding] max_new_tokens and samples must be ≥ 1".into()
            ));
        }
        let in_range =
            d.temperature >= 0.0 && d.temperature.is_finite() && d.top_p > 0.0 && d.top_p <= 1.0;
        if !in_range {
            return Err(bad(
                "[decoding] temperature must be ≥ 0 and top_p in (0, 1]".into(),
            ));
        }
        if d.temperature == 0.0 && d.samples > 1 {
            return Err(bad(
                "[decoding] samples > 1 needs sampling (temperature > 0): greedy replies would all be equal"
                    .into(),
            ));
        }
        let parser = match &spec.parser {
            ParserSpec::Keywords {
                labels,
                default,
                case_sensitive,
            } => {
                if labels.is_empty() || labels.iter().any(|r| r.any.is_empty()) {
                    return Err(bad(
                        "[parser] keywords: every label needs a non-empty `any` list".into(),
                    ));
                }
                Parser::Keywords {
                    rules: labels
                        .iter()
                        .map(|r| {
                            let words = r
                                .any
                                .iter()
                                .map(|w| {
                                    if *case_sensitive {
                                        w.clone()
                                    } else {
                                        w.to_lowercase()
                                    }
                                })
                                .collect();
                            (r.label.clone(), words)
                        })
                        .collect(),
                    default: default.clone(),
                    case_sensitive: *case_sensitive,
                }
            }
            ParserSpec::Regex { labels, default } => {
                if labels.is_empty() {
                    return Err(bad("[parser] regex: no labels".into()));
                }
                let mut rules = Vec::new();
                for r in labels {
                    let re = regex::Regex::new(&r.pattern).map_err(|e| {
                        bad(format!("[parser] label `{}`: bad pattern: {e}", r.label))
                    })?;
                    rules.push((r.label.clone(), re));
                }
                Parser::Regex {
                    rules,
                    default: default.clone(),
                }
            }
            ParserSpec::Options {
                options,
                case_sensitive,
                ..
            } => {
                if options.is_empty() || options.iter().any(|o| o.trim().is_empty()) {
                    return Err(bad("[parser] options: no options, or an empty one".into()));
                }
                Parser::Options {
                    options: options.clone(),
                    case_sensitive: *case_sensitive,
                }
            }
        };
        if spec.metrics.is_empty() {
            return Err(bad("no [[metrics]]".into()));
        }
        let has_answer = matches!(
            spec.parser,
            ParserSpec::Options {
                answer: Some(_),
                ..
            }
        );
        let mut names = BTreeSet::new();
        for m in &spec.metrics {
            let name = match m {
                MetricSpec::LabelRate { name, labels, .. } => {
                    if labels.is_empty() {
                        return Err(bad(format!("metric `{name}`: no labels")));
                    }
                    name
                }
                MetricSpec::Mean { name, value, .. } => {
                    match value.as_str() {
                        "score" if spec.scorer.is_none() => {
                            return Err(bad(format!(
                                "metric `{name}`: value `score` needs a [scorer] section"
                            )));
                        }
                        "correct" if !has_answer => {
                            return Err(bad(format!(
                                "metric `{name}`: value `correct` needs an `options` parser with `answer`"
                            )));
                        }
                        "score" | "correct" => {}
                        other => {
                            return Err(bad(format!(
                                "metric `{name}`: unknown value `{other}` (score, correct)"
                            )));
                        }
                    }
                    name
                }
            };
            if name.is_empty() || name.contains(['[', ']', '=']) || !names.insert(name.clone()) {
                return Err(bad(format!(
                    "metric name `{name}` is empty, repeated or holds `[`, `]` or `=`"
                )));
            }
        }
        Ok(SpecVertical {
            data_path: spec.data.file.clone(),
            data_sha256: String::new(),
            origin: origin.to_string(),
            scorer_label: spec.scorer.as_ref().and_then(|s| s.label.clone()),
            spec,
            parser,
            chat: None,
        })
    }

    /// Renders chat prompts (`[prompt] user`) with `format` (a model's chat template); `None`:
    /// the HH layout.
    pub fn with_chat_format(mut self, format: Option<trust_core::SharedChatFormat>) -> Self {
        self.chat = format;
        self
    }

    /// `--samples K`: generations per prompt for a sampled spec (recorded in the manifest's spec);
    /// greedy specs keep one.
    pub fn with_samples(mut self, k: Option<usize>) -> Self {
        if let Some(k) = k.filter(|&k| k >= 1)
            && self.spec.decoding.temperature > 0.0
        {
            self.spec.decoding.samples = k;
        }
        self
    }

    /// The scorer label read when the spec names none (`--scorer-label`).
    pub fn with_default_scorer_label(mut self, label: Option<String>) -> Self {
        if self.scorer_label.is_none() {
            self.scorer_label = label;
        }
        self
    }

    /// The spec as resolved (absolute data path, slice values).
    pub fn spec(&self) -> &VerticalSpec {
        &self.spec
    }

    /// The label the parser gives `reply` (`None` = unparsed).
    pub fn parse_reply(&self, reply: &str) -> Option<String> {
        match &self.parser {
            Parser::Keywords {
                rules,
                default,
                case_sensitive,
            } => {
                let text = if *case_sensitive {
                    reply.to_string()
                } else {
                    reply.to_lowercase()
                };
                rules
                    .iter()
                    .find(|(_, words)| words.iter().any(|w| text.contains(w.as_str())))
                    .map(|(l, _)| l.clone())
                    .or_else(|| default.clone())
            }
            Parser::Regex { rules, default } => rules
                .iter()
                .find(|(_, re)| re.is_match(reply))
                .map(|(l, _)| l.clone())
                .or_else(|| default.clone()),
            Parser::Options {
                options,
                case_sensitive,
            } => {
                let t = reply.trim_start_matches(|c: char| {
                    c.is_whitespace() || matches!(c, '(' | '[' | '"' | '\'' | '*')
                });
                options
                    .iter()
                    .find(|o| {
                        let head = t.get(..o.len());
                        let same = head.is_some_and(|h| {
                            if *case_sensitive {
                                h == o.as_str()
                            } else {
                                h.to_lowercase() == o.to_lowercase()
                            }
                        });
                        same && t[o.len()..]
                            .chars()
                            .next()
                            .is_none_or(|c| !c.is_alphanumeric())
                    })
                    .cloned()
            }
        }
    }

    /// The data file's contents (`bytes`) as samples (every row rendered; errors name file and
    /// line).
    fn read_samples(&self, bytes: &[u8]) -> Result<Vec<SpecSample>> {
        let path = &self.data_path;
        let rows = read_rows(path, bytes)?;
        let mut seen = BTreeMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for (line, fields) in rows {
            let id = match &self.spec.data.id {
                Some(f) => fields
                    .get(f)
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .ok_or_else(|| Error::data(path, line, f, "missing or empty id field"))?,
                None => format!("{}/{line}", self.spec.name),
            };
            if let Some(first) = seen.insert(id.clone(), line) {
                return Err(Error::data(
                    path,
                    line,
                    self.spec.data.id.as_deref().unwrap_or("id"),
                    format!("id `{id}` repeats the one on line {first}"),
                ));
            }
            let render = |t: &str| {
                render_template(t, &fields).map_err(|m| Error::data(path, line, "<prompt>", m))
            };
            let prompt = match (&self.spec.prompt.template, &self.spec.prompt.user) {
                (Some(t), _) => render(t)?,
                (None, Some(u)) => {
                    let system = match &self.spec.prompt.system {
                        Some(s) => render(s)?,
                        None => String::new(),
                    };
                    crate::common::render_chat_with(self.chat.as_ref(), &system, &render(u)?)?
                }
                (None, None) => unreachable!("checked: template or user"),
            };
            for m in &self.spec.metrics {
                if let Some(by) = m.by()
                    && !fields.contains_key(by)
                {
                    return Err(Error::data(
                        path,
                        line,
                        by,
                        "missing field (a metric's `by`)",
                    ));
                }
            }
            if let ParserSpec::Options {
                answer: Some(a), ..
            } = &self.spec.parser
                && !fields.contains_key(a)
            {
                return Err(Error::data(path, line, a, "missing answer field"));
            }
            out.push(SpecSample { id, fields, prompt });
        }
        Ok(out)
    }

    fn decoding(&self) -> DecodingConfig {
        let d = &self.spec.decoding;
        let mut c = if d.temperature == 0.0 {
            DecodingConfig::greedy(d.max_new_tokens)
        } else {
            DecodingConfig::sampled(d.max_new_tokens, d.temperature, d.top_p, d.samples)
        };
        c.stop_strings = d.stop.clone();
        c
    }

    fn stratum_field(&self) -> Option<&str> {
        self.spec
            .data
            .stratum
            .as_deref()
            .or_else(|| self.spec.metrics.iter().find_map(|m| m.by()))
    }
}

/// `{field}` → the row's value; `{{` / `}}` → literal braces; an unknown field or a lone brace is
/// an error naming it.
pub fn render_template(
    template: &str,
    fields: &BTreeMap<String, String>,
) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push('}');
            rest = after;
        } else if tail.starts_with('}') {
            return Err("a lone `}` in the template (write `}}` for a brace)".into());
        } else {
            let end = tail
                .find('}')
                .ok_or("a `{` without its `}` in the template (write `{{` for a brace)")?;
            let name = &tail[1..end];
            let value = fields.get(name).ok_or_else(|| {
                format!(
                    "the template uses `{{{name}}}` but the row has no field `{name}` (fields: {})",
                    fields.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
            out.push_str(value);
            rest = &tail[end + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `Some(true)` for JSON Lines, `Some(false)` for CSV, by extension.
fn data_format(path: &Path) -> Option<bool> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jsonl" | "ndjson" => Some(true),
        "csv" => Some(false),
        _ => None,
    }
}

/// The rows of a `.jsonl` or `.csv` file (`bytes`, read from `path`) as text fields, with their
/// line numbers.
fn read_rows(path: &Path, bytes: &[u8]) -> Result<Vec<(usize, BTreeMap<String, String>)>> {
    match data_format(path) {
        Some(true) => {
            let rows: Vec<(usize, serde_json::Value)> =
                trust_core::data::read_jsonl_from(bytes, path)?;
            rows.into_iter()
                .map(|(line, v)| {
                    let serde_json::Value::Object(map) = v else {
                        return Err(Error::data(path, line, "<line>", "not a JSON object"));
                    };
                    let fields = map
                        .into_iter()
                        .map(|(k, v)| {
                            let text = match v {
                                serde_json::Value::String(s) => s,
                                serde_json::Value::Null => String::new(),
                                other => other.to_string(),
                            };
                            (k, text)
                        })
                        .collect();
                    Ok((line, fields))
                })
                .collect()
        }
        Some(false) => {
            let (headers, recs) = crate::common::read_csv_bytes(bytes, path)?;
            Ok(recs
                .into_iter()
                .map(|(line, rec)| {
                    let fields = headers
                        .iter()
                        .zip(rec.iter())
                        .map(|(h, v)| (h.to_string(), v.to_string()))
                        .collect();
                    (line, fields)
                })
                .collect())
        }
        None => Err(Error::Config(format!(
            "{}: data files must end in .jsonl or .csv",
            path.display()
        ))),
    }
}

impl Vertical for SpecVertical {
    type Sample = SpecSample;

    fn name(&self) -> &str {
        &self.spec.name
    }
    fn version(&self) -> &str {
        &self.spec.version
    }
    fn protocol(&self) -> &str {
        &self.spec.protocol
    }
    fn options(&self) -> serde_json::Value {
        let chat = self.spec.prompt.user.is_some();
        serde_json::json!({
            "spec": self.spec,
            "data_sha256": self.data_sha256,
            "scorer_label": self.scorer_label,
            "chat_layout": chat.then(|| crate::common::chat_layout_name(self.chat.as_ref())),
        })
    }
    fn requirements(&self) -> Requirements {
        Requirements {
            capabilities: self.decoding().required_capabilities(),
            scorer: self.spec.scorer.is_some(),
        }
    }
    /// None in the data directory: the spec names its own file (its sha256 is in `options`).
    fn data_files(&self) -> Vec<String> {
        Vec::new()
    }
    fn load(&self, _data: &DataDir) -> Result<Vec<SpecSample>> {
        let bytes = std::fs::read(&self.data_path).map_err(|e| Error::io(&self.data_path, e))?;
        if !self.data_sha256.is_empty() {
            let sha = trust_core::data::sha256_bytes(&bytes);
            if sha != self.data_sha256 {
                return Err(Error::Config(format!(
                    "{}: {} changed since the spec was read (sha256 {sha}, was {})",
                    self.origin,
                    self.data_path.display(),
                    self.data_sha256
                )));
            }
        }
        self.read_samples(&bytes)
    }
    fn sample_id(&self, s: &SpecSample) -> String {
        s.id.clone()
    }
    fn stratum(&self, s: &SpecSample) -> String {
        self.stratum_field()
            .and_then(|f| s.fields.get(f))
            .cloned()
            .unwrap_or_default()
    }
    fn requests(&self, s: &SpecSample, seed: u64) -> Vec<Request> {
        vec![Request::Generate(GenerateRequest {
            prompt: s.prompt.clone(),
            config: self.decoding(),
            seed,
        })]
    }
    fn texts_to_score(&self, _s: &SpecSample, responses: &[Response]) -> Vec<String> {
        if self.spec.scorer.is_none() {
            return Vec::new();
        }
        crate::common::replies(responses)
            .into_iter()
            .map(str::to_string)
            .collect()
    }
    fn score_in(
        &self,
        s: &SpecSample,
        ctx: &ScoreContext<'_>,
        responses: &[Response],
        scores: &[Scores],
    ) -> std::result::Result<Outcome, String> {
        let replies = crate::common::replies(responses);
        if replies.is_empty() {
            return Err("no reply".into());
        }
        let mut out = Outcome::default();
        let mut parsed = Vec::with_capacity(replies.len());
        for r in &replies {
            match self.parse_reply(r) {
                Some(l) => {
                    out.labels.push(l.clone());
                    parsed.push(l);
                }
                None => {
                    out.labels.push(UNPARSED.into());
                    out.unparsed += 1;
                }
            }
        }
        if let ParserSpec::Options {
            answer: Some(a),
            case_sensitive,
            ..
        } = &self.spec.parser
            && !parsed.is_empty()
        {
            let want = &s.fields[a];
            let hit = |l: &String| {
                if *case_sensitive {
                    l == want
                } else {
                    // The same case folding as the parser's (non-ASCII options too).
                    l.to_lowercase() == want.trim().to_lowercase()
                }
            };
            let n = parsed.iter().filter(|l| hit(l)).count();
            out.values
                .insert("correct".into(), n as f64 / parsed.len() as f64);
        }
        if self.spec.scorer.is_some() {
            if scores.len() != replies.len() {
                return Err(format!(
                    "{} scores for {} replies",
                    scores.len(),
                    replies.len()
                ));
            }
            let idx = match &self.scorer_label {
                Some(l) => ctx.label_index(l).ok_or_else(|| {
                    format!(
                        "the scorer has no label `{l}` (labels: {})",
                        ctx.scorer_labels.join(", ")
                    )
                })?,
                None => 0,
            };
            let mut sum = 0.0;
            for sc in scores {
                let v = *sc
                    .values
                    .get(idx)
                    .ok_or_else(|| format!("a score has no value {idx}"))?;
                if !v.is_finite() {
                    return Err(format!("score {v} is not a finite number"));
                }
                sum += v;
            }
            out.values.insert("score".into(), sum / scores.len() as f64);
        }
        for m in &self.spec.metrics {
            if let Some(by) = m.by() {
                out.tags.insert(by.to_string(), s.fields[by].clone());
            }
        }
        Ok(out)
    }
    fn metrics(&self) -> Vec<Box<dyn Metric>> {
        let mut out: Vec<Box<dyn Metric>> = Vec::new();
        for m in &self.spec.metrics {
            match m {
                MetricSpec::LabelRate {
                    name,
                    labels,
                    exclude,
                    by,
                    values,
                } => push_sliced(
                    &mut out,
                    LabelRate::new(name.clone(), labels.clone()).excluding(exclude.clone()),
                    by,
                    values,
                ),
                MetricSpec::Mean {
                    name,
                    value,
                    by,
                    values,
                } => push_sliced(
                    &mut out,
                    MeanOf::new(name.clone(), value.clone()),
                    by,
                    values,
                ),
            }
        }
        out
    }
}

/// Pushes `base`, then one [`Sliced`] copy of it per value of the field `by`.
fn push_sliced<M: Metric + Clone + 'static>(
    out: &mut Vec<Box<dyn Metric>>,
    base: M,
    by: &Option<String>,
    values: &[String],
) {
    out.push(Box::new(base.clone()));
    if let Some(by) = by {
        for v in values {
            out.push(Box::new(Sliced::new(base.clone(), by.clone(), v.clone())));
        }
    }
}

/// Reads the spec in `path` and registers it ([`crate::registry::register`]) under its name and
/// protocol, so [`crate::registry::build`] (and `trust eval --verticals NAME`) finds it. Returns
/// the vertical's name.
pub fn register_file(path: &Path) -> Result<String> {
    let v = SpecVertical::from_file(path)?;
    let name = v.spec.name.clone();
    register(v)?;
    Ok(name)
}

fn register(v: SpecVertical) -> Result<()> {
    let name = v.spec.name.clone();
    let protocol = v.spec.protocol.clone();
    crate::registry::register(crate::registry::CustomVertical::new(
        name,
        [protocol],
        move |_protocol, opts| {
            Ok(Box::new(
                v.clone()
                    .with_samples(opts.samples)
                    .with_chat_format(opts.chat.clone())
                    .with_default_scorer_label(opts.scorer_label.clone()),
            ))
        },
    ))
}

/// Registers every spec vertical recorded in a `trust eval --out` directory (`RUN/*/manifest.json`
/// whose `options.spec` is set) that is not registered yet, so reports, paired comparisons and
/// `trust check` work on the run without the spec file. Returns the names registered.
pub fn register_specs_in_run(run: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let Ok(entries) = std::fs::read_dir(run) else {
        return Ok(names);
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let m = dir.join(trust_core::runner::MANIFEST_FILE);
        let Ok(manifest) = trust_core::RunManifest::read(&m) else {
            continue;
        };
        if manifest.options.get("spec").is_none_or(|s| s.is_null())
            || crate::registry::protocols(&manifest.vertical).is_some()
        {
            continue;
        }
        let v = SpecVertical::from_recorded(&manifest.options)
            .map_err(|e| Error::Config(format!("{}: {e}", m.display())))?;
        names.push(v.spec.name.clone());
        register(v)?;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn templates_insert_fields_and_escape_braces() {
        let f = fields(&[("q", "Why?"), ("n", "3")]);
        assert_eq!(
            render_template("Q{n}: {q} {{json}}", &f).unwrap(),
            "Q3: Why? {json}"
        );
        let e = render_template("{nope}", &f).unwrap_err();
        assert!(e.contains("no field `nope`") && e.contains("n, q"), "{e}");
        assert!(render_template("a } b", &f).is_err());
        assert!(render_template("a { b", &f).is_err());
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const SPEC: &str = r#"
name = "mc"
[data]
file = "d.csv"
id = "id"
[prompt]
user = "{q}\nAnswer with A or B."
[parser]
kind = "options"
options = ["A", "B"]
answer = "gold"
[[metrics]]
kind = "mean"
name = "accuracy"
value = "correct"
by = "topic"
[[metrics]]
kind = "label_rate"
name = "unparsed_rate"
labels = ["unparsed"]
"#;

    #[test]
    fn options_parser_reads_the_leading_option() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "d.csv",
            "id,q,gold,topic\n1,x?,A,t1\n2,y?,B,t2\n",
        );
        let v = SpecVertical::from_toml(SPEC, dir.path()).unwrap();
        for (reply, want) in [
            ("A", Some("A")),
            (" (b) because", Some("B")),
            ("**A**.", Some("A")),
            ("Apples", None),
            ("I think B", None),
        ] {
            assert_eq!(v.parse_reply(reply).as_deref(), want, "{reply:?}");
        }
        // Slice values come from the data, sorted.
        let names: Vec<String> = v.metrics().iter().map(|m| m.name()).collect();
        assert_eq!(
            names,
            [
                "accuracy",
                "accuracy[topic=t1]",
                "accuracy[topic=t2]",
                "unparsed_rate"
            ]
        );
        let samples = v.load(&DataDir::empty()).unwrap();
        assert_eq!(
            samples[1].prompt,
            "\n\nHuman: y?\nAnswer with A or B.\n\nAssistant:"
        );
        let out = v
            .score_in(
                &samples[1],
                &ScoreContext::new(0, &[]),
                &[Response::from_replies(["B", "A", "??"])],
                &[],
            )
            .unwrap();
        assert_eq!(out.labels, ["B", "A", "unparsed"]);
        assert_eq!(out.unparsed, 1);
        assert_eq!(out.values["correct"], 0.5);
        assert_eq!(out.tags["topic"], "t2");
    }

    #[test]
    fn answers_match_options_with_the_parsers_case_folding() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "d.csv", "id,q,gold,topic\n1,x?,ÉTÉ,t1\n");
        let spec = SPEC.replace(r#"options = ["A", "B"]"#, r#"options = ["été", "hiver"]"#);
        let v = SpecVertical::from_toml(&spec, dir.path()).unwrap();
        assert_eq!(v.parse_reply("ÉTÉ, surely").as_deref(), Some("été"));
        let s = v.load(&DataDir::empty()).unwrap();
        let out = v
            .score_in(
                &s[0],
                &ScoreContext::new(0, &[]),
                &[Response::from_replies(["Été", "hiver"])],
                &[],
            )
            .unwrap();
        assert_eq!(out.values["correct"], 0.5);
    }

    #[test]
    fn bad_specs_are_errors_naming_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "d.csv",
            "id,q,gold,topic\n1,x?,A,t1\n1,y?,B,t2\n",
        );
        let e = SpecVertical::from_toml(SPEC, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("d.csv:3") && e.contains("repeats the one on line 2"),
            "{e}"
        );
        write(dir.path(), "d.csv", "id,q,gold,topic\n1,x?,A,t1\n");
        for (edit, want) in [
            (
                SPEC.replace("name = \"mc\"", "name = \"toxicity\""),
                "built-in",
            ),
            (
                SPEC.replace("name = \"mc\"", "name = \"a b\""),
                "letters, digits",
            ),
            (
                SPEC.replace("kind = \"mean\"", "kind = \"median\""),
                "median",
            ),
            (
                SPEC.replace("value = \"correct\"", "value = \"score\""),
                "[scorer]",
            ),
            (
                SPEC.replace("answer = \"gold\"", ""),
                "needs an `options` parser with `answer`",
            ),
            (SPEC.replace("{q}", "{question}"), "no field `question`"),
            (
                SPEC.replace("id = \"id\"", "idd = \"id\""),
                "unknown field `idd`",
            ),
            (SPEC.replace("d.csv", "d.txt"), "must end in .jsonl or .csv"),
            (
                SPEC.replace("[prompt]", "[prompt]\ntemplate = \"x\""),
                "not both",
            ),
            (
                SPEC.replace("[parser]", "[decoding]\nsamples = 3\n[parser]"),
                "needs sampling",
            ),
        ] {
            let e = SpecVertical::from_toml(&edit, dir.path())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "want {want:?} in: {e}");
        }
        let e = SpecVertical::from_toml(
            &SPEC.replace("[data]", "[data]\nsha256 = \"00\""),
            dir.path(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("the spec expects 00"), "{e}");
    }

    #[test]
    fn keyword_and_regex_parsers_take_the_first_matching_rule() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "d.jsonl", "{\"p\": \"hi\", \"n\": 5}\n");
        let spec = r#"
name = "kw"
[data]
file = "d.jsonl"
[prompt]
template = "{p} {n}"
[parser]
kind = "keywords"
labels = [{ label = "refused", any = ["I can't", "sorry"] }, { label = "helped", any = ["sure"] }]
[[metrics]]
kind = "label_rate"
name = "refusal_rate"
labels = ["refused"]
exclude = ["unparsed"]
"#;
        let v = SpecVertical::from_toml(spec, dir.path()).unwrap();
        assert_eq!(v.parse_reply("Sure, sorry").as_deref(), Some("refused"));
        assert_eq!(v.parse_reply("SURE").as_deref(), Some("helped"));
        assert_eq!(v.parse_reply("hmm"), None);
        // --samples K only changes sampled specs.
        assert_eq!(v.clone().with_samples(Some(5)).spec().decoding.samples, 1);
        let sampled = SpecVertical::from_toml(
            &spec.replace("[parser]", "[decoding]\ntemperature = 0.7\n[parser]"),
            dir.path(),
        )
        .unwrap()
        .with_samples(Some(5));
        let s = sampled.load(&DataDir::empty()).unwrap();
        let Request::Generate(g) = &sampled.requests(&s[0], 1)[0] else {
            panic!("a generation request")
        };
        assert_eq!((g.config.n, g.config.sampling.is_stochastic()), (5, true));
        let s = v.load(&DataDir::empty()).unwrap();
        assert_eq!((s[0].id.as_str(), s[0].prompt.as_str()), ("kw/1", "hi 5"));
        let re = spec
            .replace(
                r#"labels = [{ label = "refused", any = ["I can't", "sorry"] }, { label = "helped", any = ["sure"] }]"#,
                r#"labels = [{ label = "refused", pattern = "(?i)\\bcan(not|'t)\\b" }]
default = "helped""#,
            )
            .replace("\"keywords\"", "\"regex\"");
        let v = SpecVertical::from_toml(&re, dir.path()).unwrap();
        assert_eq!(
            v.parse_reply("I CANNOT do that").as_deref(),
            Some("refused")
        );
        assert_eq!(v.parse_reply("canned answer").as_deref(), Some("helped"));
        let bad = re.replace(r"(?i)\\bcan(not|'t)\\b", "(");
        let e = SpecVertical::from_toml(&bad, dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad pattern"), "{e}");
    }
}
