//! A runtime guard for services: checks each model reply online and returns a policy decision.
//!
//! A [`Guard`] looks for three things in a reply:
//! - **toxicity**: a [`TextScorer`]'s score of the reply's label at or above a threshold;
//! - **secret leakage**: any secret the caller registered appears in the reply, exactly,
//!   case-insensitively, or — for numbers such as SSNs, phone or card numbers — with the
//!   separators removed (`123-45-6789` matches `123456789` and `123 45 6789`);
//! - **refusal**: the reply contains a refusal phrase (DecodingTrust's privacy
//!   [`DT_REJECT_TEMPLATES`] by default, compared case-insensitively).
//!
//! A [`Policy`] maps each kind of [`Finding`] to an [`Action`] (`Allow` < `Flag` < `Block`); the
//! verdict's action is the most severe. Scorer calls from concurrent callers are **batched**: a
//! background task collects up to `max_batch` replies, waiting at most `max_wait` after the
//! first, and scores them in one call. Each check has a **latency budget**; a reply whose score
//! has not arrived in time gets [`Finding::BudgetExceeded`], mapped by the policy to `Flag`
//! (fail-open, the default) or `Block` (fail-closed).
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use trust_core::testing::MockScorer;
//! use trust_verticals::guard::{Action, Guard};
//!
//! # async fn demo() -> Result<(), trust_verticals::guard::GuardError> {
//! let guard = Guard::builder()
//!     .scorer(Arc::new(MockScorer::default()), 0.5)
//!     .secret("ssn", "123-45-6789")
//!     .budget(Duration::from_millis(50))
//!     .build()?; // inside a tokio runtime
//! let v = guard.check("Sure, it is 123456789.").await;
//! assert_eq!(v.action, Action::Block);
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use trust_core::TextScorer;

pub use crate::privacy::DT_REJECT_TEMPLATES;

/// What to do with a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Pass it on.
    Allow,
    /// Pass it on, but record it for review.
    Flag,
    /// Do not pass it on.
    Block,
}

/// How a secret matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchKind {
    /// Byte for byte.
    Exact,
    /// Ignoring case.
    CaseInsensitive,
    /// Same digits once separators (`-`, space, `.`, `(`, `)`, `/`, `+`) are removed.
    Digits,
}

/// Something the guard found in a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// The toxicity score reached the threshold.
    Toxic {
        /// The score.
        score: f64,
        /// The threshold.
        threshold: f64,
    },
    /// A registered secret appears in the reply.
    SecretLeak {
        /// The secret's name (never its value).
        name: String,
        /// How it matched.
        matched: MatchKind,
    },
    /// The reply refuses.
    Refusal {
        /// The phrase found.
        phrase: String,
    },
    /// The toxicity score did not arrive within the latency budget.
    BudgetExceeded {
        /// The budget, in microseconds.
        budget_us: u64,
    },
    /// The scorer failed on this reply.
    ScorerError {
        /// The error.
        message: String,
    },
}

/// Maps findings to actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// For [`Finding::Toxic`] (default `Block`).
    pub toxic: Action,
    /// For [`Finding::SecretLeak`] (default `Block`).
    pub secret_leak: Action,
    /// For [`Finding::Refusal`] (default `Flag`).
    pub refusal: Action,
    /// For [`Finding::BudgetExceeded`] (default `Flag`: fail-open).
    pub budget_exceeded: Action,
    /// For [`Finding::ScorerError`] (default `Flag`).
    pub scorer_error: Action,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            toxic: Action::Block,
            secret_leak: Action::Block,
            refusal: Action::Flag,
            budget_exceeded: Action::Flag,
            scorer_error: Action::Flag,
        }
    }
}

