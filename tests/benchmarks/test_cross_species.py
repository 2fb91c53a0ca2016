"""The simulated mouse query of the cross-species task, and the task's smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("benchmarks.run")

from benchmarks import multiseed  # noqa: E402
from scconcerto.data.genes import ortholog_table  # noqa: E402
from benchmarks.tasks.cross_species import as_mouse, human_named_simulation, translated  # noqa: E402


def test_as_mouse_renames_through_orthologs_and_translation_undoes_it() -> None:
    human = human_named_simulation()
    human.var_names = list(human.var_names[:-2]) + ["NO_ORTHOLOG_1", "NO_ORTHOLOG_2"]  # dropped
    mouse = as_mouse(human, sd=0.5, seed=0)
    assert mouse.n_obs == human.n_obs and mouse.n_vars == human.n_vars - 2
    orth = ortholog_table().set_index("human")["mouse"]
    assert list(mouse.var_names) == [orth[g] for g in human.var_names[:-2]]
    back = translated(human, mouse)
    assert list(back.var_names) == list(human.var_names[:-2])
    # per-gene factors: the log ratio of gene totals spreads like the factors' sd, and the draw is seeded
    ratio = np.log((np.asarray(back.X.sum(0)).ravel() + 1) / (np.asarray(human.X[:, :-2].sum(0)).ravel() + 1))
    assert 0.3 < ratio.std() < 0.8
    again = as_mouse(human, sd=0.5, seed=0)
    assert (again.X != mouse.X).nnz == 0


def test_multiseed_runs_the_task_for_each_seed_and_writes_the_spread(tmp_path: Path) -> None:
    out = tmp_path / "ms"
    assert multiseed.main(["--tasks", "cross_species", "--seeds", "0,1", "--out", str(out), "--smoke",
                           "--methods", "pca_knn", "--no-figures", "--threads", "0"]) == 0
    for seed in (0, 1):
        payload = json.loads((out / f"seed_{seed}" / "cross_species.json").read_text())
        assert payload["seed"] == seed and payload["rows"][0]["acc"] > 0.9
    text = (out / "SEEDS.md").read_text()
    assert text.startswith("# Seed spread: cross_species") and "at commit " in text
    assert "as mouse" in text and "| 2 |" in text
