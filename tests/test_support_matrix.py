"""Issue 17 item 4: the support matrix (``scripts/support_matrix.py``, ``docs/support_matrix.json``).

The whole matrix (every algorithm x every VMAS / PettingZoo task with mlp, and every model kind
on four representative tasks; about 380 tiny runs) is too slow for CI; it is regenerated with
``OMP_NUM_THREADS=1 python scripts/support_matrix.py --workers 2``. Here:

* fast: the committed file is the matrix of this installation (same tasks, groups, action kinds,
  combinations), has no failure, and the README table is what the script renders from it;
* slow: a deterministic sample of the matrix (``support_matrix.sample``: every algorithm x model
  kind pair once, on the representative tasks in rotation, plus 2 mlp task combinations per
  algorithm chosen by the hash of their id) is run again (real BenchMARL, VMAS, PettingZoo: 2
  iterations, evaluations, checkpoint, reload, evaluation) and must give the committed outcome.
"""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import support_matrix as sm  # noqa: E402

DATA = json.loads(sm.RESULTS.read_text())
COMBINATIONS = [sm.Combination.parse(key) for key in DATA["results"]]
SAMPLE = sm.sample(sm.combinations(DATA["tasks"]))


def test_readme_table_is_rendered_from_the_committed_results():
    assert sm.readme_table() == sm.render(DATA)


def test_committed_results_are_the_matrix_of_this_installation():
    import benchmarl

    assert DATA["benchmarl"] == benchmarl.__version__
    assert sm.task_catalogue() == DATA["tasks"]  # every VMAS / PettingZoo task, groups, action kinds
    assert DATA.get("missing", []) == []  # not run yet: python scripts/support_matrix.py --resume
    assert COMBINATIONS == sm.combinations(DATA["tasks"])
    assert len(COMBINATIONS) > 300


def test_committed_results_have_no_failure():
    """A failure (a crash in training, a reload that differs) is a bug, never an accepted outcome."""
    outcomes = {key: r["outcome"] for key, r in DATA["results"].items()}
    assert all(o == "ok" or o.startswith(("refused: ", "failed: ")) for o in outcomes.values())
    assert {key: o for key, o in outcomes.items() if o.startswith("failed")} == {}
    for key, o in outcomes.items():  # a refusal is the algorithm's own check, before training
        if o.startswith("refused"):
            assert o.startswith(f"refused: {key.split()[0]}") and not o.endswith("(left a run folder)"), key


def test_the_sample_covers_every_algorithm_model_task_and_action_kind():
    assert len(SAMPLE) == len(set(SAMPLE)) <= 24
    assert {(c.algorithm, c.model) for c in SAMPLE} == {(a, m) for a in sm.ALGORITHMS for m in sm.MODELS}
    for model in sm.MODELS:
        assert {c.task for c in SAMPLE if c.model == model and c.task in sm.REPRESENTATIVE} == set(sm.REPRESENTATIVE)
    assert {c.actions for c in SAMPLE} == set(sm.ACTIONS)
    assert {c.algorithm for c in SAMPLE if c.task not in sm.REPRESENTATIVE} == set(sm.ALGORITHMS)
    assert sm.sample(sm.combinations(DATA["tasks"])) == SAMPLE  # deterministic


@pytest.mark.slow
@pytest.mark.parametrize("combo", SAMPLE, ids=str)
def test_sampled_combination_has_the_committed_outcome(tmp_path, combo):
    """``run`` raises on a failure, so its traceback is the test's."""
    outcome = sm.run(combo, tmp_path, has_state=DATA["tasks"][combo.task]["has_state"])
    assert outcome == DATA["results"][str(combo)]["outcome"]
