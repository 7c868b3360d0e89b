//! `--chat-template auto|none|wrap|FILE`, shared by `trust eval`, `trust generate` and
//! `trust serve`.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::bail;
use trust_backends::candle::{CandleModel, ChatTemplate};

/// How prompts are put into the model's chat format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplateChoice {
    /// The model's own template where the command or protocol has chat messages.
    Auto,
    /// Never: prompts go to the model as raw text.
    None,
    /// Like `Auto`, and raw prompts become one user message; a model without a template is an
    /// error.
    Wrap,
    /// A template read from a file (`.jinja`, or a `tokenizer_config.json`); raw prompts become
    /// one user message.
    File(PathBuf),
}

impl FromStr for ChatTemplateChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => ChatTemplateChoice::Auto,
            "none" => ChatTemplateChoice::None,
            "wrap" => ChatTemplateChoice::Wrap,
            "" => return Err("expected auto, none, wrap or a template file".into()),
            path => ChatTemplateChoice::File(PathBuf::from(path)),
        })
    }
}

impl std::fmt::Display for ChatTemplateChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChatTemplateChoice::Auto => f.write_str("auto"),
            ChatTemplateChoice::None => f.write_str("none"),
            ChatTemplateChoice::Wrap => f.write_str("wrap"),
            ChatTemplateChoice::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl ChatTemplateChoice {
    /// The template to use with `model`: `None` for `none`, or for `auto` when the model has no
    /// template.
    pub fn resolve(&self, model: &CandleModel) -> anyhow::Result<Option<ChatTemplate>> {
        Ok(match self {
            ChatTemplateChoice::None => None,
            ChatTemplateChoice::Auto => model.chat_template().cloned(),
            ChatTemplateChoice::Wrap => match model.chat_template() {
                Some(t) => Some(t.clone()),
                None => bail!(
                    "--chat-template wrap: {} has no chat template (pass a template FILE)",
                    model.dir().display()
                ),
            },
            ChatTemplateChoice::File(p) => {
                if !p.exists() {
                    bail!(
                        "--chat-template: `{}` is not auto, none, wrap or an existing file",
                        p.display()
                    );
                }
                Some(ChatTemplate::from_file(p)?.with_special_tokens_of(model.chat_template()))
            }
        })
    }
}
