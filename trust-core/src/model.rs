//! The language-model trait and its request/response types.
//!
//! A backend (candle, ONNX Runtime, HTTP, the [`crate::testing::MockModel`]) implements
//! [`LanguageModel`]. Requests are batched: a call takes a slice of requests and returns one
//! result per request, in order, so one bad request never sinks its batch.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// Something a model can or cannot do. Verticals declare what they need (see
/// [`crate::vertical::Requirements`]); the runner checks before sending any request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Capability {
    /// Greedy text generation.
    Generate,
    /// Seeded sampling (temperature, top-p, n samples).
    Sampling,
    /// Beam search / HF beam-sample decoding (`num_beams > 1`).
    BeamSearch,
    /// Log-likelihood of a continuation given a context, per token.
    LogLikelihood,
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Capability::Generate => "generation",
            Capability::Sampling => "sampled generation",
            Capability::BeamSearch => "beam search (num_beams > 1)",
            Capability::LogLikelihood => "log-likelihood scoring",
        })
    }
}

/// The set of capabilities a model has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities(pub BTreeSet<Capability>);

impl Capabilities {
    /// A set from a list.
    pub fn of(caps: &[Capability]) -> Self {
        Capabilities(caps.iter().copied().collect())
    }
    /// Whether `cap` is present.
    pub fn has(&self, cap: Capability) -> bool {
        self.0.contains(&cap)
    }
}

/// How tokens are chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Sampling {
    /// Argmax at every step.
    Greedy,
    /// Multinomial sampling from softmax(logits / temperature), restricted to the top-p nucleus
    /// (`top_p = 1.0` disables the nucleus; `top_k = 0` disables top-k).
    Sample {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Nucleus mass in (0, 1].
        top_p: f64,
        /// Keep only the k most likely tokens (0 = off). HF `generate` defaults to 50.
        #[serde(default)]
        top_k: usize,
    },
}

impl Sampling {
    /// Whether decoding depends on the request seed.
    pub fn is_stochastic(&self) -> bool {
        matches!(self, Sampling::Sample { .. })
    }
}

/// When generation stops early.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", content = "ids", rename_all = "snake_case")]
pub enum StopPolicy {
    /// Stop on the model's own EOS token(s) (from its config).
    ModelEos,
    /// Stop on exactly these ids and nothing else. The paper's code passes `eos_token_id=50256`
    /// (GPT-2's end-of-text), which never fires for Pythia: `Tokens(vec![50256])` reproduces that.
    Tokens(Vec<u32>),
    /// Never stop early: always produce `max_new_tokens`.
    Never,
}

/// Decoding settings of a generation request. Part of the generation-cache key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodingConfig {
    /// Maximum number of new tokens.
    pub max_new_tokens: usize,
    /// Greedy or sampled.
    pub sampling: Sampling,
    /// Number of returned sequences (HF `num_return_sequences`).
    pub n: usize,
    /// Beam count (HF `num_beams`); 1 = no beam search. With sampling this is HF beam-sample.
    #[serde(default = "one")]
    pub num_beams: usize,
    /// Token-level stop policy.
    pub stop: StopPolicy,
    /// Text is cut before the first occurrence of any of these strings, and generation stops.
    #[serde(default)]
    pub stop_strings: Vec<String>,
}

fn one() -> usize {
    1
}

impl DecodingConfig {
    /// Greedy decoding of up to `max_new_tokens`, stopping on the model's EOS.
    pub fn greedy(max_new_tokens: usize) -> Self {
        DecodingConfig {
            max_new_tokens,
            sampling: Sampling::Greedy,
            n: 1,
            num_beams: 1,
            stop: StopPolicy::ModelEos,
            stop_strings: Vec::new(),
        }
    }

    /// Sampling at `temperature` with nucleus `top_p`, `n` sequences.
    pub fn sampled(max_new_tokens: usize, temperature: f64, top_p: f64, n: usize) -> Self {
        DecodingConfig {
            max_new_tokens,
            sampling: Sampling::Sample {
                temperature,
                top_p,
                top_k: 0,
            },
            n,
            num_beams: 1,
            stop: StopPolicy::ModelEos,
            stop_strings: Vec::new(),
        }
    }

    /// Same config with another stop policy.
    pub fn with_stop(mut self, stop: StopPolicy) -> Self {
        self.stop = stop;
        self
    }

