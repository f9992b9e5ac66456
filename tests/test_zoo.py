"""torchvision classifiers and the general export failure classes match in tf-keras (.h5) and Keras 3 (.keras)."""

from __future__ import annotations

import copy
import json
import math

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import BOTH, ORACLE_WARNINGS, assert_close_rel, keras_module, realistic_weights, record_zoo
from torch import nn

import torchkeras_io as tkio
from torchkeras_io._layers.registry import exporter_for

pytestmark = [*ORACLE_WARNINGS]
RTOL = 1e-4


# ----------------------------------------------------------------------------------- helpers
def export_both(module: nn.Module, input_shape, tmp_path, name: str = "m") -> dict:
    """{oracle: file} for the module exported as .h5 (tf-keras) and .keras (Keras 3)."""
    h5, k3 = tmp_path / f"{name}.h5", tmp_path / f"{name}.keras"
    tkio.save_model(module, h5, input_shape=input_shape)
    tkio.save_model(module, k3, input_shape=input_shape)
    return {"tf_keras": h5, "keras3": k3}


def keras_predict(path, oracle: str, xs):
    lib = keras_module(oracle)
    model = lib.models.load_model(path, compile=False) if oracle == "tf_keras" else lib.saving.load_model(
        path, compile=False)  # fmt: skip
    return np.asarray(model.predict(xs, verbose=0))


def matches(module: nn.Module, input_shape, oracle: str, tmp_path, seed: int = 1, x=None) -> float:
    """Export ``module`` for ``oracle`` and compare it with torch on a batch of 2; the relative error."""
    x = torch.randn((2, *input_shape), generator=torch.Generator().manual_seed(seed)) if x is None else x
    with torch.no_grad():
        ref = module.eval()(x).numpy()
    path = export_both(module, input_shape, tmp_path)[oracle]
    got = keras_predict(path, oracle, x.numpy())
    assert_close_rel(got, ref, RTOL)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


# ----------------------------------------------------------------------------- torchvision zoo
#: model -> (input size, factory kwargs); small inputs where the model allows
ZOO = {
    "resnet18": (64, {}),
    "shufflenet_v2_x0_5": (64, {}),
    "squeezenet1_1": (64, {}),
    "mobilenet_v3_small": (64, {}),
    "efficientnet_b0": (64, {}),
    "googlenet": (64, {"aux_logits": False, "init_weights": False}),
    "alexnet": (160, {}),  # features end 4x4: adaptive pooling to 6x6 takes windows of unequal length
    "mobilenet_v2": (64, {}),
    "mnasnet0_5": (64, {}),
    "regnet_y_400mf": (64, {}),
    "resnet50": (64, {}),
    "densenet121": (64, {}),
    "inception_v3": (75, {"aux_logits": False, "init_weights": False}),  # its smallest input
    "vgg11_bn": (64, {}),
}
#: the default run: one cheap model per op family (padded max pooling, channel shuffle and chunk,
#: fire concat, SE gating with hardsigmoid, stochastic depth and SiLU, ceil-mode pooling and
#: inception concat, general adaptive pooling)
FAST = ("resnet18", "shufflenet_v2_x0_5", "squeezenet1_1", "mobilenet_v3_small", "efficientnet_b0", "googlenet",
        "alexnet")  # fmt: skip
