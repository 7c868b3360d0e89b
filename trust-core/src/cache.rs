//! A generation cache as a model wrapper (tower-style): `Cached<M>` is itself a
//! [`LanguageModel`].
//!
//! The key is sha256 over (model id, weights hash, backend and its details — dtype, device,
//! quantisation, HTTP options —, prompt, decoding config, and — only for sampled decoding — the
//! request seed, which encodes the sample and its index). Errors are never stored.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::ModelError;
use crate::model::{
    Capabilities, GenerateRequest, GenerateResponse, LanguageModel, LogLikelihood,
    LogLikelihoodRequest, ModelInfo,
};

/// Storage behind [`Cached`].
pub trait GenerationCache: Send + Sync {
    /// Looks a key up.
    fn get(&self, key: &str) -> Option<GenerateResponse>;
    /// Stores a successful response.
    fn put(&self, key: &str, value: &GenerateResponse);
}

/// An in-memory cache.
#[derive(Default)]
pub struct MemoryCache(Mutex<HashMap<String, GenerateResponse>>);

impl GenerationCache for MemoryCache {
    fn get(&self, key: &str) -> Option<GenerateResponse> {
        self.0.lock().expect("cache poisoned").get(key).cloned()
    }
    fn put(&self, key: &str, value: &GenerateResponse) {
        self.0
            .lock()
            .expect("cache poisoned")
            .insert(key.to_string(), value.clone());
    }
}

/// A directory of one JSON file per key, written atomically (temp file + rename), so concurrent
/// runs and crashes never leave a half-written entry.
pub struct DirCache {
    dir: PathBuf,
}

impl DirCache {
    /// A cache in `dir` (created if needed).
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(DirCache { dir })
    }
}

impl GenerationCache for DirCache {
    fn get(&self, key: &str) -> Option<GenerateResponse> {
        let text = std::fs::read_to_string(self.dir.join(format!("{key}.json"))).ok()?;
        serde_json::from_str(&text).ok()
    }
    fn put(&self, key: &str, value: &GenerateResponse) {
        let Ok(text) = serde_json::to_string(value) else {
            return;
        };
        let tmp = self.dir.join(format!("{key}.{}.tmp", std::process::id()));
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, self.dir.join(format!("{key}.json")));
        }
    }
}

/// The cache key of a generation request on a model.
pub fn cache_key(model: &ModelInfo, req: &GenerateRequest) -> String {
    let seed = req.config.sampling.is_stochastic().then_some(req.seed);
    let v = serde_json::json!({
        "model": model.id,
        "weights": model.weights_sha256,
        "backend": model.backend,
        "details": model.details,
        "prompt": req.prompt,
        "config": req.config,
        "seed": seed,
    });
    crate::data::sha256_bytes(v.to_string().as_bytes())
}

/// A model wrapper that answers repeated generation requests from a cache.
pub struct Cached<M, C> {
    inner: M,
    cache: C,
    hits: AtomicUsize,
    lookups: AtomicUsize,
}

impl<M: LanguageModel, C: GenerationCache> Cached<M, C> {
    /// Wraps `inner` with `cache`.
    pub fn new(inner: M, cache: C) -> Self {
        Cached {
            inner,
            cache,
            hits: AtomicUsize::new(0),
            lookups: AtomicUsize::new(0),
        }
    }
    /// Number of requests answered from the cache so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
    /// Number of generation requests looked up so far (hits and misses).
    pub fn lookups(&self) -> usize {
        self.lookups.load(Ordering::Relaxed)
    }
    /// The wrapped model.
    pub fn inner(&self) -> &M {
        &self.inner
    }
}

#[async_trait::async_trait]
impl<M: LanguageModel, C: GenerationCache> LanguageModel for Cached<M, C> {
    fn info(&self) -> ModelInfo {
        self.inner.info()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn generate(
        &self,
        requests: &[GenerateRequest],
    ) -> Vec<Result<GenerateResponse, ModelError>> {
        let info = self.inner.info();
        let keys: Vec<String> = requests.iter().map(|r| cache_key(&info, r)).collect();
        let mut out: Vec<Option<Result<GenerateResponse, ModelError>>> =
            keys.iter().map(|k| self.cache.get(k).map(Ok)).collect();
        let hits = out.iter().filter(|o| o.is_some()).count();
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.lookups.fetch_add(requests.len(), Ordering::Relaxed);
        let miss_idx: Vec<usize> = (0..requests.len()).filter(|&i| out[i].is_none()).collect();
        if !miss_idx.is_empty() {
            let misses: Vec<GenerateRequest> =
                miss_idx.iter().map(|&i| requests[i].clone()).collect();
            let answers = self.inner.generate(&misses).await;
            if answers.len() != misses.len() {
                let e = ModelError::Backend(format!(
                    "backend returned {} results for {} requests",
                    answers.len(),
                    misses.len()
                ));
                for &i in &miss_idx {
                    out[i] = Some(Err(e.clone()));
                }
            } else {
                for (&i, a) in miss_idx.iter().zip(answers) {
                    if let Ok(resp) = &a {
                        self.cache.put(&keys[i], resp);
                    }
                    out[i] = Some(a);
                }
            }
        }
        out.into_iter()
            .map(|o| o.expect("every slot filled"))
            .collect()
    }
    async fn loglikelihood(
        &self,
        requests: &[LogLikelihoodRequest],
    ) -> Vec<Result<LogLikelihood, ModelError>> {
        self.inner.loglikelihood(requests).await
    }
}
