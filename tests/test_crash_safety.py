"""Crash safety of saves: SIGKILL at random moments, a full disk, and two writers at once.

The work runs in a worker process (this file run as a script): it builds the models once, then
forks one child per save and kills it (SIGKILL) once its temporary file holds a random fraction of
the final size, or at a random moment of the fsync / rename / exit after that; then it checks the
checkpoint path: it must load, completely, as the old or the new checkpoint, and no temporary file
may remain after the next save that completes. The worker prints one JSON line of counts (trials,
kills, outcomes), which the tests check and print (``pytest -s``).

``TKIO_CRASH_TRIALS=<factor>`` multiplies the number of kill trials for a longer run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the harness forks writers (Linux)")

FACTOR = float(os.environ.get("TKIO_CRASH_TRIALS", "1"))
BIG_MB, BIG_TRIALS = 256, max(1, round(12 * FACTOR))
SMALL_MB, SMALL_TRIALS = 4, max(1, round(90 * FACTOR))
CKPT = "ckpt.h5"


# ------------------------------------------------------------------------------ worker side
def _model(mb: float, seed: int):
    """Four square Linear layers holding about ``mb`` MB of float32, filled deterministically."""
    import torch
    from torch import nn

    d = max(8, int((mb * 2**20 / 4 / 4) ** 0.5))
    model = nn.Sequential(*[nn.Linear(d, d) for _ in range(4)])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5)  # never 0: +x and -x always differ
    return model


def _temps(directory: str) -> list:
    return sorted(n for n in os.listdir(directory) if n != CKPT and not n.endswith(".lock"))


def _version(model, target, path: str) -> int:
    """+1 or -1: which of the two checkpoints (``model`` or its negation) the file holds, completely."""
    import torch

    import torchkeras_io as tkio

    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    tkio.load_weights(target, path)
    signs = set()
    for a, b in zip(model.parameters(), target.parameters()):
        if torch.equal(a, b):
            signs.add(1)
        elif torch.equal(a, -b):
            signs.add(-1)
        else:
            signs.add(0)
    if len(signs) != 1 or 0 in signs:
        raise AssertionError(f"{path} holds neither checkpoint completely (per-tensor: {signs})")
    return signs.pop()


def _fork_save(model, path: str, sign: int) -> int:
    pid = os.fork()
    if pid == 0:
        _child_save(model, path, sign, True)
    return pid


def _wait(pid: int) -> tuple:
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return "killed", os.WTERMSIG(status)
    return "exited", os.WEXITSTATUS(status)


def _kill_during(pid: int, directory: str, size: int, fraction: float, tail: float) -> tuple:
    """SIGKILL writer ``pid`` once its temporary file holds ``fraction`` of ``size`` bytes (for
    fractions past 1: ``(fraction - 1) * tail`` seconds after the data is written, in the fsync,
    rename and exit); (state, code) of the writer. Following the file rather than the clock puts
    the kills all over the write however loaded the machine is."""
    tag = f"-{pid}-"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:  # finished before the kill point
            return ("killed", os.WTERMSIG(status)) if os.WIFSIGNALED(status) else ("exited", os.WEXITSTATUS(status))
        written = 0
        for name in os.listdir(directory):
            if tag in name:
                with contextlib.suppress(OSError):
                    written = os.stat(os.path.join(directory, name)).st_size
        if written >= min(fraction, 1.0) * size:
            break
        time.sleep(0.0005)
    if fraction > 1.0:
        time.sleep((fraction - 1.0) * tail)
    os.kill(pid, signal.SIGKILL)  # a zombie (exited, not yet reaped) ignores it
    return _wait(pid)


def _wait_written(pid: int, directory: str, size: int) -> float:
    """When writer ``pid``'s temporary file reached ``size`` bytes (or the writer exited)."""
    tag = f"-{pid}-"
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        for name in os.listdir(directory):
            if tag in name:
                with contextlib.suppress(OSError):
                    if os.stat(os.path.join(directory, name)).st_size >= size:
                        return time.monotonic()
        time.sleep(0.0005)
    return time.monotonic()


