"""``load_weights(module, path, assign=True)``: parameters materialised from the file.

* bit-exact against a normal load, for Dense, Conv, BatchNorm (with its torch-only extra) and
  LSTM layouts, in both file layouts;
* a module built on the ``meta`` device ends with no meta tensors, Parameters stay Parameters;
* peak memory of the whole load of a ~100 MB meta module stays within the model's size + 5%
  (resident memory sampled in a fresh process: torch's allocations are invisible to tracemalloc);
* a shape mismatch, or a meta tensor the file gives no value, raises before anything changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import bits_equal
from torch import nn

import torchkeras_io as tkio
from torchkeras_io.errors import TorchKerasIOError, WeightMismatchError


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.Flatten(),
        nn.Linear(300, 90),
        nn.LSTM(90, 16, batch_first=True),
    )


def _state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(bits_equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(params=["w.h5", "w.weights.h5"])
def saved(tmp_path, request):
    torch.manual_seed(0)
    src = _model()
    src[1].running_mean.uniform_()
    src[1].num_batches_tracked.fill_(7)
    path = tmp_path / request.param
    tkio.save_weights(src, path)
    return src, path


def test_assign_into_a_meta_module_is_bit_exact_and_leaves_no_meta_tensor(saved):
    src, path = saved
    normal = _model()
    tkio.load_weights(normal, path)
    with torch.device("meta"):
        meta = _model()
    tkio.load_weights(meta, path, assign=True)
    assert [n for n, t in meta.state_dict().items() if t.device.type == "meta"] == []
    assert _state_equal(meta, normal) and _state_equal(meta, src)
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in meta.parameters())
    assert not isinstance(meta[1].running_mean, nn.Parameter)


def test_assign_replaces_the_tensors_of_a_real_module(saved):
    """As ``load_state_dict(assign=True)``: new tensors, not copies into the old ones."""
    src, path = saved
    torch.manual_seed(1)
    dst = _model()
    dst[3].weight.requires_grad_(False)
    old = dst[3].weight
    tkio.load_weights(dst, path, assign=True)
    assert dst[3].weight is not old and not dst[3].weight.requires_grad
    assert _state_equal(dst, src)


def test_assign_with_a_device_materialises_there(saved):
    src, path = saved
    with torch.device("meta"):
        meta = _model()
    tkio.load_weights(meta, path, assign=True, device="cpu")
    assert {t.device.type for t in meta.state_dict().values()} == {"cpu"}
    assert _state_equal(meta, src)


def test_a_shape_mismatch_leaves_the_module_untouched(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "w.h5"
    tkio.save_weights(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), path)
    torch.manual_seed(1)
    dst = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 5))
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    params = [id(p) for p in dst.parameters()]
    with pytest.raises(WeightMismatchError):
        tkio.load_weights(dst, path, assign=True)
    assert [id(p) for p in dst.parameters()] == params
    assert all(bits_equal(before[k], v) for k, v in dst.state_dict().items())
    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 5))
    with pytest.raises(WeightMismatchError):
        tkio.load_weights(meta, path, assign=True)
    assert all(t.device.type == "meta" for t in meta.state_dict().values())


def test_meta_tensors_the_file_does_not_fill_are_refused_before_anything_changes(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "w.h5"
    tkio.save_weights(nn.Sequential(nn.Linear(4, 3)), path)
    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with pytest.raises(TorchKerasIOError, match="meta"):
        tkio.load_weights(meta, path, assign=True, by_name=True)
    assert all(t.device.type == "meta" for t in meta.state_dict().values())


def test_a_meta_module_without_assign_is_an_error(saved):
    _, path = saved
    with torch.device("meta"):
        meta = _model()
    with pytest.raises(TorchKerasIOError, match="assign=True"):
        tkio.load_weights(meta, path)


_CHILD = r"""
import json, os, resource, sys, threading, time
import torch
from torch import nn
import torchkeras_io as tkio

page = os.sysconf("SC_PAGE_SIZE")
fd = os.open("/proc/self/statm", os.O_RDONLY)
rss = lambda: int(os.pread(fd, 200, 0).split()[1]) * page
with torch.device("meta"):
    model = nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(6)], nn.Conv2d(256, 256, 3), nn.BatchNorm2d(256))
size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
peak, stop = [0], threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.0005)
base, maxrss = rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = threading.Thread(target=sample, daemon=True)
t.start()
tkio.load_weights(model, sys.argv[1], assign=True)
stop.set()
t.join()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
top = max(peak[0], rss(), after if after > maxrss else 0)
print(json.dumps({"size": size, "extra": top - base}))
"""


def test_peak_memory_of_an_assign_load_is_the_model_plus_five_percent(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(6)], nn.Conv2d(256, 256, 3), nn.BatchNorm2d(256))
    path = tmp_path / "w.h5"
    tkio.save_weights(model, path)
    del model
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["size"] > 95 * 2**20
    assert res["extra"] <= 1.05 * res["size"], (res["extra"] / 2**20, res["size"] / 2**20)


@pytest.mark.parametrize("name", ["m.h5", "m.keras"])
def test_load_model_with_a_device_builds_on_meta_and_materialises(tmp_path, monkeypatch, name):
    """``load_model(device=...)`` builds the model on the meta device and makes its tensors
    from the file: the same model as the usual load, nothing left on meta."""
    torch.manual_seed(0)
    src = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    src.eval()
    path = tmp_path / name
    tkio.save_model(src, path, input_shape=(3, 8, 8))
    plain = tkio.load_model(path)
    built_on = []  # where each Linear of the rebuilt model is initialised
    real = nn.Linear.reset_parameters

    def spy(self):
        built_on.append(self.weight.device.type)
        return real(self)

    monkeypatch.setattr(nn.Linear, "reset_parameters", spy)
    on = tkio.load_model(path, device="cpu")
    assert built_on == ["meta"]
    assert [n for n, t in on.state_dict().items() if t.device.type == "meta"] == []
    assert _state_equal(on, plain)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(on(x), plain(x))
