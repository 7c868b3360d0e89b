//! Test utilities: a deterministic, scriptable [`MockModel`] and [`MockScorer`], so verticals and
//! the runner are tested without any backend.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{ModelError, ScorerError};
use crate::model::{
    Capabilities, Capability, Completion, FinishReason, GenerateRequest, GenerateResponse,
    LanguageModel, LogLikelihood, LogLikelihoodRequest, ModelInfo,
};
use crate::rng::{SplitMix64, derive_seed};
use crate::scorer::{ScorerInfo, Scores, TextScorer};

/// A scripted reply: if the prompt contains `contains`, answer `reply`.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Substring of the prompt.
    pub contains: String,
    /// The reply text.
    pub reply: String,
}

const WORDS: &[&str] = &[
    "yes", "no", "I", "agree", "disagree", "wrong", "not", "the", "a", "is", "this", "maybe",
    "cannot", "say",
];

/// A deterministic mock language model.
///
/// - Replies: the first [`Rule`] whose `contains` occurs in the prompt; otherwise a pseudo-random
///   word sequence that is a function of (prompt, seed for sampled decoding, completion index).
/// - Prompts containing `fail_marker` fail with [`ModelError::Backend`].
/// - Log-likelihood: per-token values derived from a hash of (context, continuation), one
///   "token" per whitespace-separated word; a rule's reply is treated as greedy, with log-prob 0.
pub struct MockModel {
    rules: Vec<Rule>,
    caps: Capabilities,
    fail_marker: Option<String>,
    calls: AtomicUsize,
    batch_sizes: Mutex<Vec<usize>>,
}

impl Default for MockModel {
    fn default() -> Self {
        Self::new()
    }
}

impl MockModel {
    /// A mock with every capability and no rules.
    pub fn new() -> Self {
        MockModel {
            rules: Vec::new(),
            caps: Capabilities::of(&[
                Capability::Generate,
                Capability::Sampling,
                Capability::BeamSearch,
                Capability::LogLikelihood,
            ]),
            fail_marker: None,
            calls: AtomicUsize::new(0),
            batch_sizes: Mutex::new(Vec::new()),
        }
    }
    /// Adds a rule.
    pub fn rule(mut self, contains: impl Into<String>, reply: impl Into<String>) -> Self {
        self.rules.push(Rule {
            contains: contains.into(),
            reply: reply.into(),
        });
        self
    }
    /// Restricts the capabilities (e.g. to simulate a chat API without log-likelihood).
    pub fn with_capabilities(mut self, caps: &[Capability]) -> Self {
        self.caps = Capabilities::of(caps);
        self
    }
    /// Requests whose prompt/context contains `marker` fail.
    pub fn fail_on(mut self, marker: impl Into<String>) -> Self {
        self.fail_marker = Some(marker.into());
        self
    }
    /// Number of batched calls so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
    /// Sizes of the batches received so far.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.batch_sizes.lock().expect("poisoned").clone()
    }

    fn note(&self, n: usize) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.batch_sizes.lock().expect("poisoned").push(n);
    }

    fn failing(&self, text: &str) -> bool {
        self.fail_marker
            .as_ref()
            .is_some_and(|m| text.contains(m.as_str()))
    }

    fn reply(&self, req: &GenerateRequest, index: usize) -> String {
        if let Some(r) = self.rules.iter().find(|r| req.prompt.contains(&r.contains)) {
            return r.reply.clone();
        }
        let seed = if req.config.sampling.is_stochastic() {
            req.seed
        } else {
            0
        };
        let mut rng = SplitMix64::new(derive_seed(seed ^ index as u64, &req.prompt));
        let n = 1 + rng.below(req.config.max_new_tokens.clamp(1, 12));
        (0..n)
            .map(|_| WORDS[rng.below(WORDS.len())])
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[async_trait::async_trait]
impl LanguageModel for MockModel {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            id: "mock".into(),
            backend: "mock".into(),
            weights_sha256: None,
            details: String::new(),
        }
    }
    fn capabilities(&self) -> Capabilities {
        self.caps.clone()
    }
    async fn generate(
        &self,
        requests: &[GenerateRequest],
    ) -> Vec<Result<GenerateResponse, ModelError>> {
        self.note(requests.len());
        requests
            .iter()
            .map(|req| {
                req.config.validate()?;
                if self.failing(&req.prompt) {
                    return Err(ModelError::Backend(format!(
                        "scripted failure for prompt {:?}",
                        req.prompt
                    )));
                }
                let completions = (0..req.config.n)
                    .map(|i| {
                        let text = self.reply(req, i);
                        let words = text.split_whitespace().count();
                        Completion {
                            text,
                            token_ids: (0..words as u32).collect(),
                            finish_reason: FinishReason::Length,
                        }
                    })
                    .collect();
                Ok(GenerateResponse { completions })
            })
            .collect()
    }
    async fn loglikelihood(
        &self,
        requests: &[LogLikelihoodRequest],
    ) -> Vec<Result<LogLikelihood, ModelError>> {
        if !self.caps.has(Capability::LogLikelihood) {
            return requests
                .iter()
                .map(|_| {
                    Err(ModelError::Unsupported {
                        model: "mock".into(),
                        capability: Capability::LogLikelihood,
                    })
                })
                .collect();
        }
        self.note(requests.len());
        requests
            .iter()
            .map(|r| {
                if self.failing(&r.context) {
                    return Err(ModelError::Backend("scripted failure".into()));
                }
                let scripted = self
                    .rules
                    .iter()
                    .any(|rule| r.context.contains(&rule.contains) && rule.reply == r.continuation);
                let mut rng = SplitMix64::new(derive_seed(
                    0,
                    &format!("{}\u{0}{}", r.context, r.continuation),
                ));
                let token_logprobs: Vec<f64> = r
                    .continuation
                    .split_whitespace()
                    .map(|_| {
                        if scripted {
                            0.0
                        } else {
                            -(0.05 + 3.0 * rng.next_f64())
                        }
                    })
                    .collect();
                if token_logprobs.is_empty() {
                    return Err(ModelError::InvalidRequest("empty continuation".into()));
                }
                let sum = token_logprobs.iter().sum();
                Ok(LogLikelihood {
                    token_logprobs,
                    sum,
                    is_greedy: scripted,
                })
            })
            .collect()
    }
}

