#!/usr/bin/env bash
# The aarch64 deploy tests' host tools and emulated board, for CI and developers.
#   bash scripts/arm_board.sh      apt: g++-aarch64-linux-gnu qemu-user (if missing; needs root),
#                                  then the board: ~125 MB downloaded once into
#                                  ~/.cache/ibert-tvm/arm-board (or $IBERT_TVM_ARM_BOARD)
# Idempotent: a second run downloads nothing. See ibert_tvm/deploy/board.py.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
command -v aarch64-linux-gnu-objdump >/dev/null || need+=(binutils-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "arm_board.sh: run as root, or: sudo apt-get install -y ${need[*]}" >&2
    exit 2
  fi
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi
python -m ibert_tvm.deploy.board
