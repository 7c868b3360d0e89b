//! Exit codes of the `trust` binary, and the error type that selects code 2.
//!
//! - 0: success: everything asked for ran (for `eval`: every requested vertical ran with no
//!   failed sample; for `check`: every bound passed).
//! - 1: runtime failure, or asked-for work that did not happen: a model, data or I/O error; a
//!   requested vertical that failed or had no scored sample; any failed sample; a regression
//!   (or an uncomparable metric) in `trust check`; missing or corrupt data files in `trust list`.
//! - 2: usage error: bad arguments (clap's own, and the values trust checks itself: unknown
//!   verticals, protocols, bounds, contradictory options).

use std::fmt;

/// A usage error: reported like any error, but the process exits with code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A usage error as an `anyhow::Error`.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// The exit code of a failed command: 2 for usage errors anywhere in the chain, else 1.
pub fn code_of(e: &anyhow::Error) -> i32 {
    if e.chain().any(|c| c.downcast_ref::<UsageError>().is_some()) {
        2
    } else {
        1
    }
}

/// The message of a failed command: its context chain joined with `": "`, skipping a cause whose
/// text the message already ends with (library errors often show their source in their own
/// text, which `{:#}` would print twice: "x: No such file (os error 2): No such file (os
/// error 2)").
pub fn render(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || msg.ends_with(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    if let Some(h) = hint(e) {
        msg.push_str(" (");
        msg.push_str(h);
        msg.push(')');
    }
    msg
}

/// The CLI flag that addresses a library error in `e`'s chain.
fn hint(e: &anyhow::Error) -> Option<&'static str> {
    e.chain()
        .find_map(|c| c.downcast_ref::<trust_core::Error>())
        .and_then(core_hint)
}

/// The CLI flag that addresses a library error (library messages name no flags).
pub fn core_hint(e: &trust_core::Error) -> Option<&'static str> {
    match e {
        trust_core::Error::OutputExists(_) => {
            Some("pass --resume to continue it, or another --out")
        }
        trust_core::Error::ManifestMismatch { .. } => {
            Some("use another --out, or delete the old run to start over")
        }
        trust_core::Error::DataDir(_) => Some("set --data-dir DIR or TRUST_DATA_DIR"),
        _ => None,
    }
}

/// A library error's message with its CLI hint, for per-vertical error lines.
pub fn core_message(e: &trust_core::Error) -> String {
    match core_hint(e) {
        Some(h) => format!("{e} ({h})"),
        None => e.to_string(),
    }
}

/// Makes writes to a closed stdout end the process quietly (as `head` expects) instead of
/// panicking in `println!`: the default SIGPIPE action is restored, so the kernel ends the
/// process on the broken pipe, as it does for C tools. Not for `trust serve`, whose output is
/// sockets (Rust sends with `MSG_NOSIGNAL` anyway) and which must outlive a closed terminal pipe.
pub fn quiet_broken_pipe() {
    if std::env::args_os().nth(1).is_some_and(|c| c == "serve") {
        return;
    }
    #[cfg(unix)]
    // SAFETY: called first in `main`, before any thread exists; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct WithSource(std::io::Error);
    impl fmt::Display for WithSource {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "model.bin: {}", self.0)
        }
    }
    impl std::error::Error for WithSource {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_source_shown_in_its_parent_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(WithSource(io)).context("loading model");
        assert_eq!(
            format!("{e:#}"),
            "loading model: model.bin: no such file: no such file"
        );
        assert_eq!(render(&e), "loading model: model.bin: no such file");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(render(&e), "outer: inner");
        assert_eq!(code_of(&usage("bad flag")), 2);
    }
}
