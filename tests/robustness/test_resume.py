"""A training run killed with SIGKILL resumes from its last checkpoint and finishes its epochs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EPOCHS = 150


def _train_cmd(data: Path, out: Path, ckpt: Path, resume: bool) -> list[str]:
    # with a label key: the supervised term's label directions are part of what a checkpoint must restore
    cmd = [sys.executable, "-m", "scconcerto.cli", "train", str(data), "--batch-key", "batch", "--label-key",
           "cell_type", "--epochs", str(EPOCHS),
           "--batch-size", "64", "--out", str(out), "--checkpoint-dir", str(ckpt), "--no-progress", "--device", "cpu"]
    return cmd + (["--resume"] if resume else [])


@pytest.mark.slow
def test_sigkill_then_resume_finishes_the_same_number_of_epochs(sim, tmp_path):
    data = tmp_path / "ref.h5ad"
    sim[:256].copy().write_h5ad(data)
    out, ckpt = tmp_path / "model", tmp_path / "ckpt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_train_cmd(data, out, ckpt, resume=False), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = ckpt / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # let a few more epochs run
    assert proc.poll() is None, "training finished before it could be killed; raise EPOCHS"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert last.exists() and not out.exists()  # no half-written model directory

    done = subprocess.run(_train_cmd(data, out, ckpt, resume=True), env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    epochs = [h["epoch"] for h in config["history"]]
    assert epochs == list(range(EPOCHS))  # the epochs before the kill are kept, none repeated or lost
    assert config["train"]["epochs"] == EPOCHS
    assert config["train"]["label_weight"] > 0  # the supervised term was trained, and resumed


# ------------------------------------------------------------------ checkpoints and resuming
def _small(sim):
    from scconcerto import Concerto

    return Concerto(sim[:128].copy(), batch_key="batch")


TRAIN = {"batch_size": 32, "progress": False, "device": "cpu", "positive_neighbors": 0, "prepare_mapping": False}


def test_resume_needs_a_checkpoint_dir(sim, tmp_path, capsys):
    from scconcerto import InputError
    from scconcerto.cli import main

    with pytest.raises(InputError, match="checkpoint_dir"):
        _small(sim).train(epochs=1, resume=True, **TRAIN)
    data = tmp_path / "ref.h5ad"
    sim[:64].copy().write_h5ad(data)
    assert main(["train", str(data), "--resume", "--out", str(tmp_path / "m"), "--epochs", "1", "--no-progress",
                 "--device", "cpu"]) == 2
    assert "--checkpoint-dir" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_resume_with_other_settings_or_a_damaged_checkpoint_is_refused(sim, tmp_path):
    from scconcerto import InputError

    ckpt = tmp_path / "ckpt"
    _small(sim).train(epochs=2, checkpoint_dir=ckpt, **TRAIN)
    with pytest.raises(InputError, match=r"batch_size 32 -> 64"):
        _small(sim).train(epochs=2, checkpoint_dir=ckpt, resume=True, **{**TRAIN, "batch_size": 64})
    with pytest.raises(InputError, match=r"epochs 2 -> 1"):
        _small(sim).train(epochs=1, checkpoint_dir=ckpt, resume=True, **TRAIN)
    with pytest.raises(InputError, match="other data"):
        from scconcerto import Concerto

        Concerto(sim[:100].copy(), batch_key="batch").train(epochs=2, checkpoint_dir=ckpt, resume=True, **TRAIN)
    resumed = _small(sim).train(epochs=2, checkpoint_dir=ckpt, resume=True, **TRAIN)  # same run: finished
    assert [h["epoch"] for h in resumed.history] == [0, 1]
    last = ckpt / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated (a full disk, a killed copy)
    with pytest.raises(InputError, match="truncated, damaged"):
        _small(sim).train(epochs=2, checkpoint_dir=ckpt, resume=True, **TRAIN)


def test_checkpoints_are_read_without_running_pickled_code(sim, tmp_path, monkeypatch):
    import torch

    from scconcerto import InputError

    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return os.makedirs, (str(marker),)

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save({"state_dict": {}, "epoch": 0, "payload": Payload()}, ckpt / "last.ckpt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's switch back to full unpickling
    with pytest.raises(InputError, match="cannot be read safely"):
        _small(sim).train(epochs=2, checkpoint_dir=ckpt, resume=True, **TRAIN)
    assert not marker.exists()


def test_checkpoints_are_moved_into_place_from_their_own_folder(sim, tmp_path, monkeypatch):
    moves = []
    for name in ("rename", "replace"):
        real = getattr(os, name)

        def record(src, dst, *args, _real=real, **kwargs):
            moves.append((Path(src), Path(dst)))
            return _real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, name, record)
    ckpt = tmp_path / "ckpt"
    _small(sim).train(epochs=2, checkpoint_dir=ckpt, **TRAIN)
    into_last = [src for src, dst in moves if dst == ckpt / "last.ckpt"]
    assert len(into_last) == 2 and all(src.parent == ckpt for src in into_last)
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.ckpt"]


def test_a_full_disk_while_checkpointing_is_a_clear_error_and_keeps_the_last_checkpoint(sim, tmp_path, monkeypatch):
    import builtins
    import errno

    import scconcerto.train.checkpoints as checkpoints
    from scconcerto import OutputWriteError
    from scconcerto.train.checkpoints import read_checkpoint

    calls = []

    class FullDisk:  # the second checkpoint's file takes a few bytes, then the disk is full
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        calls.append(file)
        return FullDisk(f) if len(calls) == 2 else f

    monkeypatch.setattr(checkpoints, "open", fake_open, raising=False)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(OutputWriteError, match="disk is full"):
        _small(sim).train(epochs=3, checkpoint_dir=ckpt, **TRAIN)
    monkeypatch.undo()
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.ckpt"]
    assert read_checkpoint(ckpt / "last.ckpt")["epoch"] == 0  # the first epoch's checkpoint, whole


def test_ctrl_c_prints_one_line_and_exits_130(sim, tmp_path):
    data = tmp_path / "ref.h5ad"
    sim[:256].copy().write_h5ad(data)
    out, ckpt = tmp_path / "model", tmp_path / "ckpt"
    # a shell's background job inherits an ignored SIGINT (and so would the command): give it Ctrl-C's default
    proc = subprocess.Popen(_train_cmd(data, out, ckpt, resume=False), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not (ckpt / "last.ckpt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be interrupted; raise EPOCHS"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    # a torch deprecation notice, and the one log line per epoch written when standard error is not a terminal
    lines = [line for line in err.splitlines() if "LeafSpec" not in line and not line.startswith("training epoch ")]
    assert proc.returncode == 130, err[-2000:]
    assert lines == ["scconcerto train: interrupted"], err[-2000:]
    assert "Traceback" not in err
    assert not out.exists() and sorted(p.name for p in ckpt.iterdir()) == ["last.ckpt"]
