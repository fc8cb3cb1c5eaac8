#!/usr/bin/env bash
# Fresh machine -> a DecPG run on VMAS, end to end: makes a virtualenv, installs
# benchmarl-decentral with VMAS (and matplotlib for the curve, the report extra),
# trains DecPG on vmas/balance for a small budget (a few minutes on a laptop CPU),
# then says whether it learned: evaluation return at the start and at the end
# against a uniform random policy, a curve (learning_curve.png), the checkpoints
# and the next commands to try.
#
# QUICKSTART_FRAMES   training frames (default 60000: 10 iterations)
# QUICKSTART_BATCH    frames per iteration, also the evaluation interval (default 6000)
# QUICKSTART_OUT      output folder (default outputs/quickstart/<date>_<time>)
# VENV                virtualenv to use or create (default .venv); nothing is installed
#                     when it already runs benchmarl-decentral with VMAS and matplotlib
# Arguments are appended to the `benchmarl run` command (hydra overrides), e.g.
#   bash scripts/quickstart.sh experiment.on_policy_n_minibatch_iters=1
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import benchmarl_decentral, vmas, matplotlib" 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[vmas,report]"
fi

FRAMES="${QUICKSTART_FRAMES:-60000}"
BATCH="${QUICKSTART_BATCH:-6000}"
OUT="${QUICKSTART_OUT:-$PWD/outputs/quickstart/$(date +%Y-%m-%d_%H-%M-%S)}"
ENVS=$(( BATCH / 100 ))                      # balance episodes last 100 steps: one episode per env and batch
HALF=$(( FRAMES / BATCH / 2 * BATCH ))       # a mid-run checkpoint, to try `benchmarl resume` on
[ "$HALF" -ge "$BATCH" ] || HALF="$BATCH"
mkdir -p "$OUT"
"$VENV/bin/benchmarl" run algorithm=decpg task=vmas/balance \
    experiment.max_n_frames="$FRAMES" \
    experiment.on_policy_collected_frames_per_batch="$BATCH" \
    experiment.on_policy_n_envs_per_worker="$ENVS" \
    experiment.on_policy_minibatch_size=$(( BATCH < 400 ? BATCH : 400 )) \
    experiment.evaluation_interval="$BATCH" \
    experiment.evaluation_episodes=10 \
    experiment.checkpoint_interval="$HALF" \
    experiment.checkpoint_at_end=true \
    experiment.loggers=[csv] experiment.render=false \
    hydra.run.dir="$OUT" "$@"
"$VENV/bin/python" scripts/quickstart_summary.py "$OUT" --task vmas/balance
