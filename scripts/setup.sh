#!/usr/bin/env bash
# Set up napari-diffmed from this clone: the system packages napari needs (Debian/Ubuntu), torch pinned,
# then the package with an extra (default "all": napari with a Qt binding, preprocessing, Dask and the server;
# "test" adds pytest and its plugins).
#
#   bash scripts/setup.sh [EXTRA]
#
# As root the missing system packages are apt-installed; otherwise the script prints the one command that
# installs them and stops. Without dpkg (not Debian/Ubuntu) that step is skipped. Run it inside a virtual
# environment: pip installs into the Python that `python3` (or $PYTHON) finds.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-all}"
python="${PYTHON:-python3}"

mapfile -t packages < <(grep -v '^\s*#' scripts/system-packages.txt | grep -v '^\s*$')
if command -v dpkg >/dev/null 2>&1; then
  missing=()
  for pkg in "${packages[@]}"; do
    dpkg -s "$pkg" 2>/dev/null | grep -q "^Status: install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
      echo "setup: installing system packages: ${missing[*]}"
      apt-get update
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    else
      echo "setup: napari needs these system packages first; run this, then this script again:" >&2
      echo "  sudo apt-get install -y ${missing[*]}" >&2
      exit 1
    fi
  fi
else
  echo "setup: no dpkg here, skipping the system packages (napari needs OpenGL and a Qt-capable display)"
fi

# torch first, pinned: an unpinned torch would let pip choose the build (CUDA wheels where PyPI offers them).
"$python" -m pip install torch==2.13.0
"$python" -m pip install -e ".[$extra]"
echo "setup: done ($("$python" -c 'import napari_diffmed as d; print("napari-diffmed", d.__version__)'))"
