#!/usr/bin/env bash
# Set up a virtualenv with the test extras (BenchMARL, VMAS, PettingZoo MPE,
# torch_geometric, pytest) from this repo's pyproject.toml, then run the whole
# test suite, slow end-to-end tests included. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
# One intra-op thread per process: the tests run tiny networks, where a second
# thread only adds contention (and subprocess tests run next to the main one).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$rc"
