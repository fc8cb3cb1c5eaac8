#!/usr/bin/env bash
# Fresh machine -> a DecPG run on VMAS, end to end: makes a virtualenv, installs
# benchmarl-decentral with VMAS, trains DecPG on vmas/balance for a small
# budget (a few minutes on a laptop CPU) and prints where the results are.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[vmas]"

FRAMES="${QUICKSTART_FRAMES:-60000}"   # 10 iterations of 6000 frames
OUT="${QUICKSTART_OUT:-$PWD/results/quickstart}"
mkdir -p "$OUT"
"$VENV/bin/benchmarl" run algorithm=decpg task=vmas/balance \
    experiment.max_n_frames="$FRAMES" \
    experiment.on_policy_collected_frames_per_batch=6000 \
    experiment.on_policy_n_envs_per_worker=60 \
    experiment.evaluation_interval=6000 \
    experiment.evaluation_episodes=10 \
    experiment.loggers=[csv] experiment.render=false \
    hydra.run.dir="$OUT"
echo
echo "Results of the DecPG run are in: $OUT"
echo "  JSON (benchmarl report input): $(find "$OUT" -name 'decpg_*.json' | head -1)"
echo "  CSV scalars:                   $(find "$OUT" -type d -name scalars | head -1)"
