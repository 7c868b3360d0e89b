//! Chat templates: a model's Jinja `chat_template` rendered in Rust (minijinja) the way
//! transformers' `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`
//! renders it (`utils/chat_template_utils.py`): `trim_blocks` and `lstrip_blocks` on, a single
//! trailing newline of the template dropped, loop controls, Python string/dict/list methods
//! (`.strip()`, `.items()`, ...), `raise_exception`, `strftime_now`, a `tojson` that writes
//! Python's `json.dumps` (`", "` / `": "` separators, non-ASCII kept, no HTML escaping), and the
//! special tokens (`bos_token`, `eos_token`, `unk_token`, `pad_token`) in the context.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use super::gguf_tokenizer::SpecialTokens;
use crate::BackendError;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
#[derive(Clone)]
pub struct ChatTemplate {
    source: Arc<str>,
    origin: PathBuf,
    env: Arc<Environment<'static>>,
    special: SpecialTokens,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("chars", &self.source.len())
            .finish()
    }
}

const NAME: &str = "chat_template";

/// Python's `json.dumps(v, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`.
fn py_json(
    v: &Value,
    indent: Option<usize>,
    sort_keys: bool,
    depth: usize,
    out: &mut String,
) -> Result<(), Error> {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64() {
                out.push_str(&i.to_string());
            } else {
                let f: f64 = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                if f.is_nan() {
                    out.push_str("NaN");
                } else if f.is_infinite() {
                    out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                } else if f.fract() == 0.0 && f.abs() < 1e16 {
                    out.push_str(&format!("{f:.1}"));
                } else {
                    out.push_str(&format!("{f}"));
                }
            }
        }
        ValueKind::String => {
            let s = v.as_str().unwrap_or_default();
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    '\u{8}' => out.push_str("\\b"),
                    '\u{c}' => out.push_str("\\f"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                py_json(x, indent, sort_keys, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                let key = match k.as_str() {
                    Some(s) => Value::from(s),
                    None => Value::from(k.to_string()),
                };
                py_json(&key, indent, sort_keys, depth + 1, out)?;
                out.push_str(": ");
                py_json(&v.get_item(k)?, indent, sort_keys, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialise a {} value", v.kind()),
            ));
        }
    }
    Ok(())
}

fn tojson(v: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let mut s = String::new();
    py_json(&v, indent, sort_keys.unwrap_or(false), 0, &mut s)?;
    Ok(Value::from_safe_string(s))
}

/// Days since 1970-01-01 → (year, month, day) (proleptic Gregorian; H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `datetime.now().strftime(format)` for the directives chat templates use (UTC): `%d %m %Y %y
/// %b %B %a %A %H %M %S %%`.
fn strftime_now(format: String) -> Result<String, Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let months = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let wdays = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let wd = wdays[days.rem_euclid(7) as usize];
    let mut out = String::new();
    let mut it = format.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('b') => out.push_str(&months[m as usize - 1][..3]),
            Some('B') => out.push_str(months[m as usize - 1]),
            Some('a') => out.push_str(&wd[..3]),
            Some('A') => out.push_str(wd),
            Some('H') => out.push_str(&format!("{:02}", tod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", tod % 3600 / 60)),
            Some('S') => out.push_str(&format!("{:02}", tod % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: unsupported directive %{other}"),
                ));
            }
            None => out.push('%'),
        }
    }
    Ok(out)
}

impl ChatTemplate {
    /// Compiles `source`; `origin` (the file it came from) is named in errors.
    pub fn new(
        source: impl Into<String>,
        special: &SpecialTokens,
        origin: &Path,
    ) -> Result<Self, BackendError> {
        let source: String = source.into();
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .keep_trailing_newline(false)
                .build()
                .expect("default delimiters"),
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, source.clone())
            .map_err(|e| BackendError::Config {
                path: origin.to_path_buf(),
                message: format!("chat template does not compile: {e:#}"),
            })?;
        Ok(ChatTemplate {
            source: source.into(),
            origin: origin.to_path_buf(),
            env: Arc::new(env),
            special: special.clone(),
        })
    }

    /// Reads a template from a file (`--chat-template FILE`): a `.jinja` text, or a
    /// `tokenizer_config.json` carrying `chat_template`.
    pub fn from_file(path: &Path) -> Result<Self, BackendError> {
        let text = std::fs::read_to_string(path).map_err(|source| BackendError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let is_json = path.extension().is_some_and(|e| e == "json");
        let source = if is_json {
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| BackendError::Config {
                    path: path.to_path_buf(),
                    message: format!("invalid JSON: {e}"),
                })?;
            v.get("chat_template")
                .and_then(|t| t.as_str())
                .ok_or_else(|| BackendError::Config {
                    path: path.to_path_buf(),
                    message: "no string `chat_template`".into(),
                })?
                .to_string()
        } else {
            text
        };
        Self::new(source, &SpecialTokens::default(), path)
    }

    /// The same template with the special tokens (`bos_token`, ...) of `other` (a template read
    /// from a file gets the model's).
    pub fn with_special_tokens_of(mut self, other: Option<&ChatTemplate>) -> Self {
        if let Some(o) = other {
            self.special = o.special.clone();
        }
        self
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where the template came from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// SHA-256 of the template text (recorded in manifests).
    pub fn sha256(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(self.source.as_bytes()))
    }

    /// Renders `messages` as `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=add_generation_prompt)` does.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, BackendError> {
        let tmpl = self.env.get_template(NAME).map_err(|e| self.err(e))?;
        let tok = |t: &Option<(u32, String)>| t.as_ref().map(|(_, s)| s.clone());
        let ctx = minijinja::context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            tools => Value::from(()),
            documents => Value::from(()),
            bos_token => tok(&self.special.bos),
            eos_token => tok(&self.special.eos),
            unk_token => tok(&self.special.unk),
            pad_token => tok(&self.special.pad),
        };
        tmpl.render(ctx).map_err(|e| self.err(e))
    }

    fn err(&self, e: Error) -> BackendError {
        BackendError::Config {
            path: self.origin.clone(),
            message: format!("chat template: {e:#}"),
        }
    }
}

impl trust_core::ChatFormat for ChatTemplate {
    fn render(&self, messages: &[(&str, &str)]) -> Result<String, String> {
        let m: Vec<ChatMessage> = messages
            .iter()
            .map(|(r, c)| ChatMessage::new(*r, *c))
            .collect();
        ChatTemplate::render(self, &m, true).map_err(|e| e.to_string())
    }
    fn describe(&self) -> String {
        format!("chat_template sha256:{}", self.sha256())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOL: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_like_transformers() {
        let t = ChatTemplate::new(SMOL, &SpecialTokens::default(), Path::new("x")).unwrap();
        let out = t.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let t = ChatTemplate::new(
            "{{ {'a': [1, 2.5, 'é\"'], 'b': none} | tojson }}",
            &SpecialTokens::default(),
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(
            t.render(&[], false).unwrap(),
            r#"{"a": [1, 2.5, "é\""], "b": null}"#
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new(
            "{{ raise_exception('only user and assistant roles') }}",
            &SpecialTokens::default(),
            Path::new("tpl.jinja"),
        )
        .unwrap();
        let e = t.render(&[], false).unwrap_err().to_string();
        assert!(
            e.contains("tpl.jinja") && e.contains("only user and assistant roles"),
            "{e}"
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_423), (2025, 12, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
