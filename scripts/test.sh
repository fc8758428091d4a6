#!/usr/bin/env bash
# The test command of README.md: installs what the tests need on a fresh machine, then runs them.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k frontend`).
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools: qemu-aarch64 and the aarch64 cross compiler (aarch64 artifacts are built and run
# under emulation), chromium (the report and IR viewer pages are rendered headless), Debian's
# Fashion-MNIST (the shipped model's full 10,000-image test split).
missing=()
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v chromium >/dev/null || missing+=(chromium)
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)   # real labelled test images
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
# torch exports the transformer and ResNet test models; 2.13.0 is the CPU build this machine holds
# (an unpinned torch would fetch a CUDA build of several GB).
"$PYTHON" -c "import torch" 2>/dev/null || "$PYTHON" -m pip install --quiet --disable-pip-version-check torch==2.13.0
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[test]"

exec "$PYTHON" -m pytest -q "$@"