def kill_trials(directory: str, mb: float, trials: int, seed: int) -> dict:
    """Save over a good checkpoint ``trials`` times, each writer SIGKILLed at a random moment."""
    import torchkeras_io as tkio

    rng = random.Random(seed)
    model, target = _model(mb, seed), _model(mb, seed + 1)
    path = os.path.join(directory, CKPT)
    tkio.save_weights(model, path)
    size = os.path.getsize(path)
    # an undisturbed save, timed from "all data written" to exit: the span of the last kills
    pid = _fork_save(model, path, -1)
    t_full = _wait_written(pid, directory, size)
    state, code = _wait(pid)
    tail = time.monotonic() - t_full
    assert (state, code) == ("exited", 0), (state, code)
    current = _version(model, target, path)
    assert current == -1
    out = dict(mb=round(sum(p.numel() for p in model.parameters()) * 4 / 2**20, 1), file_bytes=size)
    out["tail_s"] = round(tail, 3)
    out.update(trials=0, killed=0, completed=0, old=0, new=0, kills_leaving_temps=0, temps_after_success=0)
    for _ in range(trials):
        new = -current
        pid = _fork_save(model, path, new)
        # 4 in 5 kills while the data is written, 1 in 5 in the fsync / rename / exit that follow
        state, code = _kill_during(pid, directory, size, rng.uniform(0.0, 1.25), 4 * tail)
        out["trials"] += 1
        if state == "killed":
            out["killed"] += 1
        else:
            assert code == 0, f"writer failed with exit status {code}"
            out["completed"] += 1
        found = _version(model, target, path)
        if state == "exited":
            assert found == new, "a save that completed left the old checkpoint"
            out["temps_after_success"] += len(_temps(directory))
        out["new" if found == new else "old"] += 1
        if state == "killed" and _temps(directory):
            out["kills_leaving_temps"] += 1
        current = found
    # the next save that completes removes what killed writers left behind
    state, code = _wait(_fork_save(model, path, -current))
    assert (state, code) == ("exited", 0)
    out["temps_after_final_save"] = len(_temps(directory))
    assert _version(model, target, path) == -current
    return out


def concurrent_saves(directory: str, rounds: int, seed: int) -> dict:
    """Two writers released together onto one path: one complete checkpoint of the two remains;
    with overwrite=False exactly one of them succeeds."""
    import torchkeras_io as tkio  # noqa: F401 - imported before forking

    model, target = _model(16, seed), _model(16, seed + 1)
    path = os.path.join(directory, CKPT)
    out = dict(rounds=0, results={"1": 0, "-1": 0}, exclusive_rounds=0)
    for _ in range(rounds):
        for overwrite in (True, False):
            if not overwrite and os.path.exists(path):
                os.unlink(path)
            gate_r, gate_w = os.pipe()
            pids = []
            for sign in (1, -1):
                pid = os.fork()
                if pid == 0:
                    os.close(gate_w)
                    os.read(gate_r, 1)  # both start at once
                    _child_save(model, path, sign, overwrite)
                pids.append(pid)
            os.close(gate_r)
            os.write(gate_w, b"xx")
            os.close(gate_w)
            codes = [_wait(pid) for pid in pids]
            if overwrite:
                assert codes == [("exited", 0)] * 2, codes
                out["rounds"] += 1
                out["results"][str(_version(model, target, path))] += 1
            else:
                assert sorted(codes) == [("exited", 0), ("exited", 5)], codes
                winner = 1 if codes[0] == ("exited", 0) else -1
                assert _version(model, target, path) == winner
                out["exclusive_rounds"] += 1
            assert not _temps(directory), _temps(directory)
    return out


def _child_save(model, path: str, sign: int, overwrite: bool) -> None:
    """The forked writer: its own copy of the model (negated for the other checkpoint), saved;
    the outcome is its exit status (0 saved, 5 CheckpointExistsError, 3 anything else)."""
    import torch

    import torchkeras_io as tkio

    code = 0
    try:
        if sign < 0:
            with torch.no_grad():
                for p in model.parameters():
                    p.neg_()
        tkio.save_weights(model, path, overwrite=overwrite)
    except tkio.CheckpointExistsError:
        code = 5
    except BaseException as exc:  # noqa: BLE001
        print(f"writer: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        code = 3
    os._exit(code)


def disk_full(directory: str, seed: int) -> dict:
    """A file-size limit on the writer (write() fails with EFBIG): a clear error, the old file intact."""
    import resource

    import torchkeras_io as tkio

    model = _model(8, seed)
    path = os.path.join(directory, CKPT)
    tkio.save_weights(_model(8, seed + 1), path)
    with open(path, "rb") as fh:
        before = fh.read()
    out = {}
    for kind in ("save_weights", "save_model"):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, resource.RLIM_INFINITY))
            try:
                if kind == "save_weights":
                    tkio.save_weights(model, path)
                else:
                    tkio.save_model(model, path, input_shape=(model[0].in_features,))
                report = {"raised": None}
            except BaseException as exc:  # noqa: BLE001
                report = {"raised": type(exc).__name__, "errno": getattr(exc, "errno", None), "msg": str(exc),
                          "is_oserror": isinstance(exc, OSError), "tkio": isinstance(exc, tkio.TorchKerasIOError)}  # fmt: skip
            os.write(w, json.dumps(report).encode())
            os._exit(0)
        os.close(w)
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
        os.close(r)
        assert _wait(pid) == ("exited", 0)
        report = json.loads(data)
        with open(path, "rb") as fh:
            report["old_intact"] = fh.read() == before
        report["temps"] = _temps(directory)
        out[kind] = report
    return out


