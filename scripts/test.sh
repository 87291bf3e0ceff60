#!/usr/bin/env bash
# Set up with the [test] extra (scripts/setup.sh test) and run the test suite; arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"`. Exits with pytest's status (5: no tests collected).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec "${PYTHON:-python3}" -m pytest "$@"
