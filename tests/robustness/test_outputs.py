"""Nothing lost: a failing run leaves earlier outputs intact and leaves no temporary files."""

import hashlib

import numpy as np

from scconcerto.cli import main


def _tree_hash(path):
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def test_failing_training_leaves_the_previous_model_directory_intact(trained_model, sim, tmp_path, capsys):
    model_dir = trained_model.save(tmp_path / "model")
    before = _tree_hash(model_dir)
    bad = sim[:50].copy()
    bad.X = bad.X.copy()
    bad.X.data[:] = np.nan
    bad.write_h5ad(tmp_path / "bad.h5ad")
    rc = main(["train", str(tmp_path / "bad.h5ad"), "--out", str(model_dir), "--overwrite", "--no-progress"])
    assert rc == 2 and "NaN" in capsys.readouterr().err
    assert _tree_hash(model_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.h5ad", "model"]


def test_failed_write_leaves_no_partial_output(tmp_path):
    import pytest

    from scconcerto._io import write_atomic_file

    def explode(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic_file(tmp_path / "out.h5ad", explode)
    assert list(tmp_path.iterdir()) == []
