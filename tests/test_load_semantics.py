"""by_name / skip_mismatch / reshape / LoadReport / device / atomic writes, as API.md promises."""

from __future__ import annotations

import os
import warnings

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import torchkeras_io as tkio


def _backbone() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


class Classifier(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.backbone = _backbone()
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        return self.head(self.backbone(x))


def _train_a_bit(model: nn.Module) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3, 8, 8)).sum().backward()
        opt.step()


def test_transfer_learning_new_head(tmp_path):
    torch.manual_seed(0)
    pretrained = Classifier(10)
    _train_a_bit(pretrained)
    path = tmp_path / "pretrained.h5"
    tkio.save_weights(pretrained, path)

    model = Classifier(3)
    fresh_head = {k: v.clone() for k, v in model.head.state_dict().items()}
    with pytest.warns(tkio.TorchKerasIOWarning, match="head"):
        report = tkio.load_weights(model, path, by_name=True, skip_mismatch=True)
    assert report.loaded == ["backbone.0", "backbone.1"]
    assert report.missing == [] and report.unexpected == []
    assert [(m.layer, m.weight, m.file_shape, m.module_shape) for m in report.mismatched] == [
        ("head", "kernel", (8, 10), (8, 3)),
        ("head", "bias", (10,), (3,)),
    ]
    for k, v in model.head.state_dict().items():
        assert torch.equal(v, fresh_head[k])
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, pretrained.backbone.state_dict()[k])
    text = str(report)
    assert "mismatched" in text and "head" in text and "(8, 10)" in text and "backbone.1" in text


def test_mismatch_raises_without_skip_and_changes_nothing(tmp_path):
    pretrained = Classifier(10)
    path = tmp_path / "w.h5"
    tkio.save_weights(pretrained, path)
    model = Classifier(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(tkio.WeightMismatchError) as err:
        tkio.load_weights(model, path)
    assert err.value.layer == "head" and err.value.weight == "kernel" and err.value.filepath == str(path)
    assert "(8, 10)" in str(err.value) and "skip_mismatch" in str(err.value)
    for k, v in model.state_dict().items():  # the backbone, checked first, was not half-loaded
        assert torch.equal(v, before[k]), k


def test_topological_skip_mismatch(tmp_path):
    path = tmp_path / "w.h5"
    tkio.save_weights(Classifier(10), path)
    model = Classifier(3)
    with pytest.warns(tkio.TorchKerasIOWarning):
        report = tkio.load_weights(model, path, skip_mismatch=True)
    assert report.loaded == ["backbone.0", "backbone.1"] and report.mismatched[0].layer == "head"


def test_topological_ignores_names_and_counts_weighted_layers(tmp_path):
    src = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    path = tmp_path / "w.h5"
    tkio.save_weights(src, path, layer_names={"0": "dense_7", "2": "dense_9"})
    dst = nn.Sequential(nn.Linear(2, 3), nn.Dropout(), nn.Tanh(), nn.Linear(3, 1))
    report = tkio.load_weights(dst, path)
    assert report.loaded == ["0", "3"]
    assert torch.equal(dst[3].weight, src[2].weight)
    with pytest.raises(tkio.WeightMismatchError, match="layer count mismatch"):
        tkio.load_weights(nn.Sequential(nn.Linear(2, 3)), path)


def test_by_name_reports_missing_and_unexpected(tmp_path):
    src = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)})
    path = tmp_path / "w.h5"
    tkio.save_weights(src, path)
    dst = nn.ModuleDict({"a": nn.Linear(2, 2), "c": nn.Linear(2, 2)})
    c_before = dst["c"].weight.clone()
    report = tkio.load_weights(dst, path, by_name=True)
    assert report.loaded == ["a"] and report.missing == ["c"] and report.unexpected == ["b"]
    assert not report.all_loaded
    assert torch.equal(dst["c"].weight, c_before)


def test_weight_count_mismatch(tmp_path):
    path = tmp_path / "w.h5"
    tkio.save_weights(nn.Sequential(nn.Linear(2, 2)), path)
    with pytest.raises(tkio.WeightMismatchError, match="expects 1"):
        tkio.load_weights(nn.Sequential(nn.Linear(2, 2, bias=False)), path)
    with pytest.warns(tkio.TorchKerasIOWarning):
        report = tkio.load_weights(nn.Sequential(nn.Linear(2, 2, bias=False)), path, skip_mismatch=True)
    assert report.mismatched[0].weight == "<count>"


def test_reshape(tmp_path):
    src = nn.Sequential(nn.Conv2d(2, 4, (1, 3)))
    path = tmp_path / "w.h5"
    tkio.save_weights(src, path)
    dst = nn.Sequential(nn.Conv2d(2, 4, (3, 1)))
    with pytest.raises(tkio.WeightMismatchError, match="reshape=True"):
        tkio.load_weights(dst, path)
    tkio.load_weights(dst, path, reshape=True)
    kernel = src[0].weight.detach().permute(2, 3, 1, 0).reshape(3, 1, 2, 4)  # Keras semantics: np.reshape
    assert torch.equal(dst[0].weight.detach(), kernel.permute(3, 2, 0, 1))
    with pytest.raises(tkio.WeightMismatchError):
        tkio.load_weights(nn.Sequential(nn.Conv2d(2, 4, 2)), path, reshape=True)