def _worker(argv: list) -> None:
    import torch

    torch.set_num_threads(1)  # the writers are forked: no thread pool may exist in the parent
    mode, directory, seed = argv[0], argv[1], int(argv[2])
    if mode == "kill":
        result = kill_trials(directory, float(argv[3]), int(argv[4]), seed)
    elif mode == "concurrent":
        result = concurrent_saves(directory, int(argv[3]), seed)
    else:
        result = disk_full(directory, seed)
    print(json.dumps(result), flush=True)


# ------------------------------------------------------------------------------ test side
def _run(tmp_path, *args, timeout: float = 300) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, __file__, args[0], str(tmp_path), *map(str, args[1:])],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{args[0]}: {json.dumps(result)}")  # the counts, visible with pytest -s
    return result


def _check_kills(result: dict, trials: int) -> None:
    assert result["trials"] == trials
    assert result["old"] + result["new"] == trials
    assert result["killed"] >= trials // 3, "most writers should die mid-save, or nothing was tested"
    assert result["temps_after_success"] == 0
    assert result["temps_after_final_save"] == 0


def test_sigkill_during_big_save(tmp_path):
    """A multi-hundred-MB save killed at random moments: the path always holds one whole checkpoint."""
    result = _run(tmp_path, "kill", 1, BIG_MB, BIG_TRIALS)
    assert result["mb"] >= 200
    _check_kills(result, BIG_TRIALS)


def test_sigkill_during_small_saves(tmp_path):
    result = _run(tmp_path, "kill", 2, SMALL_MB, SMALL_TRIALS)
    _check_kills(result, SMALL_TRIALS)
    assert result["kills_leaving_temps"] > 0, "kills never hit the write itself"


def test_concurrent_writers(tmp_path):
    result = _run(tmp_path, "concurrent", 3, 3)
    assert result["rounds"] == 3 and result["exclusive_rounds"] == 3


def test_disk_full_keeps_old_file(tmp_path):
    result = _run(tmp_path, "diskfull", 4)
    for kind, report in result.items():
        assert report["raised"] == "CheckpointWriteError", (kind, report)
        assert report["tkio"] and report["is_oserror"] and report["errno"] == errno.EFBIG, (kind, report)
        assert "File too large" in report["msg"] and CKPT in report["msg"], report["msg"]
        assert report["old_intact"], kind
        assert report["temps"] == [], (kind, report["temps"])


def test_stale_temp_of_live_writer_is_kept(tmp_path, monkeypatch):
    """Only dead writers' temporary files are removed: a live one (here: our parent) keeps its own."""
    import torch.nn as nn

    import torchkeras_io as tkio

    renamed = []  # the temporary file a save renames onto the target: its name carries the writer's pid
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append(os.path.basename(src)), real_replace(src, dst)))
    tkio.save_weights(nn.Linear(2, 2), tmp_path / CKPT)
    monkeypatch.undo()
    mine = f"-{os.getpid()}-"
    prefix = renamed[-1][: renamed[-1].index(mine) + len(mine)]
    live = tmp_path / (prefix.replace(f"-{os.getpid()}-", f"-{os.getppid()}-") + "abc.tmp")
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
    dead = tmp_path / (prefix.replace(f"-{os.getpid()}-", f"-{dead_pid}-") + "abc.tmp")
    other = tmp_path / ".other.h5.tkio-00000000-1-abc.tmp"
    for p in (live, dead, other):
        p.write_bytes(b"partial")
    tkio.save_weights(nn.Linear(2, 2), tmp_path / CKPT)
    assert live.exists() and other.exists() and not dead.exists()


if __name__ == "__main__":
    _worker(sys.argv[1:])
