"""The classifier benchmark's report: the setting chosen on development rows only, means and spreads by hand."""

from __future__ import annotations

import pandas as pd
import pytest

pytest.importorskip("benchmarks.classifier")

from benchmarks.classifier import choose, render, table  # noqa: E402


def rows() -> pd.DataFrame:
    """Two development tasks and one test task, two seeds. On development, lr 3e-4 with the vote and the target's
    genes is best; on the test task, lr 1e-3 without either."""
    dev = {(1e-3, False): 0.80, (1e-3, True): 0.82, (3e-4, False): 0.81, (3e-4, True): 0.86}
    test = {(1e-3, False): 0.99, (1e-3, True): 0.90, (3e-4, False): 0.90, (3e-4, True): 0.85}
    out = []
    for seed, shift in ((0, 0.0), (1, 0.02)):
        for task, role in (("d1", "development"), ("d2", "development"), ("t1", "test")):
            for method in ("map_query", "5-NN on the embedding"):
                out.append({"task": task, "role": role, "seed": seed, "method": method, "lr": float("nan"),
                            "expression_vote": "", "target_genes": "", "acc": 0.5, "macro_f1": 0.5})
            for (lr, vote), acc in (dev if role == "development" else test).items():
                for genes, gain in ((False, 0.0), (True, 0.01 if role == "development" else -0.05)):
                    out.append({"task": task, "role": role, "seed": seed, "method": "classifier", "lr": lr,
                                "expression_vote": vote, "target_genes": genes, "acc": acc + shift + gain,
                                "macro_f1": acc})
    return pd.DataFrame(out)


def test_the_choice_reads_development_rows_only():
    frame = rows()
    dev, test = frame[frame["role"] == "development"], frame[frame["role"] == "test"]
    grid, lr, vote, genes = choose(dev)
    assert (lr, vote, genes) == (3e-4, True, True)
    assert list(grid["lr"])[:3] == ["0.0003", "0.0003", "0.001"]  # best first; mapping and 5-NN are not candidates
    text = render(dev, test, ["--smoke"], 1.0)
    assert "Chosen: learning rate **0.0003**, expression vote **True**, target genes **True**" in text
    assert "## Test tasks (never tuned on)" in text


def test_table_gives_each_settings_mean_and_spread_over_seeds():
    shown = table(rows())
    row = shown[(shown["task"] == "d1")
                & (shown["setting"] == "classifier lr 0.0003, vote True, target genes False")].iloc[0]
    assert row["acc_mean"] == pytest.approx(0.87) and row["acc_sd"] == pytest.approx(0.014, abs=1e-3)
    assert row["seeds"] == 2
    for baseline in ("map_query", "5-NN on the embedding"):
        assert (shown["setting"] == baseline).sum() == 3


def test_the_unseen_type_section_gives_each_scores_mean_and_spread():
    from benchmarks.classifier import unseen_table

    unseen = pd.DataFrame([{"case": "c1", "role": "test", "seed": seed, "n_unseen": 9, "score": score,
                            "auroc": auroc + 0.02 * seed, "flagged_unseen": 0.5, "flagged_seen": 0.1,
                            "seen_acc": 0.9}
                           for seed in (0, 1) for score, auroc in (("map_query", 0.9), ("classifier (reference)", 0.8))])
    shown = unseen_table(unseen)
    row = shown[shown["score"] == "classifier (reference)"].iloc[0]
    assert row["auroc_mean"] == pytest.approx(0.81) and row["auroc_sd"] == pytest.approx(0.014, abs=1e-3)
    assert row["seeds"] == 2 and row["n_unseen"] == 9
    frame = rows()
    text = render(frame[frame["role"] == "development"], None, ["--smoke"], 1.0, unseen)
    assert "## Unseen types" in text and "classifier (reference)" in text