ZOO_PARAMS = [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in ZOO]


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory):
    """Each model built, given realistic weights and exported once for both oracles (lazily)."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            size, kwargs = ZOO[name]
            tvm = pytest.importorskip("torchvision").models  # only the zoo needs torchvision
            torch.manual_seed(0)
            model = getattr(tvm, name)(weights=None, **kwargs)
            gen = torch.Generator().manual_seed(1)
            calibration = torch.randn((32, 3, size, size), generator=gen)  # 8 leave efficientnet's logits ~20
            realistic_weights(model, calibration)
            x = torch.randn((2, 3, size, size), generator=gen)
            with torch.no_grad():
                ref32 = model(x).numpy()
                # the exact value: float32 rounding alone moves inception_v3's logits ~7e-5 (relative)
                # from it, so comparing two float32 computations would add two such errors
                ref = copy.deepcopy(model).double()(x.double()).numpy()
            assert_close_rel(ref32, ref, RTOL)  # torch's own float32 result meets the bar the exports must meet
            files = export_both(model, (3, size, size), tmp_path_factory.mktemp(name), name)
            cache[name] = (files, x.numpy(), ref)
        return cache[name]

    return get


@pytest.mark.parametrize("oracle", BOTH)
@pytest.mark.parametrize("name", ZOO_PARAMS)
def test_torchvision_classifier_matches(zoo_files, name, oracle):
    files, x, ref = zoo_files(name)
    # the reference is a real signal: O(1) logits that differ between the two samples
    assert 0.2 < float(ref.std()) < 20, ref.std()
    assert float(np.abs(ref[0] - ref[1]).max()) > 0.1 * float(np.abs(ref).max())
    record_zoo("torchvision", name, oracle, assert_close_rel(keras_predict(files[oracle], oracle, x), ref, RTOL))


# ---------------------------------------------------------------- subclasses that change forward
class BatchNormReLU(nn.BatchNorm2d):
    """A BatchNorm that applies an activation: exporting it as BatchNormalization alone would be wrong."""

    def forward(self, x):
        return F.relu(super().forward(x))


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's form: F.batch_norm on its own tensors, then child modules."""

    def __init__(self, channels):
        super().__init__(channels)
        self.drop = nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.1, self.eps)
        return self.act(self.drop(x))