/// A deterministic mock scorer with one label, `toxicity`: the share of words of the text that
/// are in a small list of "toxic" words, so tests can compute expected values by hand.
#[derive(Default)]
pub struct MockScorer {
    calls: AtomicUsize,
}

/// Words [`MockScorer`] counts as toxic.
pub const MOCK_TOXIC_WORDS: &[&str] = &["idiot", "stupid", "hate", "damn"];

impl MockScorer {
    /// The mock's score of `text`: toxic words / words (0 for empty text).
    pub fn score_of(text: &str) -> f64 {
        let words: Vec<String> = text
            .split_whitespace()
            .map(|w| {
                w.trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase()
            })
            .collect();
        if words.is_empty() {
            return 0.0;
        }
        words
            .iter()
            .filter(|w| MOCK_TOXIC_WORDS.contains(&w.as_str()))
            .count() as f64
            / words.len() as f64
    }
    /// Number of batched calls so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

#[async_trait::async_trait]
impl TextScorer for MockScorer {
    fn info(&self) -> ScorerInfo {
        ScorerInfo {
            id: "mock-scorer".into(),
            labels: vec!["toxicity".into()],
            primary: Some("toxicity".into()),
            weights_sha256: None,
        }
    }
    async fn score(&self, texts: &[String]) -> Vec<Result<Scores, ScorerError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        texts
            .iter()
            .map(|t| {
                Ok(Scores {
                    values: vec![Self::score_of(t)],
                })
            })
            .collect()
    }
}

/// For tests that read files of the repository (its `data/`, model fixtures): `Some(path)` when
/// `path` exists; otherwise `None` after printing why the test is skipped — a crate unpacked from
/// its published package has no repository around it. Under CI (`CI` set and not `0`/`false`) a
/// missing file is a failure instead, so a broken checkout never passes by skipping.
///
/// ```
/// # fn demo() {
/// let Some(data) = trust_core::testing::repo_path("../data") else {
///     return; // skipped outside the repository
/// };
/// # let _ = data;
/// # }
/// ```
pub fn repo_path(path: impl AsRef<std::path::Path>) -> Option<std::path::PathBuf> {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    repo_path_under(path.as_ref(), ci)
}

fn repo_path_under(path: &std::path::Path, ci: bool) -> Option<std::path::PathBuf> {
    if path.exists() {
        return Some(path.to_path_buf());
    }
    assert!(
        !ci,
        "{} is missing (CI is set, so the test fails instead of skipping)",
        path.display()
    );
    eprintln!(
        "skipped: {} is not here (outside the repository?)",
        path.display()
    );
    None
}

#[cfg(test)]
mod repo_path_tests {
    use super::repo_path_under;

    #[test]
    fn missing_repository_files_skip_outside_ci_and_fail_under_it() {
        let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(repo_path_under(here, false).as_deref(), Some(here));
        let gone = here.join("no-such-file");
        assert_eq!(repo_path_under(&gone, false), None);
        let under_ci = std::panic::catch_unwind(|| repo_path_under(&gone, true));
        assert!(under_ci.is_err(), "CI must fail, not skip");
    }
}
