#!/usr/bin/env bash
# Installs the ONNX Runtime shared library that trust's `ort` feature loads at run time.
#
# trust-backends builds `ort` with `load-dynamic` and without `download-binaries`: nothing is
# downloaded at build time, and the library is opened at run time from `ORT_DYLIB_PATH`.
# This script fetches the official PyPI wheel `onnxruntime==1.31.1` (CPU build), checks its
# sha256 against the value pinned below, and extracts the shared library into `.ort/lib/` at the
# repository root:
#
#   .ort/lib/libonnxruntime.so.1.31.1
#   .ort/lib/libonnxruntime.so -> libonnxruntime.so.1.31.1
#   .ort/lib/libonnxruntime_providers_shared.so
#
# `.cargo/config.toml` points ORT_DYLIB_PATH at `.ort/lib/libonnxruntime.so` for cargo commands
# (a value already set in the environment wins). Outside cargo, export it yourself:
#
#   export ORT_DYLIB_PATH="$PWD/.ort/lib/libonnxruntime.so"
#
# Usage: scripts/install-onnxruntime.sh [--wheel FILE] [--force]
#   --wheel FILE   use an already-downloaded wheel instead of calling pip (it is still hash-checked)
#   --force        reinstall even if a verified install is present
#
# Idempotent: if the library is present and its recorded hashes match, it does nothing.
set -euo pipefail

ORT_VERSION="1.31.1"
# The wheel is chosen by explicit tags (CPython 3.11 ABI; the shared library inside does not depend
# on the Python version), so the same file, and therefore the same hash, is fetched on every host
# of an architecture whatever its local Python is.
PY_TAG="cp311"
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64)
    PLATFORM="manylinux_2_28_x86_64"
    WHEEL_SHA256="5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f"
    ;;
  Linux-aarch64 | Linux-arm64)
    PLATFORM="manylinux_2_28_aarch64"
    WHEEL_SHA256="da05378364c44d4407e463982d2bf8d5e4cfea873283757e48beeb41df97b7f3"
    ;;
  *)
    echo "install-onnxruntime.sh: unsupported platform $(uname -s)-$(uname -m)." >&2
    echo "Install ONNX Runtime ${ORT_VERSION} yourself and set ORT_DYLIB_PATH to its shared library." >&2
    exit 1
    ;;
esac
WHEEL_NAME="onnxruntime-${ORT_VERSION}-${PY_TAG}-${PY_TAG}-${PLATFORM}.whl"
LIB_NAME="libonnxruntime.so.${ORT_VERSION}"

die() {
  echo "install-onnxruntime.sh: error: $*" >&2
  exit 1
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

WHEEL_ARG=""
FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --wheel) [ $# -ge 2 ] || die "--wheel needs a file"; WHEEL_ARG="$2"; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIB_DIR="${REPO_ROOT}/.ort/lib"
STAMP="${LIB_DIR}/INSTALLED"

# Already installed and intact?
if [ "$FORCE" -eq 0 ] && [ -f "$STAMP" ] && [ -f "${LIB_DIR}/${LIB_NAME}" ] && [ -e "${LIB_DIR}/libonnxruntime.so" ]; then
  recorded_wheel="$(sed -n 's/^wheel_sha256=//p' "$STAMP")"
  recorded_lib="$(sed -n 's/^lib_sha256=//p' "$STAMP")"
  if [ "$recorded_wheel" = "$WHEEL_SHA256" ] && [ "$recorded_lib" = "$(sha256_of "${LIB_DIR}/${LIB_NAME}")" ]; then
    echo "ONNX Runtime ${ORT_VERSION} already installed: ${LIB_DIR}/libonnxruntime.so (hashes ok)"
    exit 0
  fi
  echo "existing install in ${LIB_DIR} does not match the pinned hashes; reinstalling" >&2
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/trust-ort.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

if [ -n "$WHEEL_ARG" ]; then
  [ -f "$WHEEL_ARG" ] || die "no such wheel: $WHEEL_ARG"
  WHEEL="$WHEEL_ARG"
else
  command -v python3 >/dev/null 2>&1 || die "python3 (with pip) is needed to download the wheel; or pass --wheel FILE"
  echo "downloading ${WHEEL_NAME} from PyPI ..."
  python3 -m pip download "onnxruntime==${ORT_VERSION}" --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi "${PY_TAG}" --platform "${PLATFORM}" \
    --disable-pip-version-check -q -d "$TMP" \
    || die "pip download of onnxruntime==${ORT_VERSION} failed"
  WHEEL="${TMP}/${WHEEL_NAME}"
  [ -f "$WHEEL" ] || die "pip did not produce ${WHEEL_NAME}; got: $(ls "$TMP")"
fi

ACTUAL="$(sha256_of "$WHEEL")"
if [ "$ACTUAL" != "$WHEEL_SHA256" ]; then
  echo "install-onnxruntime.sh: SHA256 MISMATCH for $(basename "$WHEEL")" >&2
  echo "  expected ${WHEEL_SHA256}" >&2
  echo "  got      ${ACTUAL}" >&2
  echo "Refusing to install. Delete the file and retry; if PyPI really changed, review and update the pin." >&2
  exit 1
fi
echo "wheel sha256 ok: ${ACTUAL}"

mkdir -p "$LIB_DIR"
python3 - "$WHEEL" "$LIB_DIR" "$LIB_NAME" <<'PY' || die "extracting the library from the wheel failed"
import os, shutil, sys, zipfile
wheel, out, lib_name = sys.argv[1:4]
wanted = {f"onnxruntime/capi/{lib_name}": lib_name,
          "onnxruntime/capi/libonnxruntime_providers_shared.so": "libonnxruntime_providers_shared.so"}
with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    missing = [n for n in wanted if n not in names]
    if missing:
        sys.exit(f"wheel lacks {missing}")
    for member, name in wanted.items():
        tmp = os.path.join(out, name + ".part")
        with z.open(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.chmod(tmp, 0o755)
        os.replace(tmp, os.path.join(out, name))
PY
ln -sfn "$LIB_NAME" "${LIB_DIR}/libonnxruntime.so"

{
  echo "version=${ORT_VERSION}"
  echo "wheel=${WHEEL_NAME}"
  echo "wheel_sha256=${WHEEL_SHA256}"
  echo "lib_sha256=$(sha256_of "${LIB_DIR}/${LIB_NAME}")"
} > "$STAMP"

echo "installed ONNX Runtime ${ORT_VERSION}: ${LIB_DIR}/libonnxruntime.so"
echo "cargo picks it up through .cargo/config.toml; elsewhere: export ORT_DYLIB_PATH=\"${LIB_DIR}/libonnxruntime.so\""
