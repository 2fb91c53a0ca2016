from benchmarks.tasks.unsupervised import verdicts


def _row(dataset, method, acc, bio=0.5, batch=0.5):
    return {"dataset": dataset, "method": method, "acc": acc, "bio": bio, "batch": batch}


def test_verdicts_say_beats_ties_or_trails_by_the_sign_of_the_difference():
    rows = [_row("symphony_pbmc_3tech", "scconcerto", 1.0, bio=0.9, batch=0.4),
            _row("symphony_pbmc_3tech", "pca", 1.0, bio=0.8), _row("symphony_pbmc_3tech", "harmony", 0.9, batch=0.6)]
    (note,) = verdicts(rows)
    assert note.startswith("symphony_pbmc_3tech (development): ")
    assert "acc vs pca +0.000 (ties)" in note
    assert "bio vs pca +0.100 (beats)" in note
    assert "batch vs harmony -0.200 (trails)" in note
