//! Fuzzing (docs/fuzzing.md): every reply parser and data loader of the verticals on inputs
//! mutated from real ones (`trust_core::fuzz`), none may panic. `TRUST_FUZZ_ITERS` sets the
//! inputs per target (default 3,000 here; the recorded 10^6 run is in docs/fuzzing.md).

use std::path::PathBuf;

use trust_core::DataDir;
use trust_core::fuzz::{run, text};
use trust_verticals::machine_ethics::{self, EthicsParse, parse_reply};
use trust_verticals::privacy;
use trust_verticals::stereotype::{self, Rules, classify};
use trust_verticals::toxicity;
use trust_verticals::truthfulness::{self, TruthItem, parse_generation, parse_generation_exp};

const ITERS: usize = 3_000;

fn data_root() -> PathBuf {
    std::env::var_os("TRUST_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../data")))
}

/// The first `n` lines of a data file (with its header, for CSVs), as a corpus entry.
fn head(rel: &str, n: usize) -> Vec<u8> {
    let text = std::fs::read_to_string(data_root().join(rel)).expect("data file");
    let mut out: String = text.lines().take(n).collect::<Vec<_>>().join("\n");
    out.push('\n');
    out.into_bytes()
}

fn replies() -> Vec<Vec<u8>> {
    [
        "wrong",
        " not wrong.",
        "'wrong' because",
        "Yes, it is wrong</s>",
        "I agree. Homosexuals have HIV.",
        "I disagree, as an AI language model I cannot",
        "(0) Nothing happens. (1) You die.",
        "It is AbCdEf123456.",
        "I'm sorry, I cannot share that.",
        "first sentence. second\nthird",
        "wrong\u{1f}.",
        "\u{2028}ünïcödé 😀 'quoted' \"double\"",
        "",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

#[test]
fn reply_parsers_never_panic() {
    let item = TruthItem {
        index: 0,
        question: "q".into(),
        mc1: vec![
            "Nothing happens.".into(),
            "You die.".into(),
            "You die".into(),
        ],
        mc1_correct: 0,
        mc2: vec![("Nothing happens.".into(), true)],
    };
    let n = run("reply-parsers", replies(), ITERS, |input| {
        let r = text(input);
        for rule in [
            EthicsParse::CaseSensitiveYes,
            EthicsParse::WrongNotWrong,
            EthicsParse::DecodingTrust,
            EthicsParse::DecodingTrustJailbreak,
        ] {
            let _ = parse_reply(&r, rule);
        }
        let _ = classify(&r, Rules::PaperV2);
        let _ = classify(&r, Rules::DecodingTrust);
        let _ = stereotype::serialized_cell(&r);
        let _ = parse_generation(&item, &r);
        let _ = parse_generation_exp(&item, &[2, 0, 1], &r);
        let _ = privacy::classify(&r, "AbCdEf123456", false);
        let _ = privacy::classify(&r, "AbCdEf123456", true);
        let _ = toxicity::kept_continuation(&r, true);
        let _ = trust_verticals::common::python_repr(&r);
        let _ = trust_verticals::common::py_strip(&r);
    });
    assert_eq!(n, trust_core::fuzz::iterations(ITERS));
}

/// Runs `load` on a data directory whose `rel` holds each mutated input.
fn fuzz_loader(name: &str, rel: &str, corpus: Vec<Vec<u8>>, load: impl Fn(&DataDir)) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let d = DataDir::new(dir.path()).unwrap();
    run(name, corpus, ITERS / 3, |input| {
        std::fs::write(&path, input).unwrap();
        load(&d);
    });
}

#[test]
fn data_loaders_never_panic() {
    fuzz_loader(
        "ethics-csv",
        machine_ethics::CM_TEST,
        vec![head(machine_ethics::CM_TEST, 12)],
        |d| {
            let _ = machine_ethics::load_rows(d);
        },
    );
    let truth = {
        let text = std::fs::read_to_string(data_root().join(truthfulness::TRUTH_MC)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let first: Vec<&serde_json::Value> = v.as_array().unwrap().iter().take(3).collect();
        serde_json::to_vec(&first).unwrap()
    };
    fuzz_loader("truth-json", truthfulness::TRUTH_MC, vec![truth], |d| {
        let _ = truthfulness::load_items(d);
    });
    fuzz_loader(
        "pii-jsonl",
        privacy::PII_PROMPTS,
        vec![head(privacy::PII_PROMPTS, 6)],
        |d| {
            let _ = privacy::load_prompts(d);
        },
    );
    fuzz_loader(
        "toxicity-jsonl",
        "toxicity/toxic.jsonl",
        vec![head("toxicity/toxic.jsonl", 6)],
        |d| {
            let _ = toxicity::load_groups(d, "toxicity/toxic.jsonl");
        },
    );
    fuzz_loader(
        "stereotype-csv",
        stereotype::USER_PROMPTS,
        vec![head(stereotype::USER_PROMPTS, 12)],
        |d| {
            let _ = stereotype::load_statements(d);
        },
    );
}

fn example_specs() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/specs"))
}

/// Vertical specs (`trust eval --vertical-spec`): the TOML reader and its checks, the data
/// loader behind a spec, and the spec parsers on replies.
#[test]
fn vertical_specs_never_panic() {
    use trust_core::{Response, ScoreContext, Vertical};
    use trust_verticals::spec::SpecVertical;
    let dir = tempfile::tempdir().unwrap();
    for f in ["refusal.jsonl", "jailbreak.jsonl"] {
        std::fs::copy(example_specs().join(f), dir.path().join(f)).unwrap();
    }
    let spec = |name: &str| std::fs::read(example_specs().join(name)).unwrap();
    let options_spec = br#"
name = "mc"
[data]
file = "refusal.jsonl"
id = "id"
[prompt]
template = "{request} (A) yes (B) no {{x}}"
[parser]
kind = "options"
options = ["A", "B", "\u00e9t\u00e9"]
answer = "kind"
[[metrics]]
kind = "mean"
name = "accuracy"
value = "correct"
by = "topic"
"#
    .to_vec();
    let corpus = vec![
        spec("refusal.toml"),
        spec("jailbreak.toml"),
        options_spec.clone(),
    ];
    for c in &corpus {
        SpecVertical::from_toml(&text(c), dir.path()).expect("the corpus specs are valid");
    }
    run("vertical-spec", corpus.clone(), ITERS / 3, |input| {
        if let Ok(v) = SpecVertical::from_toml(&text(input), dir.path()) {
            let _ = v.load(&DataDir::empty());
            let _ = v.parse_reply("Sure, I can't (A) help.");
        }
    });
    // The data file under a fixed spec.
    let data_dir = tempfile::tempdir().unwrap();
    let spec_path = data_dir.path().join("refusal.toml");
    std::fs::copy(example_specs().join("refusal.toml"), &spec_path).unwrap();
    let data = std::fs::read_to_string(example_specs().join("refusal.jsonl")).unwrap();
    let first: String = data.lines().take(6).map(|l| format!("{l}\n")).collect();
    run("spec-data", vec![first.into_bytes()], ITERS / 3, |input| {
        std::fs::write(data_dir.path().join("refusal.jsonl"), input).unwrap();
        if let Ok(v) = SpecVertical::from_file(&spec_path) {
            let _ = v.load(&DataDir::empty());
        }
    });
    // Every parser kind on replies, through the vertical's scoring.
    let verticals: Vec<SpecVertical> = corpus
        .iter()
        .map(|c| SpecVertical::from_toml(&text(c), dir.path()).unwrap())
        .collect();
    let samples: Vec<_> = verticals
        .iter()
        .map(|v| v.load(&DataDir::empty()).unwrap().remove(0))
        .collect();
    let labels = vec!["toxicity".to_string()];
    run("spec-replies", replies(), ITERS, |input| {
        let r = text(input);
        for (v, s) in verticals.iter().zip(&samples) {
            let _ = v.parse_reply(&r);
            let scores = vec![trust_core::Scores { values: vec![0.5] }];
            let _ = v.score_in(
                s,
                &ScoreContext::new(0, &labels),
                &[Response::from_replies([r.clone()])],
                &scores,
            );
        }
    });
}
