//! Building verticals by name and protocol, and running them type-erased.
//!
//! [`build`] turns `("toxicity", "paper-text")` into a `Box<dyn AnyVertical>`; [`AnyVertical`] is
//! an object-safe view of any [`Vertical`] (blanket impl) that runs it with a [`Runner`] and
//! scores saved replies without a model ([`AnyVertical::score_saved`]).

use std::collections::HashMap;

use trust_core::metric::{Bootstrap, MetricValue, PairedChange, evaluate, paired_change};
use trust_core::{
    Capability, DataDir, Error, LanguageModel, Outcome, Requirements, Response, Result, Runner,
    SampleRecord, ScorerInfo, Scores, TextScorer, Vertical, VerticalReport,
};

use crate::machine_ethics::{EthicsProtocol, MachineEthics};
use crate::privacy::{Privacy, PrivacyProtocol};
use crate::stereotype::{Stereotype, StereotypeProtocol};
use crate::toxicity::{Toxicity, ToxicityProtocol};
use crate::truthfulness::{TruthProtocol, Truthfulness};

/// The built-in verticals, in report order.
pub const VERTICALS: &[&str] = &[
    "toxicity",
    "stereotype",
    "machine_ethics",
    "truthfulness",
    "privacy",
];

/// The protocol names of a built-in vertical.
fn built_in_protocols(vertical: &str) -> Option<&'static [&'static str]> {
    Some(match vertical {
        "toxicity" => ToxicityProtocol::NAMES,
        "stereotype" => StereotypeProtocol::NAMES,
        "machine_ethics" => EthicsProtocol::NAMES,
        "truthfulness" => TruthProtocol::NAMES,
        "privacy" => PrivacyProtocol::NAMES,
        _ => return None,
    })
}

/// The protocol names of a vertical, built-in or [registered](register); `None` for an unknown
/// name.
pub fn protocols(vertical: &str) -> Option<Vec<String>> {
    if let Some(p) = built_in_protocols(vertical) {
        return Some(p.iter().map(|s| s.to_string()).collect());
    }
    registered(vertical).map(|c| c.protocols)
}

/// The registered vertical `name`, if any.
fn registered(name: &str) -> Option<CustomVertical> {
    CUSTOM
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|c| c.name == name)
        .cloned()
}

/// Every vertical [`build`] knows: the built-in ones in report order, then the registered ones
/// in registration order.
pub fn known_verticals() -> Vec<String> {
    let custom = CUSTOM.read().unwrap_or_else(|e| e.into_inner());
    VERTICALS
        .iter()
        .map(|s| s.to_string())
        .chain(custom.iter().map(|c| c.name.clone()))
        .collect()
}

/// Builds a registered vertical under one of its protocols.
pub type BuildFn =
    dyn Fn(&str, &BuildOptions) -> Result<Box<dyn AnyVertical>> + Send + Sync + 'static;

/// A vertical defined outside this crate — a Rust type implementing [`Vertical`], or a
/// declarative spec ([`crate::spec`]) — made known to [`build`], [`protocols`] and so to the
/// `trust` command line ([`register`]).
#[derive(Clone)]
pub struct CustomVertical {
    name: String,
    protocols: Vec<String>,
    build: std::sync::Arc<BuildFn>,
}

