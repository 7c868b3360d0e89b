//! Parsing of scorer specifications (`--scorer ...`).
//!
//! - `none` (or empty): no scorer;
//! - `mock`: [`trust_core::testing::MockScorer`] (word-list test scorer, label `toxicity`);
//! - `jigsaw` or `jigsaw:DIR`: the Jigsaw-trained toxicity BiLSTM
//!   ([`trust_backends::scorers::jigsaw::JigsawScorer`]; `DIR` defaults to `jigsaw-bilstm` in the models
//!   directory, see [`models_dir`]); installed by `scripts/fetch-models.sh jigsaw`;
//! - `onnx:DIR[,key=value...]`: an ONNX sequence classifier exported from Hugging Face (see
//!   docs/toxicity-scorer.md), needs a build with the `ort` feature. Keys: `primary=LABEL`,
//!   `activation=sigmoid|softmax|identity`, `batch=N` (texts per ONNX Runtime call),
//!   `sessions=N` (parallel sessions), `threads=N` (intra-op threads per session), `file=NAME`
//!   (the .onnx file inside DIR), `max_length=N`. A DIR whose config.json says
//!   `trust-onnx-text-classifier/1` (hatesonar: `onnx:models/hatesonar`) is a raw-text
//!   classifier ([`trust_backends::ort::OrtTextClassifier`]).
//! - `lexical`: the demo's hashed n-gram regression, fitted on the data directory (`trust eval`
//!   and `trust score` only).

use anyhow::{Context, bail};
use trust_core::TextScorer;

/// Options of an `onnx:` spec, independent of whether ONNX support is compiled in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OnnxSpec {
    /// The model directory.
    pub dir: String,
    /// `primary=`.
    pub primary: Option<String>,
    /// `activation=`.
    pub activation: Option<String>,
    /// `batch=`.
    pub batch: Option<usize>,
    /// `sessions=`.
    pub sessions: Option<usize>,
    /// `threads=`.
    pub threads: Option<usize>,
    /// `file=`.
    pub file: Option<String>,
    /// `max_length=`.
    pub max_length: Option<usize>,
}

const KEYS: &[&str] = &[
    "primary",
    "activation",
    "batch",
    "sessions",
    "threads",
    "file",
    "max_length",
];

/// Splits `DIR[,key=value...]`. Only known `key=` suffixes are options, so a directory name may
/// itself contain commas.
pub fn parse_onnx_spec(rest: &str) -> anyhow::Result<OnnxSpec> {
    let mut parts: Vec<&str> = rest.split(',').collect();
    let mut spec = OnnxSpec::default();
    while parts.len() > 1 {
        let last = parts[parts.len() - 1];
        let Some((k, v)) = last.split_once('=') else {
            break;
        };
        if !KEYS.contains(&k) {
            break;
        }
        let num = |v: &str| -> anyhow::Result<usize> {
            let n: usize = v
                .parse()
                .with_context(|| format!("scorer option {k}={v}: not a number"))?;
            if n == 0 {
                bail!("scorer option {k} must be positive");
            }
            Ok(n)
        };
        match k {
            "primary" => spec.primary = Some(v.to_string()),
            "activation" => spec.activation = Some(v.to_string()),
            "batch" => spec.batch = Some(num(v)?),
            "sessions" => spec.sessions = Some(num(v)?),
            "threads" => spec.threads = Some(num(v)?),
            "file" => spec.file = Some(v.to_string()),
            "max_length" => spec.max_length = Some(num(v)?),
            _ => unreachable!("checked against KEYS"),
        }
        parts.pop();
    }
    spec.dir = parts.join(",");
    if spec.dir.is_empty() {
        bail!("`onnx:` needs a model directory, e.g. onnx:models/toxic-bert");
    }
    Ok(spec)
}