impl Policy {
    /// The action for one finding.
    pub fn action_for(&self, f: &Finding) -> Action {
        match f {
            Finding::Toxic { .. } => self.toxic,
            Finding::SecretLeak { .. } => self.secret_leak,
            Finding::Refusal { .. } => self.refusal,
            Finding::BudgetExceeded { .. } => self.budget_exceeded,
            Finding::ScorerError { .. } => self.scorer_error,
        }
    }
    /// The most severe action over `findings` (`Allow` when there are none).
    pub fn decide(&self, findings: &[Finding]) -> Action {
        findings
            .iter()
            .map(|f| self.action_for(f))
            .max()
            .unwrap_or(Action::Allow)
    }
}

/// The guard's decision on one reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// What to do.
    pub action: Action,
    /// Everything found, in check order (secrets, refusal, toxicity).
    pub findings: Vec<Finding>,
    /// The toxicity score, when it arrived in time.
    pub toxicity: Option<f64>,
    /// Time spent in [`Guard::check`].
    #[serde(with = "micros")]
    pub latency: Duration,
}

mod micros {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_micros() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_micros(u64::deserialize(d)?))
    }
}

/// Invalid guard configuration.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// A bad setting (names it).
    #[error("guard: {0}")]
    Config(String),
    /// [`GuardBuilder::build`] was called outside a tokio runtime.
    #[error("guard: build() needs a tokio runtime (it spawns the batching task)")]
    NoRuntime,
}

/// A secret registered by the caller.
#[derive(Debug, Clone)]
struct Secret {
    name: String,
    exact: String,
    lower: String,
    /// The digits, for numbers written with separators only (at least 4 digits).
    digits: Option<String>,
}

const SEPARATORS: &[char] = &['-', ' ', '.', '(', ')', '/', '+', '\u{a0}'];

impl Secret {
    fn new(name: &str, value: &str) -> Secret {
        let digits: String = value.chars().filter(char::is_ascii_digit).collect();
        let numeric = value
            .chars()
            .all(|c| c.is_ascii_digit() || SEPARATORS.contains(&c));
        Secret {
            name: name.to_string(),
            exact: value.to_string(),
            lower: value.to_lowercase(),
            digits: (numeric && digits.len() >= 4).then_some(digits),
        }
    }
}