class Conv2dSame(nn.Conv2d):
    """TF-style 'same' padding computed at run time (timm's Conv2dSame)."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        ph = max((math.ceil(ih / self.stride[0]) - 1) * self.stride[0] + kh - ih, 0)
        pw = max((math.ceil(iw / self.stride[1]) - 1) * self.stride[1] + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return self._conv_forward(x, self.weight, self.bias)


class ConvForwardOverride(nn.Conv2d):
    """Overrides only ``_conv_forward``: reflect padding by hand, then the convolution."""

    def _conv_forward(self, x, weight, bias):
        return F.conv2d(
            F.pad(x, [1, 1, 1, 1], mode="reflect"), weight, bias, self.stride, 0, self.dilation, self.groups
        )


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """A LayerNorm over the channels of (N, C, H, W) (ConvNeXt style)."""

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Subclasses(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = Conv2dSame(3, 8, 3, stride=2)
        self.bn = BatchNormReLU(8)
        self.ln = ChannelsFirstLayerNorm(8)
        self.reflect = ConvForwardOverride(8, 6, 3)
        self.bn_act = BatchNormAct2d(6)

    def forward(self, x):
        return self.bn_act(self.reflect(self.ln(self.bn(self.conv(x)))))


def _randomized(module: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return module.eval()


def test_subclasses_with_their_own_forward_are_not_mapped_as_their_parent():
    subclasses = (BatchNormReLU(3), BatchNormAct2d(3), Conv2dSame(3, 3, 3), ConvForwardOverride(3, 3, 3),
                  ChannelsFirstLayerNorm(3))  # fmt: skip
    for module in subclasses:
        assert exporter_for(module) is None, type(module).__name__
    for module in (nn.BatchNorm2d(3), nn.Conv2d(3, 3, 3), nn.LayerNorm(3), nn.ReLU6()):
        assert exporter_for(module) is not None


@pytest.mark.parametrize("oracle", BOTH)
def test_subclasses_with_their_own_forward_are_traced_into(oracle, tmp_path):
    module = _randomized(Subclasses())
    bn_before = module.bn.running_mean.clone()
    matches(module, (3, 9, 11), oracle, tmp_path)  # saves m.h5 and m.keras
    assert torch.equal(module.bn.running_mean, bn_before)  # exporting never updates statistics
    with h5py.File(tmp_path / "m.h5", "r") as f:
        config = json.loads(f.attrs["model_config"])
    classes = {layer["config"]["name"]: layer["class_name"] for layer in config["config"]["layers"]}
    # the standard layers, named by the owning module (so by-name loading pairs them)
    assert classes["conv"] == "Conv2D" and classes["bn"] == "BatchNormalization"
    assert classes["ln"] == "LayerNormalization" and classes["reflect"] == "Conv2D"
    assert classes["bn_act"] == "BatchNormalization" and classes["bn_act_act"] == "Activation"
    assert not any(c in ("Lambda", "TFOpLambda") for c in classes.values())


# ------------------------------------------------- optional arguments, control flow, shape asserts
class OptionalArgs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x, attn_mask=None, is_causal=False, scale: float = 1.0):
        if attn_mask is not None:
            x = x + attn_mask
        if is_causal:
            x = x * 0.0
        return self.fc(x) * scale


class ShapeControlFlow(nn.Module):
    """Python branches and asserts on shapes: symbolic fx cannot follow them; the input shape decides them."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 3, stride=2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        assert x.dim() == 4, "images only"
        b, c, h, w = x.shape
        torch._assert(c == 3, "RGB")
        x = torch.relu(self.conv(x))
        if h > 8:  # large inputs get an extra downsampling
            x = self.down(x)
        for _ in range(x.shape[1] // 8):
            x = x + 0.5
        return self.fc(x.mean((2, 3)))


class DataControlFlow(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


@pytest.mark.parametrize("oracle", BOTH)
def test_optional_arguments_left_at_defaults_are_not_inputs(oracle, tmp_path):
    matches(_randomized(OptionalArgs()), (6,), oracle, tmp_path)


@pytest.mark.parametrize("oracle", BOTH)
def test_shape_control_flow_and_asserts_specialise_to_the_input_shape(oracle, tmp_path):
    module = _randomized(ShapeControlFlow())
    matches(module, (3, 12, 12), oracle, tmp_path)
    small = json.loads(tkio.to_json(module, input_shape=(3, 6, 6)))
    assert "down" not in [layer["name"] for layer in small["config"]["layers"]]  # the other branch


def test_data_dependent_control_flow_is_refused():
    with pytest.raises(tkio.UnsupportedLayerError, match="depends on the data"):
        tkio.to_json(DataControlFlow(), input_shape=(4,))


# --------------------------------------------------------------- slicing, split, chunk, shuffle
class Slicing(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(6, 6, 1)

    def forward(self, x):  # (N, 6, 8, 10)
        a, b = x[:, :2], x[:, 2:]
        p, q, r = torch.split(b, [1, 2, 1], dim=1)
        c1, c2 = x.chunk(2, dim=1)
        y = torch.cat([q, r, p, a], 1) + torch.cat([c2[:, 1:], c1, c2[:, :1]], 1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)  # channel shuffle
        y = self.conv(torch.cat([y], 1))[..., 1:-1, 2:]  # a one-tensor cat (DenseNet) is the tensor
        z = y[:, 0] + y[:, -1, :, :]  # integer indices drop the axis
        return torch.cat([y.flatten(2), z.unsqueeze(1).reshape_as(y[:, :1]).flatten(2)], 1).flatten(1)


@pytest.mark.parametrize("oracle", BOTH)
def test_slicing_split_chunk_and_channel_shuffle(oracle, tmp_path):
    matches(_randomized(Slicing()), (6, 8, 10), oracle, tmp_path)


# --------------------------------------------------------------------------------- pooling
def _pools():
    return nn.ModuleDict({
        "max_signed": nn.MaxPool2d(3, 2, padding=1),  # signed input: -inf padding needs the edge construction
        "max_ceil": nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
        "max_rect": nn.MaxPool2d((2, 3), (2, 1), padding=(1, 1), ceil_mode=True),
        "avg_incl": nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=True),
        "avg_excl": nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False),
        "avg_div": nn.AvgPool2d(2, 3, padding=1, divisor_override=3),
        "ad_avg": nn.AdaptiveAvgPool2d((3, 5)),  # 10x12: windows of unequal length
        "ad_max": nn.AdaptiveMaxPool2d((4, None)),
        "ad_up": nn.AdaptiveAvgPool2d(16),  # larger than the input: repeated windows
    })  # fmt: skip


class Pools(nn.Module):
    def __init__(self):
        super().__init__()
        self.pools = _pools()
        self.max_relu = nn.MaxPool2d(3, 2, padding=1)  # after ReLU zeros are exact padding

    def forward(self, x):  # (N, C, 10, 12): k3 s2 p1 windows are not TensorFlow's 'same' ones
        outs = [p(x).flatten(1) for p in self.pools.values()]
        outs.append(self.max_relu(torch.relu(x)).flatten(1))
        return torch.cat(outs, 1)


class Pools1d3d(nn.Module):
    def forward(self, x):  # (N, C, 5, 7, 6)
        a = F.max_pool3d(x, 3, 2, padding=1, ceil_mode=True)
        b = F.avg_pool3d(x, (2, 3, 3), 2, padding=(1, 1, 0), count_include_pad=False)
        c = F.adaptive_avg_pool3d(x, (2, 3, 4))
        s = x.flatten(2)  # (N, C, 210)
        d = F.max_pool1d(s, 4, 3, padding=2, ceil_mode=True)
        e = F.adaptive_max_pool1d(s, 11)
        return torch.cat([t.flatten(1) for t in (a, b, c, d, e)], 1)


@pytest.mark.parametrize("oracle", BOTH)
def test_pooling_with_padding_ceil_mode_and_adaptive_sizes(oracle, tmp_path):
    matches(Pools(), (3, 10, 12), oracle, tmp_path)


@pytest.mark.parametrize("oracle", BOTH)
def test_pooling_1d_and_3d_functional(oracle, tmp_path):
    matches(Pools1d3d(), (2, 5, 7, 6), oracle, tmp_path)


@pytest.mark.parametrize("oracle", BOTH)
def test_padded_max_pooling_of_signed_values_never_pads_with_zeros(oracle, tmp_path):
    """The edge construction: a zero pad would win every all-negative border window."""
    x = -1.0 - torch.rand(2, 1, 6, 6)
    module = nn.Sequential(nn.MaxPool2d(3, 2, padding=1))  # on 6x6 not TensorFlow's 'same' windows
    config = json.loads(tkio.to_json(module, input_shape=(1, 6, 6)))
    classes = [layer["class_name"] for layer in config["config"]["layers"]]
    assert "ZeroPadding2D" not in classes and "Concatenate" in classes
    assert float(module(x).max()) < 0
    matches(module, (1, 6, 6), oracle, tmp_path, x=x)


# ------------------------------------------------------------------------------ functional forms
class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(2, 8)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 4)
        self.se = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        x = F.conv2d(x, self.conv.weight, self.conv.bias, stride=1, padding=1)
        x = F.batch_norm(x, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias, False, 0.1, 1e-5)
        x = F.relu(x)
        x = F.max_pool2d(x, 3, 2, padding=1)
        x = F.dropout(x, 0.3, training=self.training)
        x = F.group_norm(x, 2, self.gn.weight, self.gn.bias, self.gn.eps)
        x = x * F.hardsigmoid(self.se(x.mean((2, 3), keepdim=True)))
        x = F.hardswish(F.avg_pool2d(x, 3, 1, padding=1, count_include_pad=False))
        x = F.pad(x, [1, 2, 0, 1], mode="replicate") + F.pad(x, [1, 2, 0, 1], mode="reflect")
        x = F.interpolate(x, scale_factor=2) - F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = F.adaptive_avg_pool2d(x, (2, 3)).flatten(2).transpose(1, 2)  # (N, 6, 8)
        x = F.layer_norm(x, (8,), self.ln.weight, self.ln.bias, 1e-5)
        return F.linear(F.relu6(x), self.fc.weight, self.fc.bias).flatten(1)