    /// Capabilities a model needs to serve this config.
    pub fn required_capabilities(&self) -> Vec<Capability> {
        let mut caps = vec![Capability::Generate];
        if self.sampling.is_stochastic() {
            caps.push(Capability::Sampling);
        }
        if self.num_beams > 1 {
            caps.push(Capability::BeamSearch);
        }
        caps
    }

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.n == 0 {
            return Err(ModelError::InvalidRequest("n must be at least 1".into()));
        }
        if self.num_beams == 0 {
            return Err(ModelError::InvalidRequest(
                "num_beams must be at least 1".into(),
            ));
        }
        if let Sampling::Sample {
            temperature, top_p, ..
        } = self.sampling
        {
            if !(temperature > 0.0 && temperature.is_finite()) {
                return Err(ModelError::InvalidRequest(format!(
                    "temperature must be > 0, got {temperature}"
                )));
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(ModelError::InvalidRequest(format!(
                    "top_p must be in (0, 1], got {top_p}"
                )));
            }
        }
        Ok(())
    }
}

/// One generation request: a raw-text prompt (no chat template is applied by trust-core).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// The prompt text, exactly as the model sees it.
    pub prompt: String,
    /// Decoding settings.
    pub config: DecodingConfig,
    /// Seed of this request's sampler. Backends must make the result a function of
    /// (prompt, config, seed) only — never of the batch it was sent in.
    pub seed: u64,
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// `max_new_tokens` reached.
    Length,
    /// A stop token was produced (it is not part of `text`).
    StopToken,
    /// A stop string was produced (`text` is cut before it).
    StopString,
}

/// One generated sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The new text only (prompt excluded), decoded without special tokens.
    pub text: String,
    /// The new token ids (stop token excluded).
    pub token_ids: Vec<u32>,
    /// Why it ended.
    pub finish_reason: FinishReason,
}

/// The `n` sequences generated for one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateResponse {
    /// Exactly `config.n` completions.
    pub completions: Vec<Completion>,
}

/// Log-likelihood of `continuation` given `context`. Backends tokenise the two separately (no
/// special tokens) and concatenate the ids, as lm-eval-harness and the HF fixtures do.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LogLikelihoodRequest {
    /// The conditioning text.
    pub context: String,
    /// The scored text (must tokenise to at least one token).
    pub continuation: String,
}

/// The answer to a [`LogLikelihoodRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLikelihood {
    /// log p(token_t | everything before it), one per continuation token.
    pub token_logprobs: Vec<f64>,
    /// Sum of `token_logprobs`.
    pub sum: f64,
    /// Whether every continuation token is the argmax at its position.
    pub is_greedy: bool,
}

/// Identity of a model, recorded in run manifests and used in cache keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ModelInfo {
    /// Human-readable id (a path or a served model name).
    pub id: String,
    /// Backend name (`candle`, `ort`, `http`, `mock`).
    pub backend: String,
    /// sha256 over the weight files (hex), when the backend can compute it.
    pub weights_sha256: Option<String>,
    /// Free-form details (dtype, device, architecture).
    #[serde(default)]
    pub details: String,
}

/// A causal language model.
///
/// Implementations take `&self` and are `Send + Sync`, so one model serves many concurrent
/// callers. Every batched method returns exactly one result per request, in order.
#[async_trait::async_trait]
pub trait LanguageModel: Send + Sync {
    /// Identity for manifests and caches.
    fn info(&self) -> ModelInfo;

    /// What this model can do.
    fn capabilities(&self) -> Capabilities;

    /// Generates text for each request.
    async fn generate(
        &self,
        requests: &[GenerateRequest],
    ) -> Vec<Result<GenerateResponse, ModelError>>;

    /// Scores continuations. The default reports [`Capability::LogLikelihood`] as unsupported.
    async fn loglikelihood(
        &self,
        requests: &[LogLikelihoodRequest],
    ) -> Vec<Result<LogLikelihood, ModelError>> {
        let err = ModelError::Unsupported {
            model: self.info().id,
            capability: Capability::LogLikelihood,
        };
        requests.iter().map(|_| Err(err.clone())).collect()
    }
}

macro_rules! forward_model {
    ($($ty:ty),*) => {$(
        #[async_trait::async_trait]
        impl<M: LanguageModel + ?Sized> LanguageModel for $ty {
            fn info(&self) -> ModelInfo {
                (**self).info()
            }
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }
            async fn generate(
                &self,
                requests: &[GenerateRequest],
            ) -> Vec<Result<GenerateResponse, ModelError>> {
                (**self).generate(requests).await
            }
            async fn loglikelihood(
                &self,
                requests: &[LogLikelihoodRequest],
            ) -> Vec<Result<LogLikelihood, ModelError>> {
                (**self).loglikelihood(requests).await
            }
        }
    )*};
}
forward_model!(Arc<M>, Box<M>, &M);