/// The numbers of `text` with their separators dropped: every maximal run of digits and
/// separators that starts with a digit, digits only (`call 555-01 23, or 7` → `["5550123", "7"]`).
fn digit_runs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            cur.push(c);
        } else if SEPARATORS.contains(&c) && !cur.is_empty() {
            continue;
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Where a secret occurs in `reply`, checking exact, then case-insensitive, then digits.
fn match_secret(s: &Secret, reply: &str, reply_lower: &str, runs: &[String]) -> Option<MatchKind> {
    if s.exact.is_empty() {
        return None;
    }
    if reply.contains(&s.exact) {
        Some(MatchKind::Exact)
    } else if reply_lower.contains(&s.lower) {
        Some(MatchKind::CaseInsensitive)
    } else if let Some(d) = &s.digits
        && runs.iter().any(|r| r.contains(d.as_str()))
    {
        Some(MatchKind::Digits)
    } else {
        None
    }
}

struct Job {
    text: String,
    reply: oneshot::Sender<Result<f64, String>>,
}

struct Inner {
    threshold: f64,
    secrets: Vec<Secret>,
    refusal_phrases: Vec<(String, String)>,
    budget: Duration,
    policy: Policy,
}

/// Checks model replies; cheap to clone (clones share the batching task).
#[derive(Clone)]
pub struct Guard {
    inner: Arc<Inner>,
    tx: Option<mpsc::Sender<Job>>,
}

/// Builder of a [`Guard`].
pub struct GuardBuilder {
    scorer: Option<(Arc<dyn TextScorer>, f64)>,
    label: Option<String>,
    secrets: Vec<Secret>,
    refusal_phrases: Vec<String>,
    budget: Duration,
    policy: Policy,
    max_batch: usize,
    max_wait: Duration,
}

impl GuardBuilder {
    /// Score replies with `scorer`; a score ≥ `threshold` is [`Finding::Toxic`].
    pub fn scorer(mut self, scorer: Arc<dyn TextScorer>, threshold: f64) -> Self {
        self.scorer = Some((scorer, threshold));
        self
    }
    /// The scorer label read as toxicity (default: the scorer's primary label, else its first).
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }
    /// Registers a secret under a name (the name, not the value, appears in findings).
    pub fn secret(mut self, name: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        self.secrets
            .push(Secret::new(name.as_ref(), value.as_ref()));
        self
    }
    /// Replaces the refusal phrases (default: [`DT_REJECT_TEMPLATES`]); matched ignoring case.
    pub fn refusal_phrases<I: IntoIterator<Item = S>, S: Into<String>>(mut self, p: I) -> Self {
        self.refusal_phrases = p.into_iter().map(Into::into).collect();
        self
    }
    /// Latency budget of one check (default 100 ms).
    pub fn budget(mut self, d: Duration) -> Self {
        self.budget = d;
        self
    }
    /// The policy (default [`Policy::default`]).
    pub fn policy(mut self, p: Policy) -> Self {
        self.policy = p;
        self
    }
    /// A reply whose score misses the budget is flagged (the default).
    pub fn fail_open(mut self) -> Self {
        self.policy.budget_exceeded = Action::Flag;
        self
    }
    /// A reply whose score misses the budget is blocked.
    pub fn fail_closed(mut self) -> Self {
        self.policy.budget_exceeded = Action::Block;
        self
    }
    /// Most replies per scorer call (default 32).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }
    /// Longest wait for more replies after the first of a batch (default 500 µs). Replies
    /// already queued are taken without waiting; tokio's timer rounds waits up to whole
    /// milliseconds, so a lone caller pays up to ~1 ms (use `Duration::ZERO` for no wait).
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }
    /// The guard. Spawns the batching task, so it must run inside a tokio runtime.
    pub fn build(self) -> Result<Guard, GuardError> {
        let mut threshold = f64::INFINITY;
        let mut tx = None;
        if let Some((scorer, t)) = self.scorer {
            if !t.is_finite() {
                return Err(GuardError::Config(format!(
                    "toxicity threshold {t} is not finite"
                )));
            }
            threshold = t;
            let info = scorer.info();
            let label = self
                .label
                .or(info.primary.clone())
                .or_else(|| info.labels.first().cloned())
                .ok_or_else(|| GuardError::Config(format!("scorer `{}` has no labels", info.id)))?;
            let index = info
                .label_index(&label)
                .map_err(|e| GuardError::Config(e.to_string()))?;
            let handle =
                tokio::runtime::Handle::try_current().map_err(|_| GuardError::NoRuntime)?;
            let (sender, rx) = mpsc::channel(self.max_batch * 64);
            handle.spawn(batcher(scorer, index, rx, self.max_batch, self.max_wait));
            tx = Some(sender);
        }
        Ok(Guard {
            inner: Arc::new(Inner {
                threshold,
                secrets: self.secrets,
                refusal_phrases: self
                    .refusal_phrases
                    .into_iter()
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let l = p.to_lowercase();
                        (p, l)
                    })
                    .collect(),
                budget: self.budget,
                policy: self.policy,
            }),
            tx,
        })
    }
}

/// Collects jobs into batches and scores each batch with one call.
async fn batcher(
    scorer: Arc<dyn TextScorer>,
    index: usize,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    max_wait: Duration,
) {
    while let Some(first) = rx.recv().await {
        let deadline = Instant::now() + max_wait;
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(j) => {
                    jobs.push(j);
                    continue;
                }
                Err(_) if max_wait.is_zero() => break,
                Err(_) => {}
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(j)) => jobs.push(j),
                _ => break,
            }
        }
        // Callers that gave up (budget) need no score.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let texts: Vec<String> = jobs.iter().map(|j| j.text.clone()).collect();
        let results = scorer.score(&texts).await;
        if results.len() != jobs.len() {
            let e = format!(
                "scorer returned {} results for {} texts",
                results.len(),
                jobs.len()
            );
            for j in jobs {
                let _ = j.reply.send(Err(e.clone()));
            }
            continue;
        }
        for (j, r) in jobs.into_iter().zip(results) {
            let v = r.map_err(|e| e.to_string()).and_then(|s| {
                s.values
                    .get(index)
                    .copied()
                    .ok_or_else(|| format!("scorer returned no value for label {index}"))
            });
            let _ = j.reply.send(v);
        }
    }
}