@pytest.mark.parametrize("oracle", BOTH)
def test_functional_forms_with_module_parameters(oracle, tmp_path):
    module = _randomized(Functional())
    matches(module, (3, 10, 12), oracle, tmp_path)
    config = json.loads(tkio.to_json(module, input_shape=(3, 10, 12)))
    classes = {layer["config"]["name"]: layer["class_name"] for layer in config["config"]["layers"]}
    assert classes["conv"] == "Conv2D" and classes["bn"] == "BatchNormalization" and classes["fc"] == "Dense"
    assert classes["gn"] == "GroupNormalization" and classes["ln"] == "LayerNormalization"


class Regularisers(nn.Module):
    def forward(self, x):
        x = F.dropout(x, 0.3, training=self.training)  # off at inference: no layer
        return F.dropout(x, 0.2)  # training=True by default: torch drops even in eval, Keras's Dropout in training


def test_dropout_functions_export_for_inference():
    config = json.loads(tkio.to_json(Regularisers().train(), input_shape=(4,)))
    layers = [layer for layer in config["config"]["layers"] if layer["class_name"] != "InputLayer"]
    assert [(layer["class_name"], layer["config"]["rate"]) for layer in layers] == [("Dropout", 0.2)]


class InPlaceDiscarded(nn.Module):
    def forward(self, x):
        F.relu(x, inplace=True)  # the graph keeps x: exporting without the ReLU would be silently wrong
        return x * 2


def test_in_place_operation_with_discarded_result_is_refused():
    with pytest.raises(tkio.UnsupportedLayerError, match="in-place"):
        tkio.to_json(InPlaceDiscarded(), input_shape=(4,))