def test_dtype_is_the_module_s(tmp_path):
    src = nn.Linear(3, 3).double()
    path = tmp_path / "w.h5"
    tkio.save_weights(src, path)
    dst = nn.Linear(3, 3).half()
    tkio.load_weights(dst, path)
    assert dst.weight.dtype == torch.float16
    assert torch.equal(dst.weight, src.weight.half())


def test_device_argument_moves_module(tmp_path):
    src = nn.Linear(3, 3)
    tkio.save_weights(src, tmp_path / "w.h5")
    dst = nn.Linear(3, 3)
    tkio.load_weights(dst, tmp_path / "w.h5", device=torch.device("cpu"))
    assert dst.weight.device.type == "cpu" and torch.equal(dst.weight, src.weight)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_round_trip(tmp_path):
    src = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LSTM(4, 4)).cuda()
    path = tmp_path / "w.h5"
    tkio.save_weights(src, path)
    cpu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LSTM(4, 4))
    tkio.load_weights(cpu, path)
    gpu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LSTM(4, 4))
    tkio.load_weights(gpu, path, device="cuda:0")
    for k, v in src.state_dict().items():
        assert torch.equal(cpu.state_dict()[k], v.cpu())
        assert gpu.state_dict()[k].device.type == "cuda" and torch.equal(gpu.state_dict()[k], v)


def test_full_model_file_weights_are_read(tmp_path):
    """A Keras `model.save` file keeps weights under /model_weights; load_weights finds them."""
    src = nn.Sequential(nn.Linear(2, 3))
    weights = tmp_path / "w.h5"
    tkio.save_weights(src, weights)
    full = tmp_path / "full.h5"
    with h5py.File(weights, "r") as a, h5py.File(full, "w") as b:
        b.attrs["model_config"] = b"{}"
        a.copy(a["/"], b, "model_weights")
        for k, v in a.attrs.items():
            b["model_weights"].attrs[k] = v
    dst = nn.Sequential(nn.Linear(2, 3))
    tkio.load_weights(dst, full)
    assert torch.equal(dst[0].weight, src[0].weight)


def test_overwrite_false(tmp_path):
    path = tmp_path / "w.h5"
    tkio.save_weights(nn.Linear(2, 2), path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        tkio.save_weights(nn.Linear(2, 2), path, overwrite=False)
    with pytest.raises(tkio.CheckpointExistsError):
        tkio.save_weights(nn.Linear(2, 2), path, overwrite=False)
    assert path.read_bytes() == before


def test_failed_save_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "w.h5"
    good = nn.Linear(2, 2)
    tkio.save_weights(good, path)
    before = path.read_bytes()

    # the second layer's tensors have no data (meta device): the write fails after the first layer
    failing = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).to("meta"))
    with pytest.raises((NotImplementedError, RuntimeError, tkio.TorchKerasIOError)):
        tkio.save_weights(failing, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["w.h5"]


def test_file_permissions_follow_umask(tmp_path):
    path = tmp_path / "w.h5"
    tkio.save_weights(nn.Linear(2, 2), path)
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_chunked_layer_names(tmp_path):
    """Past 64 KB the name list is split into layer_names0, layer_names1, … as Keras does."""
    long = "x" * 200
    model = nn.ModuleDict({f"m{i}": nn.Linear(1, 1, bias=False) for i in range(400)})
    path = tmp_path / "w.h5"
    tkio.save_weights(model, path, layer_names=lambda p: f"{long}_{p}")
    with h5py.File(path, "r") as f:
        assert "layer_names" not in f.attrs and "layer_names0" in f.attrs and "layer_names1" in f.attrs
    dst = nn.ModuleDict({f"m{i}": nn.Linear(1, 1, bias=False) for i in range(400)})
    report = tkio.load_weights(dst, path, by_name=True, layer_names=lambda p: f"{long}_{p}")
    assert len(report.loaded) == 400
    assert all(torch.equal(dst[k].weight, model[k].weight) for k in model)


def test_no_warning_on_clean_load(tmp_path):
    tkio.save_weights(nn.Linear(2, 2), tmp_path / "w.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tkio.load_weights(nn.Linear(2, 2), tmp_path / "w.h5")


def test_report_fields_are_plain_lists(tmp_path):
    tkio.save_weights(nn.Linear(2, 2), tmp_path / "w.h5")
    report = tkio.load_weights(nn.Linear(2, 2), tmp_path / "w.h5")
    assert report.loaded == ["linear"] and report.all_loaded
    assert np.array(report.loaded).shape == (1,)