/// The models directory (`scripts/fetch-models.sh` installs there): `$TRUST_MODELS_DIR`, else
/// the first of `./models` and `models/` beside the repository the binary was built in that
/// holds `sub`.
pub fn models_dir(sub: &str) -> Option<std::path::PathBuf> {
    if let Some(d) = std::env::var_os("TRUST_MODELS_DIR") {
        return Some(std::path::PathBuf::from(d));
    }
    let mut candidates = vec![std::path::PathBuf::from("models")];
    candidates.push(std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models"
    )));
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/trust -> the repository's models/
        if let Some(root) = exe
            .parent()
            .and_then(|p| p.parent())
            .and_then(|p| p.parent())
        {
            candidates.push(root.join("models"));
        }
    }
    candidates.into_iter().find(|c| c.join(sub).exists())
}

/// The Jigsaw scorer's directory when it is installed.
pub fn installed_jigsaw() -> Option<std::path::PathBuf> {
    models_dir("jigsaw-bilstm")
        .map(|d| d.join("jigsaw-bilstm"))
        .filter(|d| d.join("config.json").exists())
}

const FETCH_HINT: &str = "run scripts/fetch-models.sh jigsaw (PyPI, ~8 MB)";

/// Builds the scorer named by `spec` (see the module docs). `Ok(None)` for `none`.
pub fn load_scorer(spec: &str) -> anyhow::Result<Option<Box<dyn TextScorer>>> {
    let spec = spec.trim();
    if spec.is_empty() || spec == "none" {
        return Ok(None);
    }
    if spec == "mock" {
        return Ok(Some(Box::new(trust_core::testing::MockScorer::default())));
    }
    if spec == "jigsaw" || spec.starts_with("jigsaw:") {
        return load_jigsaw(spec.strip_prefix("jigsaw:")).map(Some);
    }
    if spec == "lexical" {
        bail!(
            "the `lexical` scorer is fitted on the data directory: use it with trust eval or trust score"
        );
    }
    if let Some(rest) = spec.strip_prefix("onnx:") {
        let onnx = parse_onnx_spec(rest)?;
        return load_onnx(&onnx).map(Some);
    }
    bail!(
        "unknown scorer `{spec}`: use `jigsaw`, `lexical`, `mock`, `none` or `onnx:DIR` (an ONNX classifier directory)"
    )
}

/// Loads the Jigsaw BiLSTM from `dir`, or from the models directory.
#[cfg(feature = "candle")]
pub fn load_jigsaw(dir: Option<&str>) -> anyhow::Result<Box<dyn TextScorer>> {
    let dir = match dir {
        Some(d) => std::path::PathBuf::from(d),
        None => installed_jigsaw().with_context(|| {
            format!("the jigsaw scorer is not installed: {FETCH_HINT}, or set TRUST_MODELS_DIR")
        })?,
    };
    let s = trust_backends::scorers::jigsaw::JigsawScorer::load(&dir).with_context(|| {
        format!(
            "loading the jigsaw scorer in {} ({FETCH_HINT})",
            dir.display()
        )
    })?;
    Ok(Box::new(s))
}

/// Without the `candle` feature there is no jigsaw scorer.
#[cfg(not(feature = "candle"))]
pub fn load_jigsaw(_dir: Option<&str>) -> anyhow::Result<Box<dyn TextScorer>> {
    bail!("the jigsaw scorer needs a build with the `candle` feature")
}

/// Loads an ONNX classifier.
#[cfg(feature = "ort")]
pub fn load_onnx(spec: &OnnxSpec) -> anyhow::Result<Box<dyn TextScorer>> {
    let dir = std::path::Path::new(&spec.dir);
    if trust_backends::ort::is_text_classifier_dir(dir) {
        let mut session = trust_backends::ort::SessionOptions {
            sessions: spec.sessions,
            ..Default::default()
        };
        if let Some(t) = spec.threads {
            session.intra_threads = t;
        }
        let c = trust_backends::ort::OrtTextClassifier::from_dir(dir, session)
            .with_context(|| format!("loading the ONNX text classifier in {}", spec.dir))?;
        return Ok(Box::new(c));
    }
    Ok(Box::new(load_classifier(spec)?))
}

