"""Keras checkpoints from 2-process jobs (gloo, CPU): DDP and FSDP2 save once on rank 0, load on every rank.

Each job spawns 2 workers that train a step on different data, save with
``save_weights_distributed`` (and ``save_model_distributed``), load into freshly built wrapped
modules on both ranks, and hand their states back through files; the test checks them bit for
bit against rank 0's gathered state and opens the files in tf-keras.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import assert_close_rel, bits_equal, keras_module
from torch import nn

import torchkeras_io as tkio

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():  # pragma: no cover
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

WORLD = 2
JOB_TIMEOUT_S = 240  # a hang fails the test instead of blocking CI


def _net(seed: int, head: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, head))


def _wrap(net: nn.Module, kind: str) -> nn.Module:
    if kind == "ddp":
        return nn.parallel.DistributedDataParallel(net)
    from torch.distributed.fsdp import fully_shard

    fully_shard(net[0])
    fully_shard(net[3])
    fully_shard(net)
    return net


def _full_state_everywhere(module: nn.Module) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # no cpu_offload: every rank receives the full tensors, so each rank's own copy is checked
    state = get_model_state_dict(tkio.distributed.unwrap(module), options=StateDictOptions(full_state_dict=True))
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _worker(rank: int, port: int, kind: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        model = _wrap(_net(0), kind)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        torch.manual_seed(100 + rank)  # different data on each rank: DDP / FSDP must reconcile the grads
        model(torch.randn(6, 4)).square().mean().backward()
        opt.step()
        weights, full = os.path.join(out, "w.h5"), os.path.join(out, "m.h5")
        tkio.distributed.save_weights_distributed(model, weights)
        # DDP replicas hold the same optimizer state: it is written; FSDP2's is sharded: refused
        keep = {"optimizer": opt, "loss": "mse"} if kind == "ddp" else {}
        tkio.distributed.save_model_distributed(model, full, input_shape=(4,), **keep)
        if kind == "fsdp2":
            try:
                tkio.distributed.save_model_distributed(model, full, input_shape=(4,), optimizer=opt)
                raise AssertionError("a sharded optimizer was accepted")
            except tkio.TorchKerasIOError:
                pass
        # the file is complete on every rank once the call returns
        assert os.path.getsize(weights) > 0 and os.path.getsize(full) > 0
        trained = _full_state_everywhere(model)

        fresh = _wrap(_net(1), kind)
        report = tkio.distributed.load_weights_distributed(fresh, weights)
        loaded = _full_state_everywhere(fresh)
        # a wrong head: by name, skipping the mismatch; the report is rank 0's on every rank
        other = _wrap(_net(2, head=5), kind)
        partial = tkio.distributed.load_weights_distributed(other, weights, by_name=True, skip_mismatch=True)
        # an error on rank 0 (an existing file, overwrite=False) raises on every rank, no deadlock
        try:
            tkio.distributed.save_weights_distributed(model, weights, overwrite=False)
            error = None
        except Exception as exc:  # noqa: BLE001 - the type is what is checked
            error = [type(exc).__name__, isinstance(exc, (tkio.TorchKerasIOError, FileExistsError))]
        params = opt.param_groups[0]["params"] if kind == "ddp" else []  # FSDP2's are shards
        exp_avg = [opt.state[p]["exp_avg"].detach().clone() for p in params]
        torch.save({"trained": trained, "loaded": loaded, "exp_avg": exp_avg}, os.path.join(out, f"state{rank}.pt"))
        with open(os.path.join(out, f"report{rank}.json"), "w") as f:
            json.dump({"loaded": report.loaded, "all": report.all_loaded, "partial": str(partial),
                       "partial_loaded": partial.loaded, "mismatched": len(partial.mismatched), "error": error}, f)  # fmt: skip
        dist.barrier()  # gloo aborts a rank whose peer tears the group down first
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_job(kind: str, out) -> None:
    ctx = mp.start_processes(
        _worker, args=(_free_port(), kind, str(out)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + JOB_TIMEOUT_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the 2-process {kind} job did not finish in {JOB_TIMEOUT_S} s (hang)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_two_process_save_load(kind, tmp_path):
    _run_job(kind, tmp_path)
    states = [torch.load(tmp_path / f"state{r}.pt", weights_only=True) for r in range(WORLD)]
    reports = [json.loads((tmp_path / f"report{r}.json").read_text()) for r in range(WORLD)]
    trained = states[0]["trained"]
    assert set(trained) == set(_net(0).state_dict())  # Keras names of the unwrapped module, no "module."
    start = _net(0).state_dict()
    assert not torch.equal(trained["0.weight"], start["0.weight"])  # the step trained something
    for r in range(WORLD):
        assert set(states[r]["trained"]) == set(trained)
        for k, v in trained.items():
            if not k.startswith("1.running") and "num_batches" not in k:
                # parameters agree across ranks; DDP's BatchNorm statistics are each rank's own until the
                # next forward broadcasts rank 0's, which are the ones a checkpoint holds
                assert bits_equal(states[r]["trained"][k], v), (r, k)
            assert bits_equal(states[r]["loaded"][k], v), (r, k)  # loaded bit-exact on each rank
        assert reports[r] == reports[0]
    assert reports[0]["loaded"] == ["0", "1", "3"] and reports[0]["all"]
    assert reports[0]["partial_loaded"] == ["0", "1"] and reports[0]["mismatched"] == 2  # kernel and bias of "3"
    # rank 0's own error, rebuilt as the same class on rank 1
    assert reports[0]["error"] == reports[1]["error"] == ["CheckpointExistsError", True]

    # the single file rank 0 wrote is a plain Keras file: tf-keras reads it
    torch_net = _net(0)
    torch_net.load_state_dict(trained)
    torch_net.eval()
    x = np.random.default_rng(0).standard_normal((5, 4)).astype("float32")
    with torch.no_grad():
        expected = torch_net(torch.from_numpy(x)).numpy()
    keras = keras_module("tf_keras")
    km = keras.Sequential(
        [
            keras.layers.Dense(8, input_shape=(4,)),
            keras.layers.BatchNormalization(epsilon=1e-5),
            keras.layers.ReLU(),
            keras.layers.Dense(3),
        ]
    )
    km.load_weights(str(tmp_path / "w.h5"))
    assert_close_rel(km.predict(x, verbose=0), expected, 1e-5)
    full = keras.models.load_model(str(tmp_path / "m.h5"), compile=False)
    assert_close_rel(full.predict(x, verbose=0), expected, 1e-5)
    if kind == "ddp":  # rank 0's Adam state comes back bit for bit
        restored = tkio.load_model(tmp_path / "m.h5")
        moments = [restored.optimizer.state[p]["exp_avg"] for p in restored.optimizer.param_groups[0]["params"]]
        assert len(moments) == len(states[0]["exp_avg"])
        assert all(bits_equal(a, b) for a, b in zip(moments, states[0]["exp_avg"]))


def test_without_process_group_is_plain_save_load(tmp_path):
    net = _net(0)
    tkio.distributed.save_weights_distributed(nn.DataParallel(net), tmp_path / "w.h5")
    fresh = _net(1)
    report = tkio.distributed.load_weights_distributed(fresh, tmp_path / "w.h5")
    assert report.all_loaded
    for k, v in net.state_dict().items():
        assert bits_equal(fresh.state_dict()[k], v)


def test_fsdp1_is_refused():
    fsdp = pytest.importorskip("torch.distributed.fsdp")
    wrapper = fsdp.FullyShardedDataParallel.__new__(fsdp.FullyShardedDataParallel)
    with pytest.raises(tkio.TorchKerasIOError, match="fully_shard"):
        tkio.distributed.unwrap(wrapper)
