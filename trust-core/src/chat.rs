//! How a protocol's chat (a system message and a user message) becomes the raw text a model
//! receives.
//!
//! Protocols written for chat APIs (DecodingTrust's) describe each prompt as messages. trust's
//! models take raw text, so the protocol renders the messages with a [`ChatFormat`]: by default
//! [`HhLayout`], the Anthropic HH-RLHF layout (`{system}\n\nHuman: {user}\n\nAssistant:`) the
//! paper's aligned models were trained on, or a model's own chat template (`trust eval
//! --chat-template auto`, implemented by the candle backend's `ChatTemplate`). The format's
//! [`ChatFormat::describe`] is recorded in the run manifest, so runs under different formats
//! never resume into each other.

use std::sync::Arc;

/// Renders chat messages as a model's prompt text.
pub trait ChatFormat: Send + Sync + std::fmt::Debug {
    /// The prompt for `messages` (`(role, content)` pairs, e.g. `("system", ..)`, `("user",
    /// ..)`), ready for the assistant's reply. Errors say why the messages cannot be rendered.
    fn render(&self, messages: &[(&str, &str)]) -> Result<String, String>;
    /// A stable description recorded in manifests (e.g. the layout, or a template's sha256).
    fn describe(&self) -> String;
}

/// A shared chat format.
pub type SharedChatFormat = Arc<dyn ChatFormat>;

/// The Anthropic HH-RLHF layout: `{system}\n\nHuman: {user}\n\nAssistant:` (system messages
/// joined with `\n\n`, each user turn `\n\nHuman: ...`, each assistant turn `\n\nAssistant: ...`,
/// then `\n\nAssistant:`).
#[derive(Debug, Clone, Copy, Default)]
pub struct HhLayout;

/// [`HhLayout`]'s description in manifests.
pub const HH_LAYOUT: &str = "{system}\\n\\nHuman: {user}\\n\\nAssistant:";

impl ChatFormat for HhLayout {
    fn render(&self, messages: &[(&str, &str)]) -> Result<String, String> {
        let mut out = String::new();
        for (role, content) in messages {
            match *role {
                "system" => out.push_str(content),
                "user" => {
                    out.push_str("\n\nHuman: ");
                    out.push_str(content);
                }
                "assistant" => {
                    out.push_str("\n\nAssistant: ");
                    out.push_str(content);
                }
                other => return Err(format!("the HH layout has no `{other}` role")),
            }
        }
        out.push_str("\n\nAssistant:");
        Ok(out)
    }
    fn describe(&self) -> String {
        HH_LAYOUT.to_string()
    }
}

/// A model whose raw prompts are sent as one user message through a chat format (`trust eval
/// --chat-template wrap`): a generation prompt becomes `format.render([("user", prompt)])`, a
/// log-likelihood context likewise (the continuation is scored as the start of the reply). The
/// format is named in [`ModelInfo::details`](crate::ModelInfo), so manifests record it.
#[derive(Debug)]
pub struct ChatWrapped<M> {
    inner: M,
    format: SharedChatFormat,
}

impl<M> ChatWrapped<M> {
    /// Wraps `inner`.
    pub fn new(inner: M, format: SharedChatFormat) -> Self {
        ChatWrapped { inner, format }
    }

    fn wrap(&self, prompt: &str) -> Result<String, crate::ModelError> {
        self.format
            .render(&[("user", prompt)])
            .map_err(|e| crate::ModelError::InvalidRequest(format!("chat template: {e}")))
    }
}

#[async_trait::async_trait]
impl<M: crate::LanguageModel> crate::LanguageModel for ChatWrapped<M> {
    fn info(&self) -> crate::ModelInfo {
        let mut info = self.inner.info();
        info.details = format!("{} chat_wrap={}", info.details, self.format.describe())
            .trim()
            .to_string();
        info
    }
    fn capabilities(&self) -> crate::Capabilities {
        self.inner.capabilities()
    }
    async fn generate(
        &self,
        requests: &[crate::GenerateRequest],
    ) -> Vec<Result<crate::GenerateResponse, crate::ModelError>> {
        let mut out: Vec<Option<Result<crate::GenerateResponse, crate::ModelError>>> =
            vec![None; requests.len()];
        let mut ok = Vec::new();
        let mut at = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            match self.wrap(&r.prompt) {
                Ok(prompt) => {
                    ok.push(crate::GenerateRequest {
                        prompt,
                        ..r.clone()
                    });
                    at.push(i);
                }
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        for (i, r) in at.into_iter().zip(self.inner.generate(&ok).await) {
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| r.expect("every request answered"))
            .collect()
    }
    async fn loglikelihood(
        &self,
        requests: &[crate::LogLikelihoodRequest],
    ) -> Vec<Result<crate::LogLikelihood, crate::ModelError>> {
        let mut out: Vec<Option<Result<crate::LogLikelihood, crate::ModelError>>> =
            vec![None; requests.len()];
        let mut ok = Vec::new();
        let mut at = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            match self.wrap(&r.context) {
                Ok(context) => {
                    ok.push(crate::LogLikelihoodRequest {
                        context,
                        continuation: r.continuation.clone(),
                    });
                    at.push(i);
                }
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        for (i, r) in at.into_iter().zip(self.inner.loglikelihood(&ok).await) {
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| r.expect("every request answered"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hh_layout() {
        assert_eq!(
            HhLayout.render(&[("system", "S"), ("user", "U")]).unwrap(),
            "S\n\nHuman: U\n\nAssistant:"
        );
        assert!(HhLayout.render(&[("tool", "x")]).is_err());
    }

    #[tokio::test]
    async fn wrapped_prompts_go_through_the_format() {
        use crate::LanguageModel;
        let m = ChatWrapped::new(crate::testing::MockModel::new(), Arc::new(HhLayout));
        let req = crate::GenerateRequest {
            prompt: "Hi".into(),
            config: crate::DecodingConfig::greedy(4),
            seed: 0,
        };
        let direct = crate::testing::MockModel::new()
            .generate(&[crate::GenerateRequest {
                prompt: "\n\nHuman: Hi\n\nAssistant:".into(),
                ..req.clone()
            }])
            .await;
        let wrapped = m.generate(&[req]).await;
        assert_eq!(
            wrapped[0].as_ref().unwrap().completions[0].text,
            direct[0].as_ref().unwrap().completions[0].text
        );
        assert!(m.info().details.contains("chat_wrap="));
    }
}
