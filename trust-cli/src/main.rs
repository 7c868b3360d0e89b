//! `trust`: measure what preference alignment does to a model's trustworthiness. The command
//! line itself is the `trust_cli` library ([`trust_cli::run`]), so other binaries can add
//! verticals to it.

fn main() -> std::process::ExitCode {
    trust_cli::run([])
}
