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
    cmd = [sys.executable, "-m", "scconcerto.cli", "train", str(data), "--batch-key", "batch", "--epochs", str(EPOCHS),
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
