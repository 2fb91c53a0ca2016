"""What a command shows: one JSON result on stdout; bars or epoch lines on stderr; no third-party warnings;
--help and --version without importing the heavy libraries."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import scconcerto
from scconcerto.cli import main

SRC = str(Path(scconcerto.__file__).parents[1])


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "scconcerto.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def data(sim, tmp_path_factory):
    folder = tmp_path_factory.mktemp("streams")
    sim[:200].copy().write_h5ad(folder / "ref.h5ad")
    return folder


def test_train_without_a_terminal_logs_one_line_per_epoch_and_prints_only_json(data):
    done = _run("train", "ref.h5ad", "--out", "m", "--epochs", "3", "--device", "cpu", cwd=data)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # the whole of stdout is the JSON result
    assert result["out"] == "m" and result["epochs"] == 3
    lines = done.stderr.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [f"training epoch {e}/3" for e in (1, 2, 3)], done.stderr
    assert "Warning" not in done.stderr and "%|" not in done.stderr  # no third-party warning, no bar


def test_progress_bar_on_stderr_when_asked_and_quiet_mode(data):
    done = _run("train", "ref.h5ad", "--out", "m2", "--epochs", "2", "--device", "cpu", "--progress", cwd=data)
    assert done.returncode == 0, done.stderr
    json.loads(done.stdout)
    assert "it/s" in done.stderr or "s/it" in done.stderr  # tqdm's bar, on stderr
    assert "training epoch" not in done.stderr
    quiet = _run("-q", "train", "ref.h5ad", "--out", "m3", "--epochs", "2", "--device", "cpu", cwd=data)
    assert quiet.returncode == 0 and quiet.stderr == "" and json.loads(quiet.stdout)["out"] == "m3"


def test_help_and_version_import_nothing_heavy(tmp_path):
    code = ("import sys\nfrom scconcerto.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in ('torch', 'anndata', 'scanpy', 'lightning', 'numpy', 'pandas') "
            "if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    version = _run("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"scconcerto {scconcerto.__version__}"


def test_every_help_shows_the_defaults(capsys):
    from scconcerto.cli import COMMANDS

    leaves = [[c] for c in COMMANDS if c != "annotate"] + [["annotate", s] for s in ("train", "predict", "cv")]
    for command in leaves:
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        text = capsys.readouterr().out
        assert "--out" in text and "-q, --quiet" in text, command
        assert "%%" not in text and "%(" not in text, command  # percent signs formatted as a reader sees them
    with pytest.raises(SystemExit):
        main(["map", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--impute-k IMPUTE_K reference neighbours averaged to impute proteins (default: 20)" in text
    assert "--device DEVICE auto, cpu or cuda (default: auto)" in text


def test_verbosity_setting():
    from scconcerto import settings

    before = settings.verbosity
    try:
        settings.verbosity = 2
        assert settings.verbosity == "info"
        settings.verbosity = "debug"
        assert settings.verbosity == "debug"
        with pytest.raises(ValueError, match="verbosity"):
            settings.verbosity = "loud"
        with pytest.raises(ValueError, match="progress"):
            settings.progress = "sometimes"
        assert settings.show_progress(True) and not settings.show_progress(False)
    finally:
        settings.verbosity = before
