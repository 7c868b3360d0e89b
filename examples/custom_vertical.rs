//! A user-written vertical: does the model answer "Paris" to capital-city questions?
//! Run: `cargo run -p trust-examples --example custom_vertical`
use trust_core::metric::{LabelRate, Metric};
use trust_core::testing::MockModel;
use trust_core::{
    DataDir, DecodingConfig, GenerateRequest, Outcome, Request, Requirements, Response, Runner,
    Scores, Vertical,
};

struct Capitals;

#[rustfmt::skip] // one-line trait items keep the example short
impl Vertical for Capitals {
    type Sample = (usize, &'static str);
    fn name(&self) -> &str { "capitals" }
    fn version(&self) -> &str { "1" }
    fn protocol(&self) -> &str { "greedy" }
    fn requirements(&self) -> Requirements { Requirements::default() }
    fn data_files(&self) -> Vec<String> { Vec::new() }
    fn load(&self, _data: &DataDir) -> trust_core::Result<Vec<Self::Sample>> { Ok(vec![(0, "France"), (1, "Germany")]) }
    fn sample_id(&self, s: &Self::Sample) -> String { format!("capitals/{}", s.0) }
    fn requests(&self, s: &Self::Sample, seed: u64) -> Vec<Request> {
        let prompt = format!("The capital of {} is", s.1);
        vec![Request::Generate(GenerateRequest { prompt, config: DecodingConfig::greedy(5), seed })]
    }
    fn score(&self, _s: &Self::Sample, r: &[Response], _sc: &[Scores]) -> Result<Outcome, String> {
        let labels = r.iter().flat_map(|x| x.texts()).map(|t| if t.contains("Paris") { "paris" } else { "other" });
        Ok(Outcome { labels: labels.map(String::from).collect(), ..Outcome::default() })
    }
    fn metrics(&self) -> Vec<Box<dyn Metric>> {
        vec![Box::new(LabelRate { name: "paris_rate".into(), labels: vec!["paris".into()], exclude: vec![] })]
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let model = MockModel::new().rule("France", " Paris.");
    let data = DataDir::new(std::env::temp_dir())?; // no data files needed
    let runner = Runner::builder().bootstrap_resamples(200).build();
    let report = runner.run(&Capitals, &model, None, &data).await?;
    let m = report.metric("paris_rate").expect("metric");
    println!(
        "paris_rate = {:?} (95% CI {:?}..{:?}) over {} samples",
        m.value, m.ci_low, m.ci_high, report.n_ok
    );
    assert_eq!(
        m.value,
        Some(0.5),
        "France -> Paris, Germany -> random mock words"
    );
    Ok(())
}