impl Guard {
    /// A builder: no scorer, no secrets, DecodingTrust refusal phrases, 100 ms budget, default
    /// policy, batches of up to 32 waiting at most 500 µs.
    pub fn builder() -> GuardBuilder {
        GuardBuilder {
            scorer: None,
            label: None,
            secrets: Vec::new(),
            refusal_phrases: DT_REJECT_TEMPLATES.iter().map(|s| s.to_string()).collect(),
            budget: Duration::from_millis(100),
            policy: Policy::default(),
            max_batch: 32,
            max_wait: Duration::from_micros(500),
        }
    }

    /// The findings that need no scorer: leaked secrets, then the first refusal phrase.
    pub fn check_local(&self, reply: &str) -> Vec<Finding> {
        let lower = reply.to_lowercase();
        let runs = digit_runs(reply);
        let mut findings: Vec<Finding> = self
            .inner
            .secrets
            .iter()
            .filter_map(|s| {
                match_secret(s, reply, &lower, &runs).map(|m| Finding::SecretLeak {
                    name: s.name.clone(),
                    matched: m,
                })
            })
            .collect();
        if let Some((p, _)) = self
            .inner
            .refusal_phrases
            .iter()
            .find(|(_, l)| lower.contains(l.as_str()))
        {
            findings.push(Finding::Refusal { phrase: p.clone() });
        }
        findings
    }

    /// Checks one reply within the latency budget.
    pub async fn check(&self, reply: &str) -> Verdict {
        let start = Instant::now();
        let mut findings = self.check_local(reply);
        let mut toxicity = None;
        if let Some(tx) = &self.tx {
            let deadline = start + self.inner.budget;
            let (otx, orx) = oneshot::channel();
            let job = Job {
                text: reply.to_string(),
                reply: otx,
            };
            let scored = tokio::time::timeout_at(deadline, async {
                tx.send(job)
                    .await
                    .map_err(|_| "the batching task has stopped".to_string())?;
                orx.await
                    .map_err(|_| "the batching task dropped the reply".to_string())?
            })
            .await;
            match scored {
                Err(_) => findings.push(Finding::BudgetExceeded {
                    budget_us: self.inner.budget.as_micros() as u64,
                }),
                Ok(Err(message)) => findings.push(Finding::ScorerError { message }),
                Ok(Ok(score)) => {
                    toxicity = Some(score);
                    if score >= self.inner.threshold {
                        findings.push(Finding::Toxic {
                            score,
                            threshold: self.inner.threshold,
                        });
                    }
                }
            }
        }
        Verdict {
            action: self.inner.policy.decide(&findings),
            findings,
            toxicity,
            latency: start.elapsed(),
        }
    }

    /// The policy in use.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use trust_core::testing::MockScorer;
    use trust_core::{ScorerError, ScorerInfo, Scores};

    use super::*;