/// The concrete classifier of an `onnx:` spec.
#[cfg(feature = "ort")]
pub fn load_classifier(spec: &OnnxSpec) -> anyhow::Result<trust_backends::ort::OrtClassifier> {
    use trust_backends::ort::{Activation, OrtClassifier, OrtClassifierOptions};
    let mut opts = OrtClassifierOptions {
        model_file: spec.file.clone(),
        primary: spec.primary.clone(),
        max_length: spec.max_length,
        ..Default::default()
    };
    if let Some(a) = &spec.activation {
        opts.activation = Some(a.parse::<Activation>().map_err(anyhow::Error::msg)?);
    }
    if let Some(b) = spec.batch {
        opts.batch_size = b;
    }
    opts.session.sessions = spec.sessions;
    if let Some(t) = spec.threads {
        opts.session.intra_threads = t;
    }
    OrtClassifier::from_dir(&spec.dir, opts)
        .with_context(|| format!("loading the ONNX classifier in {}", spec.dir))
}

/// Without the `ort` feature an `onnx:` spec is an error that says how to get one.
#[cfg(not(feature = "ort"))]
pub fn load_onnx(spec: &OnnxSpec) -> anyhow::Result<Box<dyn TextScorer>> {
    bail!(
        "cannot load the ONNX scorer in {}: this trust binary was built without ONNX Runtime support; rebuild with `cargo build -p trust-cli --features ort` (or use --scorer mock)",
        spec.dir
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_and_mock() {
        assert!(load_scorer("none").unwrap().is_none());
        assert!(load_scorer("").unwrap().is_none());
        let m = load_scorer("mock").unwrap().unwrap();
        assert_eq!(m.info().labels, ["toxicity"]);
        let err = load_scorer("perspective").err().unwrap().to_string();
        assert!(err.contains("onnx:DIR"), "{err}");
    }

    #[test]
    fn onnx_spec_options() {
        let s = parse_onnx_spec("models/a,b,primary=toxic,batch=8,activation=softmax").unwrap();
        assert_eq!(s.dir, "models/a,b");
        assert_eq!(s.primary.as_deref(), Some("toxic"));
        assert_eq!(s.batch, Some(8));
        assert_eq!(s.activation.as_deref(), Some("softmax"));
        assert_eq!(
            parse_onnx_spec("dir").unwrap(),
            OnnxSpec {
                dir: "dir".into(),
                ..Default::default()
            }
        );
        assert!(parse_onnx_spec("dir,batch=x").is_err());
        assert!(parse_onnx_spec("dir,sessions=0").is_err());
        assert!(parse_onnx_spec("").is_err());
        assert!(parse_onnx_spec(",batch=2").is_err());
    }

    #[cfg(feature = "ort")]
    #[test]
    fn onnx_fixture_loads_and_errors_name_the_directory() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../trust-backends/tests/fixtures/onnx/tiny-classifier"
        );
        let s = load_scorer(&format!("onnx:{dir},batch=4,sessions=1"))
            .unwrap()
            .unwrap();
        assert_eq!(s.info().primary.as_deref(), Some("toxicity"));
        assert_eq!(s.info().labels.len(), 6);
        let err = load_scorer("onnx:/nonexistent/model-dir").err().unwrap();
        assert!(
            format!("{err:#}").contains("/nonexistent/model-dir"),
            "{err:#}"
        );
        let err = load_scorer(&format!("onnx:{dir},activation=relu"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("relu"), "{err}");
    }

    #[cfg(not(feature = "ort"))]
    #[test]
    fn onnx_without_the_feature_says_how_to_rebuild() {
        let err = load_scorer("onnx:some/dir").err().unwrap().to_string();
        assert!(
            err.contains("--features ort") && err.contains("some/dir"),
            "{err}"
        );
    }
}
