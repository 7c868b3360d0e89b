//! Loading the ONNX Runtime library: bad libraries are errors (not panics) that tell the user how
//! to fix them, and a failed load does not stop a later good one. One test function, because a
//! process can load only one library: the steps must run in this order.
#![cfg(feature = "ort")]

use std::path::{Path, PathBuf};

use trust_backends::BackendError;
use trust_backends::ort::{OrtClassifier, OrtClassifierOptions, SessionOptions, ort_environment};

fn classifier_with(lib: &Path) -> Result<OrtClassifier, BackendError> {
    OrtClassifier::from_dir(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx/tiny-classifier"),
        OrtClassifierOptions {
            session: SessionOptions {
                sessions: Some(1),
                dylib_path: Some(lib.to_path_buf()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
}

fn assert_library_error(err: BackendError, path: &Path, needle: &str) {
    let msg = err.to_string();
    assert!(matches!(err, BackendError::OrtLibrary { .. }), "{err:?}");
    assert!(
        msg.contains(&path.display().to_string()),
        "names the path: {msg}"
    );
    assert!(msg.contains(needle), "expected {needle:?} in: {msg}");
    assert!(
        msg.contains("scripts/install-onnxruntime.sh") && msg.contains("ORT_DYLIB_PATH"),
        "{msg}"
    );
}

#[test]
fn bad_libraries_are_reported_then_a_good_one_loads() {
    let good =
        PathBuf::from(std::env::var_os("ORT_DYLIB_PATH").expect(
            "ORT_DYLIB_PATH (set by .cargo/config.toml; run scripts/install-onnxruntime.sh)",
        ));
    assert!(
        good.is_file(),
        "{} missing: run scripts/install-onnxruntime.sh",
        good.display()
    );
    let tmp = tempfile::tempdir().unwrap();

    // 1. Nothing there.
    let missing = tmp.path().join("libonnxruntime.so");
    assert_library_error(
        classifier_with(&missing).unwrap_err(),
        &missing,
        "no such file",
    );

    // 2. A file that is not a shared library.
    let text = tmp.path().join("not-a-library.so");
    std::fs::write(&text, "hello\n").unwrap();
    assert_library_error(classifier_with(&text).unwrap_err(), &text, "failed to load");

    // 3. A real shared library that is not ONNX Runtime (the wheel's provider bridge, installed
    //    next to it by the script).
    let other = good
        .canonicalize()
        .unwrap()
        .with_file_name("libonnxruntime_providers_shared.so");
    assert!(
        other.is_file(),
        "{} missing: rerun scripts/install-onnxruntime.sh --force",
        other.display()
    );
    assert_library_error(
        classifier_with(&other).unwrap_err(),
        &other,
        "OrtGetApiBase",
    );

    // 4. The real one still loads after those failures.
    let clf = classifier_with(&good).expect("the installed library loads");
    assert_eq!(clf.labels().len(), 6);
    assert!(
        ort_environment(None).is_ok(),
        "ORT_DYLIB_PATH names the same library"
    );

    // 5. Once loaded, another library cannot replace it in this process.
    let copy = tmp.path().join("copy-of-libonnxruntime.so");
    std::fs::copy(&good, &copy).unwrap();
    assert_library_error(classifier_with(&copy).unwrap_err(), &copy, "already loaded");
}
