import hashlib

import anndata as ad
import numpy as np
import pytest

from scconcerto.cli import main


@pytest.fixture(scope="module")
def ref_file(tmp_path_factory, sim):
    path = tmp_path_factory.mktemp("cli") / "ref.h5ad"
    sim[:300].copy().write_h5ad(path)
    return path


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_then_embed_writes_model_and_embedding_without_touching_the_input(ref_file, tmp_path, capsys):
    before = _sha(ref_file)
    rc = main(["train", str(ref_file), "--batch-key", "batch", "--label-key", "cell_type", "--epochs", "2",
               "--out", str(tmp_path / "model"), "--seed", "1", "--device", "cpu", "--no-progress"])
    assert rc == 0
    assert (tmp_path / "model" / "config.json").exists()
    rc = main(["embed", str(tmp_path / "model"), str(ref_file), "--out", str(tmp_path / "emb.h5ad"), "--device", "cpu"])
    assert rc == 0
    out = ad.read_h5ad(tmp_path / "emb.h5ad")
    assert out.obsm["X_concerto"].shape == (300, 128)
    np.testing.assert_allclose(np.linalg.norm(out.obsm["X_concerto"], axis=1), 1.0, atol=1e-5)
    assert _sha(ref_file) == before


def test_existing_outputs_are_refused_unless_overwrite(ref_file, tmp_path, capsys):
    (tmp_path / "emb.h5ad").write_text("keep me")
    model_dir = tmp_path / "model"
    assert main(["train", str(ref_file), "--epochs", "1", "--out", str(model_dir), "--no-progress",
                 "--device", "cpu"]) == 0
    rc = main(["train", str(ref_file), "--epochs", "1", "--out", str(model_dir), "--no-progress"])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    rc = main(["embed", str(model_dir), str(ref_file), "--out", str(tmp_path / "emb.h5ad")])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "emb.h5ad").read_text() == "keep me"
    # --overwrite replaces only what scConcerto wrote: not this file, but an earlier output
    rc = main(["embed", str(model_dir), str(ref_file), "--out", str(tmp_path / "emb.h5ad"), "--overwrite"])
    assert rc == 2 and "did not write" in capsys.readouterr().err
    assert (tmp_path / "emb.h5ad").read_text() == "keep me"
    assert main(["embed", str(model_dir), str(ref_file), "--out", str(tmp_path / "out.h5ad")]) == 0
    assert main(["embed", str(model_dir), str(ref_file), "--out", str(tmp_path / "out.h5ad"), "--overwrite"]) == 0


def test_bad_inputs_give_one_line_errors_not_tracebacks(tmp_path, capsys):
    not_h5 = tmp_path / "x.h5ad"
    not_h5.write_text("hello")
    assert main(["train", str(not_h5), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "not an .h5ad" in err and "Traceback" not in err
    assert main(["embed", str(tmp_path / "no_model"), str(not_h5), "--out", str(tmp_path / "o.h5ad")]) == 2
    assert "not a model directory" in capsys.readouterr().err


def test_positive_options_reach_the_saved_training_settings(ref_file, tmp_path, capsys):
    import json

    rc = main(["train", str(ref_file), "--batch-key", "batch", "--label-key", "cell_type", "--epochs", "1",
               "--positive-neighbors", "0", "--out", str(tmp_path / "paper"), "--device", "cpu", "--no-progress"])
    assert rc == 0
    cfg = json.loads((tmp_path / "paper" / "config.json").read_text())
    train = cfg["train"]
    assert train["positive_neighbors"] == 0 and train["label_positives"] is False
    assert train["positive_space"] == "svd" and train["positive_rank"] == "nearest"  # no positives were searched
    assert cfg["mapping"]["label_models"]["full"]["cell_type"]["posterior"]["k"] == 5  # the default vote
    rc = main(["train", str(ref_file), "--batch-key", "batch", "--label-key", "cell_type", "--epochs", "1",
               "--positive-neighbors", "4", "--no-label-positives", "--positive-space", "svd", "--out",
               str(tmp_path / "nb"), "--device", "cpu", "--no-progress"])
    assert rc == 0
    cfg = json.loads((tmp_path / "nb" / "config.json").read_text())
    assert cfg["train"]["positive_neighbors"] == 4 and cfg["train"]["label_positives"] is False
    assert cfg["train"]["positive_space"] == "svd"
    assert cfg["train"]["gene_dropout"] == 0.2  # the package default
    assert cfg["train"]["label_weight"] == 0.0  # labels did not shape training: no supervised term recorded
    assert main(["train", str(ref_file), "--epochs", "1", "--gene-dropout", "0", "--out", str(tmp_path / "gd0"),
                 "--device", "cpu", "--no-progress"]) == 0
    gd0 = json.loads((tmp_path / "gd0" / "config.json").read_text())["train"]
    assert gd0["gene_dropout"] == 0.0 and gd0["positive_space"] == "centred"  # the default space
    assert gd0["positive_rank"] == "nearest"
    assert main(["train", str(ref_file), "--epochs", "1", "--positive-space", "joint", "--positive-rank", "shared",
                 "--out", str(tmp_path / "joint"), "--device", "cpu", "--no-progress"]) == 0
    joint = json.loads((tmp_path / "joint" / "config.json").read_text())["train"]
    assert joint["positive_space"] == "joint" and joint["positive_rank"] == "shared"
    assert main(["train", str(ref_file), "--batch-key", "batch", "--epochs", "1", "--source-norm", "shared",
                 "--out", str(tmp_path / "shared"), "--device", "cpu", "--no-progress"]) == 0
    assert json.loads((tmp_path / "shared" / "config.json").read_text())["train"]["source_norm"] == "shared"
    capsys.readouterr()
    assert main(["train", str(ref_file), "--modality-dropout", "2", "--out", str(tmp_path / "bad"),
                 "--no-progress"]) == 2
    assert "modality_dropout must be between 0 and 1" in capsys.readouterr().err
    assert main(["train", str(ref_file), "--gene-dropout", "1", "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "gene_dropout (--gene-dropout) must be at least 0 and below 1" in capsys.readouterr().err
    assert main(["train", str(ref_file), "--label-weight", "-1", "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "label_weight (--label-weight) must be a finite weight" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_hvg_takes_a_number_of_genes_all_or_auto_and_refuses_the_rest(ref_file, tmp_path, capsys):
    from scconcerto import Concerto

    rc = main(["train", str(ref_file), "--hvg", "all", "--epochs", "1", "--out", str(tmp_path / "all"),
               "--no-progress", "--device", "cpu"])
    assert rc == 0
    assert Concerto.load(tmp_path / "all").setup.hvg is None
    rc = main(["train", str(ref_file), "--hvg", "100", "--epochs", "1", "--out", str(tmp_path / "some"),
               "--no-progress", "--device", "cpu"])
    assert rc == 0 and len(Concerto.load(tmp_path / "some").setup.genes) == 100
    rc = main(["train", str(ref_file), "--hvg", "auto", "--epochs", "1", "--out", str(tmp_path / "auto"),
               "--no-progress", "--device", "cpu"])
    ref = ad.read_h5ad(ref_file)
    detected = ref.var_names[np.asarray((ref.X > 0).sum(axis=0)).ravel() > 0].tolist()  # every gene it expresses
    assert rc == 0 and Concerto.load(tmp_path / "auto").setup.genes == detected
    for bad in ("1", "many"):
        with pytest.raises(SystemExit) as err:
            main(["train", str(ref_file), "--hvg", bad, "--out", str(tmp_path / "bad")])
        assert err.value.code == 2
        assert "--hvg" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
