"""Nothing lost: a failing run leaves earlier outputs intact and leaves no temporary files."""

import hashlib
from pathlib import Path

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


# ------------------------------------------------------------------ what --overwrite may replace
def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_overwrite_replaces_only_our_outputs_and_never_an_input(trained_model, sim, tmp_path, capsys):
    import anndata as ad

    model_dir = trained_model.save(tmp_path / "model")
    data = tmp_path / "cells.h5ad"
    sim[:40].copy().write_h5ad(data)
    before = _sha(data)
    results = tmp_path / "results"
    results.mkdir()
    (results / "notes.txt").write_text("mine")
    for argv, message in [
        (["train", str(data), "--out", str(results), "--overwrite"], "not a model folder"),
        (["train", str(data), "--out", str(data), "--overwrite"], "input of this command"),
        (["embed", str(model_dir), str(data), "--out", str(data), "--overwrite"], "input of this command"),
        (["embed", str(model_dir), str(data), "--out", str(model_dir), "--overwrite"], "input of this command"),
    ]:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err
    assert _sha(data) == before and (results / "notes.txt").read_text() == "mine"
    foreign = tmp_path / "theirs.h5ad"  # an .h5ad that scConcerto did not write
    ad.AnnData(np.ones((3, 2), dtype=np.float32)).write_h5ad(foreign)
    theirs = _sha(foreign)
    assert main(["embed", str(model_dir), str(data), "--out", str(foreign), "--overwrite"]) == 2
    assert "did not write" in capsys.readouterr().err and _sha(foreign) == theirs
    ours = tmp_path / "emb.h5ad"
    assert main(["embed", str(model_dir), str(data), "--out", str(ours)]) == 0
    assert main(["embed", str(model_dir), str(data), "--out", str(ours), "--overwrite"]) == 0  # ours: replaced
    (model_dir / "my_notes.txt").write_text("mine")  # a model folder holding a file we did not write
    import pytest

    from scconcerto import InputError

    with pytest.raises(InputError, match="my_notes.txt"):
        trained_model.save(model_dir, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad", "emb.h5ad", "model", "results", "theirs.h5ad"]


def test_two_writers_racing_for_one_name_one_fails_and_the_first_output_stays(tmp_path):
    import threading

    import pytest

    from scconcerto import OutputExistsError
    from scconcerto._io import write_atomic_dir, write_atomic_file

    out = tmp_path / "q.h5ad"
    barrier = threading.Barrier(2)
    results = {}

    def writer(name):
        def write(tmp):
            tmp.write_text(name)
            barrier.wait(timeout=30)  # both have passed the check for an existing output
        try:
            write_atomic_file(out, write)
            results[name] = "wrote"
        except OutputExistsError:
            results[name] = "refused"

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == ["refused", "wrote"]
    winner = next(n for n, r in results.items() if r == "wrote")
    assert out.read_text() == winner
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.h5ad"]

    folder = tmp_path / "model"

    def other_run_finishes_first(tmp):
        (tmp / "config.json").write_text("{}")
        folder.mkdir()
        (folder / "config.json").write_text("first")

    with pytest.raises(OutputExistsError, match="appeared"):
        write_atomic_dir(folder, other_run_finishes_first)
    assert (folder / "config.json").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "q.h5ad"]


