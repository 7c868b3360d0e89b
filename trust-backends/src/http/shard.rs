//! [`ShardedModel`]: spreads requests over several models serving the same weights.

use trust_core::{
    Capabilities, GenerateRequest, GenerateResponse, LanguageModel, LogLikelihood,
    LogLikelihoodRequest, ModelError, ModelInfo,
};

/// Sends request `i` of every batch to member `i % members.len()`, all members at once, and
/// puts the answers back in order. Meant for several servers of one model (e.g. two
/// `trust serve` or vLLM instances): since every backend makes a result a function of the
/// request alone (prompt, config, seed), a sharded run gives the same records as a run on one
/// server. Capabilities are those all members share; `info()` joins the members' ids with `,`
/// and takes the first member's backend name.
pub struct ShardedModel {
    members: Vec<Box<dyn LanguageModel>>,
}

impl ShardedModel {
    /// A sharded model; `None` when `members` is empty.
    pub fn new(members: Vec<Box<dyn LanguageModel>>) -> Option<Self> {
        (!members.is_empty()).then_some(ShardedModel { members })
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false (a sharded model has at least one member).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    async fn spread<Q: Clone + Send + Sync, A: Send, F>(&self, requests: &[Q], call: F) -> Vec<A>
    where
        F: for<'a> Fn(
                &'a dyn LanguageModel,
                Vec<Q>,
            )
                -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<A>> + Send + 'a>>
            + Sync,
    {
        let k = self.members.len();
        let parts: Vec<Vec<Q>> = (0..k)
            .map(|m| requests.iter().skip(m).step_by(k).cloned().collect())
            .collect();
        let answers = futures::future::join_all(
            self.members
                .iter()
                .zip(parts)
                .map(|(model, part)| call(model.as_ref(), part)),
        )
        .await;
        let mut iters: Vec<_> = answers.into_iter().map(|a| a.into_iter()).collect();
        let mut out = Vec::with_capacity(requests.len());
        for i in 0..requests.len() {
            match iters[i % k].next() {
                Some(a) => out.push(a),
                None => break,
            }
        }
        out
    }
}

#[async_trait::async_trait]
impl LanguageModel for ShardedModel {
    fn info(&self) -> ModelInfo {
        let ids: Vec<String> = self.members.iter().map(|m| m.info().id).collect();
        let first = self.members[0].info();
        ModelInfo {
            id: ids.join(","),
            backend: first.backend,
            weights_sha256: first.weights_sha256,
            details: format!(
                "sharded over {} models; {}",
                self.members.len(),
                first.details
            ),
        }
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = self.members[0].capabilities();
        for m in &self.members[1..] {
            let other = m.capabilities();
            caps.0.retain(|c| other.has(*c));
        }
        caps
    }

    async fn generate(
        &self,
        requests: &[GenerateRequest],
    ) -> Vec<Result<GenerateResponse, ModelError>> {
        let mut out = self
            .spread(requests, |m, part| {
                Box::pin(async move { m.generate(&part).await })
            })
            .await;
        while out.len() < requests.len() {
            out.push(Err(ModelError::Backend(
                "a shard returned too few results".into(),
            )));
        }
        out
    }

    async fn loglikelihood(
        &self,
        requests: &[LogLikelihoodRequest],
    ) -> Vec<Result<LogLikelihood, ModelError>> {
        let mut out = self
            .spread(requests, |m, part| {
                Box::pin(async move { m.loglikelihood(&part).await })
            })
            .await;
        while out.len() < requests.len() {
            out.push(Err(ModelError::Backend(
                "a shard returned too few results".into(),
            )));
        }
        out
    }
}