    #[test]
    fn policy_takes_the_most_severe_action() {
        let p = Policy::default();
        let toxic = Finding::Toxic {
            score: 0.9,
            threshold: 0.5,
        };
        let leak = Finding::SecretLeak {
            name: "ssn".into(),
            matched: MatchKind::Digits,
        };
        let refusal = Finding::Refusal {
            phrase: "I cannot".into(),
        };
        let late = Finding::BudgetExceeded { budget_us: 10 };
        let err = Finding::ScorerError {
            message: "x".into(),
        };
        let table: Vec<(Vec<Finding>, Action)> = vec![
            (vec![], Action::Allow),
            (vec![refusal.clone()], Action::Flag),
            (vec![late.clone()], Action::Flag),
            (vec![err.clone()], Action::Flag),
            (vec![toxic.clone()], Action::Block),
            (vec![leak.clone()], Action::Block),
            (vec![refusal.clone(), late.clone()], Action::Flag),
            (vec![refusal.clone(), leak.clone()], Action::Block),
        ];
        for (f, want) in table {
            assert_eq!(p.decide(&f), want, "{f:?}");
        }
        let custom = Policy {
            refusal: Action::Allow,
            toxic: Action::Flag,
            budget_exceeded: Action::Block,
            ..Policy::default()
        };
        assert_eq!(custom.decide(std::slice::from_ref(&refusal)), Action::Allow);
        assert_eq!(custom.decide(&[toxic.clone(), refusal]), Action::Flag);
        assert_eq!(custom.decide(&[toxic, late]), Action::Block);
    }

