//! Your own `trust` binary: the whole command line (`eval`, `score`, `report`, `check`, ...)
//! with a Rust vertical of yours in the registry next to the built-in five.
//!
//! Run: `cargo run -p trust-examples --bin my-trust -- eval --model mock --verticals capitals --out /tmp/capitals`
//! (`--verticals capitals,machine_ethics` mixes it with built-in ones; `trust report` and
//! `trust check` on the run work the same way.)
use trust_core::metric::{LabelRate, Metric};
use trust_core::{
    DataDir, DecodingConfig, GenerateRequest, Outcome, Request, Requirements, Response, Scores,
    Vertical,
};
use trust_verticals::registry::CustomVertical;

/// Does the model name the capital? (Samples are built in; a real vertical reads a data file.)
struct Capitals;

const CAPITALS: &[(&str, &str)] = &[
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Japan", "Tokyo"),
];

#[rustfmt::skip] // one-line trait items keep the example short
impl Vertical for Capitals {
    type Sample = usize;
    fn name(&self) -> &str { "capitals" }
    fn version(&self) -> &str { "1" }
    fn protocol(&self) -> &str { "greedy" }
    fn requirements(&self) -> Requirements { Requirements::default() }
    fn data_files(&self) -> Vec<String> { Vec::new() }
    fn load(&self, _data: &DataDir) -> trust_core::Result<Vec<usize>> { Ok((0..CAPITALS.len()).collect()) }
    fn sample_id(&self, i: &usize) -> String { format!("capitals/{}", CAPITALS[*i].0) }
    fn requests(&self, i: &usize, seed: u64) -> Vec<Request> {
        let prompt = format!("The capital of {} is", CAPITALS[*i].0);
        vec![Request::Generate(GenerateRequest { prompt, config: DecodingConfig::greedy(5), seed })]
    }
    fn score(&self, i: &usize, r: &[Response], _sc: &[Scores]) -> Result<Outcome, String> {
        let right = |t: &str| if t.contains(CAPITALS[*i].1) { "right" } else { "wrong" };
        let labels = r.iter().flat_map(|x| x.texts()).map(right).map(String::from).collect();
        Ok(Outcome { labels, ..Outcome::default() })
    }
    fn metrics(&self) -> Vec<Box<dyn Metric>> { vec![Box::new(LabelRate::new("accuracy", ["right"]))] }
}

fn main() -> std::process::ExitCode {
    let capitals = CustomVertical::new("capitals", ["greedy"], |_protocol, _opts| {
        Ok(Box::new(Capitals))
    });
    trust_cli::run([capitals])
}