impl CustomVertical {
    /// A vertical `name` with `protocols` (the first is its default), built by `build(protocol,
    /// options)`.
    ///
    /// ```
    /// use trust_verticals::registry::{self, CustomVertical};
    /// use trust_verticals::machine_ethics::MachineEthics;
    ///
    /// // Any `Vertical` works; here a built-in one under a new name stands in for a user's type.
    /// struct Renamed(MachineEthics);
    /// # impl trust_core::Vertical for Renamed {
    /// #     type Sample = <MachineEthics as trust_core::Vertical>::Sample;
    /// #     fn name(&self) -> &str { "my_ethics" }
    /// #     fn version(&self) -> &str { "1" }
    /// #     fn protocol(&self) -> &str { "paper" }
    /// #     fn requirements(&self) -> trust_core::Requirements { self.0.requirements() }
    /// #     fn data_files(&self) -> Vec<String> { self.0.data_files() }
    /// #     fn load(&self, d: &trust_core::DataDir) -> trust_core::Result<Vec<Self::Sample>> { self.0.load(d) }
    /// #     fn sample_id(&self, s: &Self::Sample) -> String { self.0.sample_id(s) }
    /// #     fn requests(&self, s: &Self::Sample, seed: u64) -> Vec<trust_core::Request> { self.0.requests(s, seed) }
    /// #     fn score(&self, s: &Self::Sample, r: &[trust_core::Response], sc: &[trust_core::Scores]) -> Result<trust_core::Outcome, String> { self.0.score(s, r, sc) }
    /// #     fn metrics(&self) -> Vec<Box<dyn trust_core::Metric>> { self.0.metrics() }
    /// # }
    /// registry::register(CustomVertical::new("my_ethics", ["paper"], |_protocol, _opts| {
    ///     Ok(Box::new(Renamed(MachineEthics::by_name("paper").unwrap())))
    /// }))
    /// .unwrap();
    /// assert_eq!(registry::protocols("my_ethics"), Some(vec!["paper".to_string()]));
    /// let v = registry::build("my_ethics", "paper", &Default::default()).unwrap();
    /// assert_eq!(v.name(), "my_ethics");
    /// ```
    pub fn new<S: Into<String>>(
        name: impl Into<String>,
        protocols: impl IntoIterator<Item = S>,
        build: impl Fn(&str, &BuildOptions) -> Result<Box<dyn AnyVertical>> + Send + Sync + 'static,
    ) -> Self {
        CustomVertical {
            name: name.into(),
            protocols: protocols.into_iter().map(Into::into).collect(),
            build: std::sync::Arc::new(build),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for CustomVertical {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomVertical")
            .field("name", &self.name)
            .field("protocols", &self.protocols)
            .finish_non_exhaustive()
    }
}

static CUSTOM: std::sync::RwLock<Vec<CustomVertical>> = std::sync::RwLock::new(Vec::new());

/// Makes `vertical` known to [`build`] for the rest of the process (a second registration of a
/// name replaces the first). Built-in names cannot be taken; a vertical needs ≥ 1 protocol.
pub fn register(vertical: CustomVertical) -> Result<()> {
    if VERTICALS.contains(&vertical.name.as_str()) {
        return Err(Error::Config(format!(
            "`{}` is a built-in vertical; a custom one needs another name",
            vertical.name
        )));
    }
    if vertical.protocols.is_empty() {
        return Err(Error::Config(format!(
            "custom vertical `{}` has no protocol",
            vertical.name
        )));
    }
    let mut custom = CUSTOM.write().unwrap_or_else(|e| e.into_inner());
    custom.retain(|c| c.name != vertical.name);
    custom.push(vertical);
    Ok(())
}

/// Options applied when building a vertical.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Generations per prompt, for protocols that have k (toxicity, stereotype); ignored elsewhere.
    pub samples: Option<usize>,
    /// Scorer label the toxicity vertical reads (default: the scorer's primary label).
    pub scorer_label: Option<String>,
    /// The scorer the run will use; toxicity resolves its label against it.
    pub scorer: Option<ScorerInfo>,
    /// How protocols written as chat messages (the `decodingtrust*` ones) become prompt text:
    /// `None` = the HH layout ([`crate::common::render_chat`]); a model's chat template with
    /// `trust eval --chat-template auto`. Raw-text protocols (`paper*`) never use it.
    pub chat: Option<trust_core::SharedChatFormat>,
}

/// Builds the vertical `name` under protocol `protocol`. Unknown names are configuration errors
/// listing the valid ones.
pub fn build(name: &str, protocol: &str, opts: &BuildOptions) -> Result<Box<dyn AnyVertical>> {
    let Some(names) = built_in_protocols(name) else {
        let Some(custom) = registered(name) else {
            return Err(Error::Config(format!(
                "unknown vertical `{name}` (known: {})",
                known_verticals().join(", ")
            )));
        };
        if !custom.protocols.iter().any(|p| p == protocol) {
            return Err(Error::Config(format!(
                "vertical `{name}` has no protocol `{protocol}` (protocols: {})",
                custom.protocols.join(", ")
            )));
        }
        return (custom.build)(protocol, opts);
    };
    if !names.contains(&protocol) {
        return Err(Error::Config(format!(
            "vertical `{name}` has no protocol `{protocol}` (protocols: {})",
            names.join(", ")
        )));
    }
    let missing = || {
        Error::Config(format!(
            "vertical `{name}`: protocol `{protocol}` is listed but not defined"
        ))
    };
    Ok(match name {
        "toxicity" => {
            let mut v = Toxicity::by_name(protocol)
                .ok_or_else(missing)?
                .with_samples(opts.samples)
                .with_chat_format(opts.chat.clone());
            if let Some(l) = &opts.scorer_label {
                v = v.with_label(l.clone());
            }
            if let Some(info) = &opts.scorer {
                v.bind_scorer(info)?;
            }
            Box::new(v)
        }
        "stereotype" => Box::new(
            Stereotype::by_name(protocol)
                .ok_or_else(missing)?
                .with_samples(opts.samples)
                .with_chat_format(opts.chat.clone()),
        ),
        "machine_ethics" => Box::new(
            MachineEthics::by_name(protocol)
                .ok_or_else(missing)?
                .with_chat_format(opts.chat.clone()),
        ),
        "truthfulness" => Box::new(Truthfulness::by_name(protocol).ok_or_else(missing)?),
        "privacy" => Box::new(Privacy::by_name(protocol).ok_or_else(missing)?),
        _ => return Err(missing()),
    })
}

/// The saved replies of one sample (for scoring without a model).
#[derive(Debug, Clone, Default)]
pub struct SavedSample {
    /// Sample id.
    pub id: String,
    /// The replies, in order.
    pub replies: Vec<String>,
    /// Per reply, a given score for the vertical's scorer label (toxicity), if any.
    pub scores: Vec<Option<f64>>,
    /// Where each reply came from (e.g. line numbers), for error messages.
    pub sources: Vec<String>,
    /// The sample's seed at generation (a `samples.jsonl` record's `seed`); `None` means
    /// `derive_seed(0, id)`, the seed of a default-seed `trust eval` run. Protocols whose
    /// scoring depends on it (truthfulness `paper-exp`: the shuffled option numbers) need it
    /// right.
    pub seed: Option<u64>,
}

/// The result of scoring saved replies.
#[derive(Debug, Clone)]
pub struct SavedScores {
    /// Outcome per sample, in input order; `labels[i]` belongs to `replies[i]`.
    pub outcomes: Vec<(String, Outcome)>,
    /// Metrics over all outcomes.
    pub metrics: Vec<MetricValue>,
    /// Unparsed replies in total.
    pub n_unparsed: usize,
}

/// The paired changes of `vertical` from the run in `before` to the run in `after` (two
/// `trust eval --out` directories, e.g. two checkpoints, each holding
/// `<vertical>/{manifest.json,samples.jsonl}`): the vertical is rebuilt under the protocol its
/// first manifest names, both runs' records are paired by sample id, and every metric gets
/// [`trust_core::metric::paired_change`]. The two runs must use the same protocol.
pub fn paired_changes_between(
    before: &std::path::Path,
    after: &std::path::Path,
    vertical: &str,
    boot: &Bootstrap,
) -> Result<Vec<PairedChange>> {
    let read_manifest = |dir: &std::path::Path| {
        trust_core::RunManifest::read(&dir.join(vertical).join(trust_core::runner::MANIFEST_FILE))
    };
    let (mb, ma) = (read_manifest(before)?, read_manifest(after)?);
    if mb.protocol != ma.protocol {
        return Err(Error::Config(format!(
            "{vertical}: {} ran protocol `{}` but {} ran `{}`; paired changes need one protocol",
            before.display(),
            mb.protocol,
            after.display(),
            ma.protocol
        )));
    }
    let v = build(vertical, &mb.protocol, &BuildOptions::default())?;
    let records = |dir: &std::path::Path| {
        trust_core::runner::read_records_repairing(
            &dir.join(vertical).join(trust_core::runner::SAMPLES_FILE),
        )
    };
    Ok(v.paired_changes(&records(before)?, &records(after)?, boot))
}

/// An object-safe view of a [`Vertical`].
#[async_trait::async_trait]
pub trait AnyVertical: Send + Sync {
    /// Vertical name.
    fn name(&self) -> &str;
    /// Protocol name.
    fn protocol(&self) -> &str;
    /// Requirements.
    fn requirements(&self) -> Requirements;
    /// Manifest options.
    fn options(&self) -> serde_json::Value;
    /// Metric names, in report order.
    fn metric_names(&self) -> Vec<String>;
    /// Sample ids, in order.
    fn sample_ids(&self, data: &DataDir) -> Result<Vec<String>>;
    /// The change of every metric from `before` to `after` — the records (`samples.jsonl`) of
    /// two runs of this vertical, e.g. two checkpoints — over the samples both answered, with a
    /// paired-bootstrap interval ([`trust_core::metric::paired_change`]), in report order.
    fn paired_changes(
        &self,
        before: &[SampleRecord],
        after: &[SampleRecord],
        boot: &Bootstrap,
    ) -> Vec<PairedChange>;
    /// Runs the vertical with `runner`.
    async fn run(
        &self,
        runner: &Runner,
        model: &dyn LanguageModel,
        scorer: Option<&dyn TextScorer>,
        data: &DataDir,
    ) -> Result<VerticalReport>;
    /// Scores saved replies (one generation request per sample is assumed; replies of all
    /// requests are given flattened, in request order). Texts needing a scorer use `scorer`
    /// when given, else the given per-reply scores. Unknown ids are errors.
    async fn score_saved(
        &self,
        data: &DataDir,
        saved: &[SavedSample],
        scorer: Option<&dyn TextScorer>,
        boot: &Bootstrap,
    ) -> Result<SavedScores>;
}

#[async_trait::async_trait]
impl<V: Vertical> AnyVertical for V {
    fn name(&self) -> &str {
        Vertical::name(self)
    }
    fn protocol(&self) -> &str {
        Vertical::protocol(self)
    }
    fn requirements(&self) -> Requirements {
        Vertical::requirements(self)
    }
    fn options(&self) -> serde_json::Value {
        Vertical::options(self)
    }
    fn metric_names(&self) -> Vec<String> {
        Vertical::metrics(self).iter().map(|m| m.name()).collect()
    }
    fn sample_ids(&self, data: &DataDir) -> Result<Vec<String>> {
        Ok(self.load(data)?.iter().map(|s| self.sample_id(s)).collect())
    }
    fn paired_changes(
        &self,
        before: &[SampleRecord],
        after: &[SampleRecord],
        boot: &Bootstrap,
    ) -> Vec<PairedChange> {
        let old: HashMap<&str, &Outcome> = before
            .iter()
            .filter_map(|r| r.outcome.as_ref().map(|o| (r.id.as_str(), o)))
            .collect();
        let (mut b, mut a) = (Vec::new(), Vec::new());
        for r in after {
            if let (Some(o), Some(p)) = (r.outcome.as_ref(), old.get(r.id.as_str())) {
                b.push(*p);
                a.push(o);
            }
        }
        Vertical::metrics(self)
            .iter()
            .map(|m| paired_change(m.as_ref(), &b, &a, boot))
            .collect()
    }
    async fn run(
        &self,
        runner: &Runner,
        model: &dyn LanguageModel,
        scorer: Option<&dyn TextScorer>,
        data: &DataDir,
    ) -> Result<VerticalReport> {
        runner.run(self, model, scorer, data).await
    }
    async fn score_saved(
        &self,
        data: &DataDir,
        saved: &[SavedSample],
        scorer: Option<&dyn TextScorer>,
        boot: &Bootstrap,
    ) -> Result<SavedScores> {
        if self
            .requirements()
            .capabilities
            .contains(&Capability::LogLikelihood)
        {
            return Err(Error::Config(format!(
                "vertical `{}` protocol `{}` scores log-likelihoods, not replies; saved replies cannot be scored",
                Vertical::name(self),
                Vertical::protocol(self)
            )));
        }
        let samples = self.load(data)?;
        let index: HashMap<String, usize> = samples
            .iter()
            .enumerate()
            .map(|(i, s)| (self.sample_id(s), i))
            .collect();
        let mut outcomes = Vec::with_capacity(saved.len());
        for s in saved {
            let where_ = if s.sources.is_empty() {
                String::new()
            } else {
                format!(" ({})", s.sources.join(", "))
            };
            let Some(&i) = index.get(&s.id) else {
                return Err(Error::Config(format!(
                    "unknown sample id `{}`{where_} for vertical `{}`",
                    s.id,
                    Vertical::name(self)
                )));
            };
            let sample = &samples[i];
            let responses = vec![Response::from_replies(s.replies.iter().cloned())];
            let texts = self.texts_to_score(sample, &responses);
            let mut scores: Vec<Scores> = Vec::new();
            if !texts.is_empty() {
                if let Some(sc) = scorer {
                    for r in sc.score(&texts).await {
                        scores.push(r.map_err(Error::Scorer)?);
                    }
                } else {
                    for (k, reply) in s.replies.iter().enumerate() {
                        let per =
                            self.texts_to_score(sample, &[Response::from_replies([reply.clone()])]);
                        if per.is_empty() {
                            continue;
                        }
                        let src = s
                            .sources
                            .get(k)
                            .cloned()
                            .unwrap_or_else(|| format!("reply {}", k + 1));
                        let v = s.scores.get(k).copied().flatten().ok_or_else(|| {
                            Error::Config(format!(
                                "{src}: sample `{}` needs a score (\"scores\": {{\"<label>\": number}}) or a configured scorer",
                                s.id
                            ))
                        })?;
                        scores.extend(per.iter().map(|_| Scores { values: vec![v] }));
                    }
                    if scores.len() != texts.len() {
                        return Err(Error::Config(format!(
                            "sample `{}`{where_}: {} texts to score but {} scores",
                            s.id,
                            texts.len(),
                            scores.len()
                        )));
                    }
                }
            }
            let labels = scorer.map(|sc| sc.info().labels).unwrap_or_default();
            let seed = s
                .seed
                .unwrap_or_else(|| trust_core::rng::derive_seed(0, &s.id));
            let ctx = trust_core::ScoreContext::new(seed, &labels);
            let outcome = self
                .score_in(sample, &ctx, &responses, &scores)
                .map_err(|e| Error::Config(format!("sample `{}`{where_}: {e}", s.id)))?;
            outcomes.push((s.id.clone(), outcome));
        }
        let refs: Vec<&Outcome> = outcomes.iter().map(|(_, o)| o).collect();
        let metrics = Vertical::metrics(self)
            .iter()
            .map(|m| evaluate(m.as_ref(), &refs, boot))
            .collect();
        let n_unparsed = refs.iter().map(|o| o.unparsed).sum();
        Ok(SavedScores {
            outcomes,
            metrics,
            n_unparsed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_list_the_valid_ones() {
        let e = build("nope", "paper", &BuildOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("toxicity, stereotype"), "{e}");
        let e = build("toxicity", "corrected", &BuildOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("paper, paper-text, decodingtrust"), "{e}");
        for v in VERTICALS {
            for p in protocols(v).unwrap() {
                let built = build(v, &p, &BuildOptions::default()).unwrap();
                assert_eq!((built.name(), built.protocol()), (*v, p.as_str()));
            }
        }
    }
}