    fn leaks(g: &Guard, reply: &str) -> Vec<(String, MatchKind)> {
        g.check_local(reply)
            .into_iter()
            .filter_map(|f| match f {
                Finding::SecretLeak { name, matched } => Some((name, matched)),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn secrets_match_exactly_ignoring_case_and_as_digits() {
        let g = Guard::builder()
            .secret("ssn", "123-45-6789")
            .secret("email", "Alice.Smith@example.com")
            .secret("phone", "(555) 010-2233")
            .secret("pin", "987")
            .build()
            .unwrap();
        let s = |n: &str, m| vec![(n.to_string(), m)];
        assert_eq!(leaks(&g, "it is 123-45-6789."), s("ssn", MatchKind::Exact));
        assert_eq!(leaks(&g, "it is 123456789"), s("ssn", MatchKind::Digits));
        assert_eq!(leaks(&g, "it is 123 45 6789"), s("ssn", MatchKind::Digits));
        assert_eq!(leaks(&g, "it is 123.45.6789!"), s("ssn", MatchKind::Digits));
        assert_eq!(leaks(&g, "it is 123-45-6780"), vec![]);
        assert_eq!(leaks(&g, "12345 6789"), s("ssn", MatchKind::Digits));
        assert_eq!(
            leaks(&g, "write to ALICE.SMITH@EXAMPLE.COM"),
            s("email", MatchKind::CaseInsensitive)
        );
        assert_eq!(leaks(&g, "alice smith at example"), vec![]);
        assert_eq!(
            leaks(&g, "call 5550102233 now"),
            s("phone", MatchKind::Digits)
        );
        assert_eq!(
            leaks(&g, "call 555-010-2233"),
            s("phone", MatchKind::Digits)
        );
        // Short numbers are matched only as written (too many false positives otherwise).
        assert_eq!(leaks(&g, "9 8 7"), vec![]);
        assert_eq!(leaks(&g, "code 987"), s("pin", MatchKind::Exact));
    }

    #[tokio::test]
    async fn refusals_are_found_ignoring_case() {
        let g = Guard::builder().build().unwrap();
        let v = g.check("I CANNOT FULFILL YOUR REQUEST, sorry.").await;
        assert_eq!(v.action, Action::Flag);
        assert!(
            matches!(&v.findings[..], [Finding::Refusal { .. }]),
            "{v:?}"
        );
        assert_eq!(g.check("Here you go.").await.action, Action::Allow);
        let g = Guard::builder()
            .refusal_phrases(["no way"])
            .build()
            .unwrap();
        assert_eq!(g.check("No way!").await.action, Action::Flag);
        assert_eq!(
            g.check("cannot fulfill your request").await.action,
            Action::Allow
        );
    }

    /// Counts calls and the texts of each.
    struct Counting {
        inner: MockScorer,
        calls: AtomicUsize,
        texts: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl TextScorer for Counting {
        fn info(&self) -> ScorerInfo {
            self.inner.info()
        }
        async fn score(&self, texts: &[String]) -> Vec<Result<Scores, ScorerError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.texts.fetch_add(texts.len(), Ordering::SeqCst);
            self.inner.score(texts).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_checks_share_scorer_calls() {
        let scorer = Arc::new(Counting {
            inner: MockScorer::default(),
            calls: AtomicUsize::new(0),
            texts: AtomicUsize::new(0),
        });
        let g = Guard::builder()
            .scorer(scorer.clone(), 0.5)
            .max_batch(8)
            .max_wait(Duration::from_micros(200))
            .build()
            .unwrap();
        let n = 32;
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let g = g.clone();
                tokio::spawn(async move {
                    let text = if i % 4 == 0 {
                        "you idiot".to_string()
                    } else {
                        format!("reply {i}")
                    };
                    (i, g.check(&text).await)
                })
            })
            .collect();
        for h in handles {
            let (i, v) = h.await.unwrap();
            let want = if i % 4 == 0 {
                Action::Block
            } else {
                Action::Allow
            };
            assert_eq!(v.action, want, "reply {i}: {v:?}");
            assert_eq!(v.toxicity, Some(if i % 4 == 0 { 0.5 } else { 0.0 }));
        }
        assert_eq!(scorer.texts.load(Ordering::SeqCst), n);
        // All 32 checks are queued before the paused clock lets any batch time out.
        assert_eq!(scorer.calls.load(Ordering::SeqCst), n / 8);
    }

    /// A scorer that waits for permits the test hands out.
    struct Gated {
        gate: Arc<tokio::sync::Semaphore>,
    }

    #[async_trait::async_trait]
    impl TextScorer for Gated {
        fn info(&self) -> ScorerInfo {
            MockScorer::default().info()
        }
        async fn score(&self, texts: &[String]) -> Vec<Result<Scores, ScorerError>> {
            self.gate.acquire().await.unwrap().forget();
            MockScorer::default().score(texts).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_score_is_flagged_or_blocked_by_the_budget_policy() {
        for (fail_closed, want) in [(false, Action::Flag), (true, Action::Block)] {
            let gate = Arc::new(tokio::sync::Semaphore::new(0));
            let mut b = Guard::builder()
                .scorer(Arc::new(Gated { gate: gate.clone() }), 0.5)
                .budget(Duration::from_millis(20));
            b = if fail_closed {
                b.fail_closed()
            } else {
                b.fail_open()
            };
            let g = b.build().unwrap();
            let v = g.check("a harmless reply").await;
            assert_eq!(v.action, want);
            assert_eq!(
                v.findings,
                vec![Finding::BudgetExceeded { budget_us: 20_000 }]
            );
            assert_eq!(v.toxicity, None);
            assert!(v.latency >= Duration::from_millis(20));
            // Once the scorer answers, checks complete within the budget again.
            gate.add_permits(2);
            let v = g.check("a harmless reply").await;
            assert_eq!(v.action, Action::Allow, "{v:?}");
            assert_eq!(v.toxicity, Some(0.0));
        }
    }

    #[tokio::test]
    async fn bad_configuration_is_an_error() {
        let e = Guard::builder()
            .scorer(Arc::new(MockScorer::default()), f64::NAN)
            .build()
            .err()
            .unwrap();
        assert!(e.to_string().contains("threshold"), "{e}");
        let e = Guard::builder()
            .scorer(Arc::new(MockScorer::default()), 0.5)
            .label("insult")
            .build()
            .err()
            .unwrap();
        assert!(e.to_string().contains("insult"), "{e}");
    }

    #[test]
    fn building_with_a_scorer_outside_a_runtime_is_an_error() {
        let e = Guard::builder()
            .scorer(Arc::new(MockScorer::default()), 0.5)
            .build()
            .err()
            .unwrap();
        assert!(matches!(e, GuardError::NoRuntime));
    }
}
