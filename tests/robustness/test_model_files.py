"""Tampered model folders: each load ends in a clear error of our own, or in a model that predicts exactly as the
original; never a traceback, a hang or a silent change. Edits are made as damage would (checksums left stale)
and as a deliberate tampering would (checksums updated, so that the content checks are reached)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from scconcerto import Concerto, ScConcertoError
from scconcerto.datasets import simulate
from scconcerto.model.storage import config_checksum

SECONDS_PER_LOAD = 20
FUZZ_CASES = 48


@contextlib.contextmanager
def time_box(seconds: int):
    """Raise TimeoutError in the block after ``seconds`` (a hang is a failure, not a stuck test run)."""
    def alarm(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def small():
    """A small trained model with labels, two sources and a classifier; a query; the model's fingerprint."""
    ref = simulate(160, 40, n_types=3, n_batches=2, markers_per_type=6, seed=11)
    model = Concerto(ref, batch_key="batch", label_key="cell_type", dim=16, out_dim=8)
    model.train(epochs=2, batch_size=32, progress=False, device="cpu", positive_neighbors=0)
    model.fit_classifier(epochs=1, progress=False, device="cpu")
    query = simulate(40, 40, n_types=3, n_batches=1, markers_per_type=6, seed=12)
    return model, query


def fingerprint(model: Concerto, query) -> str:
    """Everything a prediction depends on, and the predictions themselves."""
    h = hashlib.sha256()
    h.update(model.embed(query, device="cpu").tobytes())
    for state in (model.network.state_dict(), model.classifier.network.state_dict() if model.classifier is not None else {}):
        for k, v in sorted(state.items()):
            h.update(k.encode() + v.numpy().tobytes())
    for k, v in sorted(model.reference.to_tensors().items()):
        h.update(k.encode() + np.ascontiguousarray(v).tobytes())
    h.update(json.dumps([model.setup.to_dict(), model.mapper.state.to_dict(), model.seed], sort_keys=True).encode())
    if model.classifier is not None:
        h.update(json.dumps(model.classifier.summary, sort_keys=True).encode())
    if model.classifier is not None:
        h.update(np.asarray(model.predict(query.copy(), device="cpu").labels).astype(str).tobytes())
    return h.hexdigest()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def _write_config(path: Path, cfg: dict, sign: bool) -> None:
    if sign:
        cfg["config_checksum"] = config_checksum(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def _sign_file(path: Path, name: str) -> None:
    cfg = _config(path)
    cfg["checksums"][name] = _sha(path / name)
    _write_config(path, cfg, sign=True)


def _load(path: Path):
    with time_box(SECONDS_PER_LOAD):
        return Concerto.load(path)


# ------------------------------------------------------------------ the cases found by hand
@pytest.fixture()
def saved(small, tmp_path):
    model, _ = small
    return model.save(tmp_path / "m")


@pytest.mark.parametrize("edit, message", [
    (lambda c: [c], "not a scConcerto model config"),
    (lambda c: "model", "not a scConcerto model config"),
    (lambda c: {**c, "train": {**c["train"], "learning_rate": 0.1}}, "unknown entries"),
    (lambda c: {**c, "network": {**c["network"], "dim": -5}}, "network.dim"),
    (lambda c: {**c, "network": {**c["network"], "dim": 10**9}}, "shapes or types"),
    (lambda c: {**c, "network": {**c["network"], "dim": "16"}}, "network.dim"),
    (lambda c: {**c, "seed": 2**70}, "seed"),
    (lambda c: {**c, "setup": {**c["setup"], "genes": c["setup"]["genes"][:-1] + c["setup"]["genes"][:1]}},
     "repeated"),
    (lambda c: {**c, "setup": {**c["setup"], "labels": {"cell_type": c["setup"]["labels"]["cell_type"][:-1]}}},
     "codes outside"),
    (lambda c: {**c, "training": {**c["training"], "train_seconds": 1.0}}, "unknown entries"),
    (lambda c: {**c, "mapping": {**c["mapping"], "version": 5}}, "unknown entries"),
    (lambda c: {**c, "mapping": {**c["mapping"], "k": "5"}}, "mapping.k"),
    (lambda c: {**c, "classifier": {**c["classifier"], "knn_k": "10"}}, "classifier.knn_k"),
    (lambda c: {**c, "classifier": None}, "without settings"),
])
def test_edited_configs_are_refused_before_anything_is_built(saved, edit, message):
    cfg = _config(saved)
    (saved / "config.json").write_text(json.dumps(edit(copy.deepcopy(cfg))))
    with pytest.raises(ScConcertoError, match="its own checksum|not a scConcerto model config"):
        _load(saved)
    edited = edit(copy.deepcopy(cfg))
    if isinstance(edited, dict):
        edited["config_checksum"] = config_checksum(edited)
    (saved / "config.json").write_text(json.dumps(edited))
    with pytest.raises(ScConcertoError, match=message):
        _load(saved)


@pytest.mark.parametrize("file, edit, message", [
    ("reference.safetensors", lambda t: {**t, "labels.cell_type": t["labels.cell_type"] + 5}, "codes outside"),
    ("reference.safetensors", lambda t: {**t, "domains": t["domains"][:-1]}, "domains"),
    ("reference.safetensors", lambda t: {**t, "embedding": t["embedding"][:, :4].copy()}, "embedding"),
    ("reference.safetensors", lambda t: {**t, "embedding": t["embedding"].astype(np.float64)}, "embedding"),
    ("reference.safetensors", lambda t: {**t, "extra.old_entry": np.zeros(3, np.float32)}, "unknown roles"),
    ("weights.safetensors", lambda t: {k: (v[:-1].copy() if i == 0 else v) for i, (k, v) in enumerate(t.items())},
     "shapes or types"),
    ("weights.safetensors", lambda t: {k: (v * np.nan if i == 0 else v) for i, (k, v) in enumerate(t.items())},
     "NaN"),
])
def test_edited_arrays_are_refused(saved, file, edit, message):
    tensors = load_file(str(saved / file))
    save_file(edit(tensors), str(saved / file))
    with pytest.raises(ScConcertoError, match="checksum"):
        _load(saved)
    _sign_file(saved, file)
    with pytest.raises(ScConcertoError, match=message):
        _load(saved)


@pytest.mark.parametrize("kind", ["dev_zero", "fifo", "folder"])
def test_listed_files_must_be_regular_files(saved, kind):
    target = saved / "weights.safetensors"
    target.unlink()
    if kind == "dev_zero":
        target.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    with pytest.raises(ScConcertoError, match="not a regular file"):
        _load(saved)


# ------------------------------------------------------------------ the fuzzer
def _leaves(value, path=()):
    """Paths to every value in a JSON tree (containers included)."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))


def _set(tree, path, value):
    node = tree
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


_DELETE = object()
#: Config entries whose content the model checks in full; ``mapping`` and ``classifier`` (checked for their
#: entries and types, not for every value of a fitted decision) and ``history`` are covered by the checksum.
CHECKED = ("format", "format_version", "seed", "setup", "network", "train", "training", "files", "checksums")


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _invalid_replacement(value, rng):
    """A value of another JSON kind than ``value``, or out of range for it (never a valid alternative)."""
    if isinstance(value, bool):
        return _pick(rng, ["yes", [value], 2])
    if isinstance(value, int):
        return _pick(rng, [str(value), [value], -1 - value, float("nan"), None if value else {}])
    if isinstance(value, float):
        return _pick(rng, [str(value), [value], float("nan"), float("inf")])
    if isinstance(value, str):
        return _pick(rng, [[value], {value: 1}, 7])
    if isinstance(value, list):
        if value and rng.random() < 0.5:
            return value + value[:1]  # a repeated entry
        return _pick(rng, ["list", {"0": value}, 3])
    if isinstance(value, dict):
        return _pick(rng, [list(value), "dict", 3])
    return _pick(rng, ["x", 1])


def _mutate_config(path: Path, rng, sign: bool) -> str:
    cfg = _config(path)
    sections = CHECKED if sign else tuple(cfg)
    section = _pick(rng, [k for k in sections if k in cfg])  # a section, then a value in it: small ones get hit
    candidates = [(p, v) for p, v in _leaves(cfg[section], (section,))]
    p, v = candidates[rng.integers(len(candidates))]
    actions = ["replace"] + (["add"] if isinstance(v, dict) else []) + \
        (["delete"] if isinstance(_parent(cfg, p), dict) else [])
    action = _pick(rng, actions)
    if action == "add":
        v = dict(v)
        v["unexpected_entry"] = 1
        _set(cfg, p, v)
    elif action == "delete":
        if p[0] == "train" or (p[0] == "network" and p[-1] == "dropout"):  # optional settings (defaults apply)
            return "skip"
        _set(cfg, p, _DELETE)
    else:
        if not sign and isinstance(v, (dict, list)) and not v:
            return "skip"
        _set(cfg, p, _invalid_replacement(v, rng))
    _write_config(path, cfg, sign)
    return f"config {'signed' if sign else 'unsigned'} {action} {'.'.join(map(str, p))}"


def _parent(tree, path):
    node = tree
    for key in path[:-1]:
        node = node[key]
    return node


def _mutate_array(path: Path, rng, sign: bool) -> str:
    cfg = _config(path)
    name = rng.choice(sorted(cfg["files"].values()))
    tensors = load_file(str(path / name))
    keys = sorted(k for k in tensors if not k.startswith("extra.") or k == "extra.calibration_rows")
    key = keys[rng.integers(len(keys))]
    a = tensors[key]
    action = rng.choice(["shrink", "dtype", "rank", "drop", "add", "nan", "codes"])
    if action == "shrink" and a.ndim and a.shape[0] > 1:
        tensors[key] = np.ascontiguousarray(a[:-1])
    elif action == "dtype":
        tensors[key] = a.astype(np.float64 if a.dtype == np.float32 else np.int32)
    elif action == "rank":
        tensors[key] = a[None].copy()
    elif action == "drop":
        del tensors[key]
    elif action == "add":
        tensors["unexpected.tensor"] = np.zeros(3, dtype=np.float32)
    elif action == "nan" and a.dtype.kind == "f" and a.size:
        a = a.copy()
        a.flat[rng.integers(a.size)] = np.nan
        tensors[key] = a
    elif action == "codes" and a.dtype.kind == "i" and a.size:
        a = a.copy()
        a.flat[rng.integers(a.size)] = _pick(rng, [-2, int(a.max()) + 1, 10**9])
        tensors[key] = a
    else:
        return "skip"
    save_file(tensors, str(path / name))
    if sign:
        _sign_file(path, name)
    return f"array {'signed' if sign else 'unsigned'} {action} {name}:{key}"


def _mutate_bytes(path: Path, rng) -> str:
    cfg = _config(path)
    name = rng.choice(["config.json", *sorted(cfg["files"].values())])
    f = path / name
    data = bytearray(f.read_bytes())
    action = rng.choice(["flip", "truncate", "append"])
    if action == "flip":
        i = int(rng.integers(len(data)))
        data[i] ^= 1 << int(rng.integers(8))
    elif action == "truncate":
        del data[int(rng.integers(len(data))):]
    else:
        data += bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8))
    f.write_bytes(bytes(data))
    return f"bytes {action} {name}"


def _mutate_file_kind(path: Path, rng) -> str:
    cfg = _config(path)
    name = rng.choice(sorted(cfg["files"].values()))
    f = path / name
    action = rng.choice(["dev_zero", "fifo", "folder", "missing", "link_to_copy"])
    if action == "link_to_copy":  # a symbolic link to an intact copy: loads as the original
        copy_path = path.parent / f"{path.name}-{name}"
        shutil.copyfile(f, copy_path)
        f.unlink()
        f.symlink_to(copy_path)
        return f"file {action} {name}"
    f.unlink()
    if action == "dev_zero":
        f.symlink_to("/dev/zero")
    elif action == "fifo":
        os.mkfifo(f)
    elif action == "folder":
        f.mkdir()
    return f"file {action} {name}"


def test_model_file_fuzzer_gives_a_clear_error_or_the_same_predictions(small, tmp_path):
    model, query = small
    base = model.save(tmp_path / "base")
    expected = fingerprint(Concerto.load(base), query)
    rng = np.random.default_rng(2024)
    outcomes = {"refused": 0, "same": 0}
    seen = []
    start = time.perf_counter()
    case = 0
    while case < FUZZ_CASES:
        path = tmp_path / f"case{case}"
        shutil.copytree(base, path)
        kind = rng.choice(["bytes", "config", "config_signed", "array", "array_signed", "file"],
                          p=[0.15, 0.15, 0.25, 0.1, 0.25, 0.1])
        if kind == "bytes":
            what = _mutate_bytes(path, rng)
        elif kind.startswith("config"):
            what = _mutate_config(path, rng, sign=kind.endswith("signed"))
        elif kind.startswith("array"):
            what = _mutate_array(path, rng, sign=kind.endswith("signed"))
        else:
            what = _mutate_file_kind(path, rng)
        if what == "skip":
            shutil.rmtree(path)
            continue
        case += 1
        try:
            loaded = _load(path)
        except ScConcertoError as exc:
            message = str(exc)
            assert "\n" not in message and len(message) < 1500, (what, message)
            outcomes["refused"] += 1
            seen.append((what, "refused"))
            continue
        except TimeoutError:
            pytest.fail(f"{what}: loading hung")
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{what}: {type(exc).__name__} instead of a clear error: {exc}")
        with time_box(SECONDS_PER_LOAD):
            got = fingerprint(loaded, query)
        assert got == expected, f"{what}: loaded, but predicts differently"
        outcomes["same"] += 1
        seen.append((what, "same"))
    print(outcomes, f"{time.perf_counter() - start:.1f} s", *seen, sep="\n")
    assert outcomes["refused"] >= FUZZ_CASES // 2  # the fuzzer does reach the checks