def test_a_failed_swap_keeps_the_previous_model(trained_model, tmp_path, monkeypatch):
    import os

    import pytest

    path = trained_model.save(tmp_path / "m")
    before = _tree_hash(path)
    real_rename, real_replace = os.rename, os.replace

    def failing(real):
        def move(src, dst):
            new = Path(src).name.startswith(".m.") and ".old-" not in Path(src).name
            if new and Path(dst).name == "m":  # the new folder cannot be put in place (putting back the old can)
                raise OSError(5, "Input/output error")
            return real(src, dst)
        return move

    monkeypatch.setattr(os, "rename", failing(real_rename))
    monkeypatch.setattr(os, "replace", failing(real_replace))
    with pytest.raises(OSError):
        trained_model.save(path, overwrite=True)
    monkeypatch.undo()
    assert _tree_hash(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_save_killed_between_the_renames_is_recovered_on_the_next_load_and_write(trained_model, tmp_path):
    import os
    import subprocess
    import sys

    from scconcerto import Concerto

    path = trained_model.save(tmp_path / "m")
    before = _tree_hash(path)
    script = (
        "import os, signal, sys\n"
        "from scconcerto import Concerto\n"
        "model = Concerto.load(sys.argv[1])\n"
        "real = os.rename\n"
        "def rename(src, dst):\n"
        "    real(src, dst)\n"
        "    if '.old-' in str(dst):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)  # the old folder is aside, the new one not yet in place\n"
        "os.rename = rename\n"
        "model.save(sys.argv[1], overwrite=True)\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "m" not in left and any(".old-" in n for n in left) and any(".tmp-" in n for n in left)
    loaded = Concerto.load(path)  # puts the previous folder back, removes the dead writer's temporary folder
    assert loaded.is_trained and _tree_hash(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert os.path.isdir(path)


def test_temporaries_of_killed_writers_are_removed_and_those_of_running_ones_kept(trained_model, tmp_path):
    import os
    import subprocess
    import sys

    from scconcerto._io import _HOST, write_atomic_file

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "table.csv"
    stale = tmp_path / f".table.csv.tmp-{dead.pid}-0badc0de~{_HOST}"
    running = tmp_path / f".table.csv.tmp-{os.getppid()}-0badc0de~{_HOST}"
    elsewhere = tmp_path / f".table.csv.tmp-{dead.pid}-0badc0de~00000000"  # another machine's writer
    for p in (stale, running, elsewhere):
        p.write_text("half")
    stale_dir = tmp_path / f".m.tmp-{dead.pid}-0badc0de~{_HOST}"
    stale_dir.mkdir()
    (stale_dir / "weights.safetensors").write_bytes(b"half")
    write_atomic_file(out, lambda p: p.write_text("a,b\n"))
    trained_model.save(tmp_path / "m")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["table.csv", "m", running.name, elsewhere.name])


def test_written_files_get_the_permissions_of_new_files(trained_model, tmp_path):
    import os
    import stat

    for mask in (0o022, 0o077):
        old = os.umask(mask)
        try:
            path = trained_model.save(tmp_path / f"m{mask:o}")
        finally:
            os.umask(old)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()}
        assert set(modes.values()) == {0o666 & ~mask}, modes
        assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~mask


# ------------------------------------------------------------------ a full disk
FULL_DISK = '''
import builtins
import errno


def full_disk_after(limit):
    """A stand-in for ``open`` whose files raise ENOSPC once ``limit`` bytes were written."""
    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > limit:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

    return lambda *args, **kwargs: Full(builtins.open(*args, **kwargs))
'''


def _full_disk_after(limit):
    namespace = {}
    exec(FULL_DISK, namespace)
    return namespace["full_disk_after"](limit)


def test_a_full_disk_is_one_paragraph_exit_2_and_leaves_nothing(trained_model, sim, tmp_path, capsys, monkeypatch):
    import errno

    import pytest

    import scconcerto._io as io_module
    from scconcerto import OutputWriteError
    from scconcerto._io import write_atomic_dir

    model_dir = trained_model.save(tmp_path / "model")
    data = tmp_path / "cells.h5ad"
    sim[:40].copy().write_h5ad(data)
    out = tmp_path / "mapped.h5ad"
    assert main(["embed", str(model_dir), str(data), "--out", str(out)]) == 0
    before = _sha(out)
    monkeypatch.setattr(io_module, "open", _full_disk_after(20_000), raising=False)
    assert main(["embed", str(model_dir), str(data), "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "disk is full" in err and "Traceback" not in err and err.count("\n") == 1
    monkeypatch.undo()
    assert _sha(out) == before  # the earlier output is intact

    def no_space(tmp):
        (tmp / "weights.safetensors").write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputWriteError, match="disk is full"):
        write_atomic_dir(model_dir, no_space, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad", "mapped.h5ad", "model"]
    from scconcerto import Concerto

    assert Concerto.load(model_dir).is_trained


def test_a_full_disk_while_writing_hdf5_does_not_crash_the_process(trained_model, sim, tmp_path):
    """HDF5 used to leave objects it could not flush half-closed; the process then crashed on exit (SIGSEGV)."""
    import subprocess
    import sys

    model_dir = trained_model.save(tmp_path / "model")
    data = tmp_path / "cells.h5ad"
    sim[:200].copy().write_h5ad(data)
    script = FULL_DISK + (
        "import sys\n"
        "import scconcerto._io as io_module\n"
        "io_module.open = full_disk_after(150_000)\n"
        "from scconcerto.cli import main\n"
        "sys.exit(main(['embed', sys.argv[1], sys.argv[2], '--out', sys.argv[3]]))\n")
    done = subprocess.run([sys.executable, "-c", script, str(model_dir), str(data), str(tmp_path / "out.h5ad")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "disk is full" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad", "model"]
