"""torchvision ConvNeXt, ViT and Swin (and their ops, parameters as weights) export to files both Kerases run as torch does."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import BOTH, ORACLE_WARNINGS, assert_close_rel, keras_module, realistic_weights, record_zoo
from torch import nn

import torchkeras_io as tkio

pytestmark = [*ORACLE_WARNINGS, pytest.mark.filterwarnings("ignore::UserWarning")]

convnext = pytest.importorskip("torchvision.models.convnext")
vision_transformer = pytest.importorskip("torchvision.models.vision_transformer")
swin = pytest.importorskip("torchvision.models.swin_transformer")
from torchvision.ops.misc import Permute  # noqa: E402

SUFFIX = {"tf_keras": ".h5", "keras3": ".keras"}


def _feed(shape: tuple, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(2, *shape)).astype("float32")


def _torch(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def _check_reference(ref: np.ndarray) -> None:
    """Outputs of order 1 that differ between the two samples: a comparison that proves something."""
    scale = float(np.abs(ref).max())
    assert 0.05 < scale < 100.0, scale
    assert float(np.abs(ref[0] - ref[1]).max()) > 0.05 * scale


def _keras_predict(flavor: str, path, x: np.ndarray) -> np.ndarray:
    keras = keras_module(flavor)
    model = keras.models.load_model(path, compile=False)
    return np.asarray(model.predict(x, verbose=0))


# -------------------------------------------------------------------------------------- models
def small_convnext():
    blocks = [convnext.CNBlockConfig(16, 32, 2), convnext.CNBlockConfig(32, None, 1)]
    return convnext.ConvNeXt(blocks, stochastic_depth_prob=0.1, num_classes=10)


def small_vit():
    return vision_transformer.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=4, hidden_dim=64,
                                                mlp_dim=128, num_classes=10)  # fmt: skip


def small_swin():
    # 40x40: windows padded (10 -> 12, 5 -> 8), shifted windows with their mask, an odd patch merge (5 -> 3)
    return swin.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2, 2], num_heads=[2, 4, 4],
                                window_size=[4, 4], stochastic_depth_prob=0.1, num_classes=10)  # fmt: skip


MODELS = {"convnext": (small_convnext, (3, 32, 32)), "vit": (small_vit, (3, 32, 32)), "swin": (small_swin, (3, 40, 40))}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo_transformers")
    out = {}
    for name, (factory, shape) in MODELS.items():
        torch.manual_seed(0)
        module = realistic_weights(factory())
        paths = {}
        for flavor, suffix in SUFFIX.items():
            paths[flavor] = root / f"{name}{suffix}"
            tkio.save_model(module, paths[flavor], input_shape=shape)
        out[name] = (module, shape, paths)
    return out


@pytest.mark.parametrize("flavor", BOTH)
@pytest.mark.parametrize("name", list(MODELS))
def test_torchvision_transformer_matches_in_keras(exported, name, flavor):
    module, shape, paths = exported[name]
    x = _feed(shape)
    ref = _torch(module, x)
    _check_reference(ref)
    assert_close_rel(_keras_predict(flavor, paths[flavor], x), ref, 1e-4)


@pytest.mark.parametrize("flavor", BOTH)
@pytest.mark.parametrize("name", list(MODELS))
def test_our_loader_rebuilds_the_export(exported, name, flavor):
    module, shape, paths = exported[name]
    x = _feed(shape)
    assert_close_rel(tkio.load_model(paths[flavor], compile=False).predict(x), _torch(module, x), 1e-4)


# Keras layer names of the tensors used directly in forward: the owning module's path when it is
# the module's only tensor, so that by-name loading pairs it with that module
PARAM_LAYERS = {
    "convnext": {"features_1_0": "features.1.0.layer_scale", "features_3_0": "features.3.0.layer_scale"},
    "vit": {"encoder": "encoder.pos_embedding", "class_token": "class_token"},
    "swin": {"features_1_0_attn": "features.1.0.attn.relative_position_bias_table",
             "features_5_1_attn": "features.5.1.attn.relative_position_bias_table"},
}  # fmt: skip


@pytest.mark.parametrize("flavor", BOTH)
@pytest.mark.parametrize("name", list(MODELS))
def test_tensors_used_in_forward_are_keras_weights(exported, name, flavor):
    """Each is the ``beta`` of a LayerNormalization, bit for bit, in the torch tensor's own shape."""
    module, _, paths = exported[name]
    model = keras_module(flavor).models.load_model(paths[flavor], compile=False)
    state = module.state_dict()
    for layer_name, torch_name in PARAM_LAYERS[name].items():
        (beta,) = model.get_layer(layer_name).get_weights()
        assert np.array_equal(beta, state[torch_name].numpy()), layer_name


@pytest.mark.parametrize("name", list(MODELS))
def test_weights_round_trip_into_a_fresh_torchvision_model(exported, name, tmp_path):
    """Keras's own weights file of the loaded model, read back by name into a new torch model: every
    tensor bit for bit, parameters used in forward included (ViT's root-level class token is
    named explicitly: a root module's own tensors are otherwise top-level model weights)."""
    module, _, paths = exported[name]
    keras_model = keras_module("tf_keras").models.load_model(paths["tf_keras"], compile=False)
    keras_model.save_weights(tmp_path / "w.h5")
    torch.manual_seed(1)
    fresh = MODELS[name][0]().eval()
    names = {"": "class_token"} if name == "vit" else None
    report = tkio.load_weights(fresh, tmp_path / "w.h5", by_name=True, layer_names=names)
    assert not report.mismatched and not report.missing, str(report)
    for key, value in module.state_dict().items():
        if key.endswith("relative_position_index"):
            continue  # fixed by the window size, not in a Keras weights file (an extra of our own files)
        assert torch.equal(fresh.state_dict()[key], value), key
    # our own model file also carries the index buffer, as a torch extra
    again = MODELS[name][0]().eval()
    report = tkio.load_weights(again, paths["tf_keras"], by_name=True, layer_names=names)
    assert not report.mismatched and not report.missing, str(report)
    for key, value in module.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


# -------------------------------------------------------------------------- op families, one by one
class ClassTokenPosEmbedding(nn.Module):
    """Class token expanded to the batch and concatenated, position embedding added, ``x[:, 0]``."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 8)
        self.class_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.pos_embedding = nn.Parameter(torch.zeros(1, 5, 8))

    def forward(self, x):
        x = self.proj(x)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        return x[:, 0] + x.mean(1)


class LayerScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.gamma = nn.Parameter(torch.ones(6, 1, 1))
        self.bias = nn.Parameter(torch.zeros(6))

    def forward(self, x):
        y = self.gamma * self.conv(x)  # parameter first: torch broadcasting (6, 1, 1) -> (1, 6, 1, 1)
        return y.permute(0, 2, 3, 1) + self.bias


class Roll(nn.Module):
    def forward(self, x):
        return torch.roll(x, shifts=(1, -2), dims=(2, 3)) + x.roll(3, 1)


class Pads(nn.Module):
    """F.pad: zeros around H and W and reflection (built-in layers), a constant on the channels (pad op)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(F.pad(x, (1, 2, 0, 1)))
        y = F.pad(y, (0, 0, 0, 0, 1, 1), value=0.5)
        return F.pad(y, (2, 1, 1, 0), mode="reflect")


class Masks(nn.Module):
    def forward(self, x):
        keep = (x > 0.2).float() + (x == 0).float() + (x <= -1.0).float()
        return x * keep + (x != 0.5).float()


class Gelus(nn.Module):
    def __init__(self):
        super().__init__()
        self.tanh = nn.GELU(approximate="tanh")
        self.exact = nn.GELU()

    def forward(self, x):
        return self.tanh(x) + self.exact(x * 2.0) + F.gelu(x - 0.5, approximate="tanh") + F.gelu(x + 1.0)


class ChannelNorms(nn.Module):
    """ConvNeXt's two ways: LayerNorm2d over channels, and Permute + LayerNorm + Permute."""

    def __init__(self):
        super().__init__()
        self.ln2d = convnext.LayerNorm2d(5, eps=1e-6)
        self.conv = nn.Conv2d(5, 5, 3, padding=1, groups=5)
        self.ln = nn.Sequential(Permute([0, 2, 3, 1]), nn.LayerNorm(5, eps=1e-6), Permute([0, 3, 1, 2]))

    def forward(self, x):
        return self.ln(self.conv(self.ln2d(x)))


class Attention(nn.Module):
    """Scores and mixing by matmul of activations, softmax, head split by view/transpose; the same
    by ``F.scaled_dot_product_attention``."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x):
        q, k, v = self.qkv(x).view(x.shape[0], x.shape[1], 3, 2, 4).permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q * 0.5) @ k.transpose(-2, -1), dim=-1)
        mixed = torch.matmul(attn, v) + F.scaled_dot_product_attention(q, k, v, scale=0.3)
        return mixed.transpose(1, 2).reshape(x.shape[0], x.shape[1], 8) + F.scaled_dot_product_attention(x, x, x)


class WindowAttention(nn.Module):
    """torchvision's ShiftedWindowAttention alone: the bias table gathered by its index, the shift mask."""

    def __init__(self):
        super().__init__()
        self.attn = swin.ShiftedWindowAttention(8, [3, 3], [1, 1], 2)

    def forward(self, x):
        return self.attn(x.permute(0, 2, 3, 1))


OPS = {
    "class_token_pos_embedding": (ClassTokenPosEmbedding, (4, 6)),
    "layer_scale": (LayerScale, (3, 5, 4)),
    "roll": (Roll, (3, 5, 6)),
    "masks": (Masks, (4, 5)),
    "pad": (Pads, (3, 5, 6)),
    "gelu": (Gelus, (3, 7)),
    "channel_layer_norm": (ChannelNorms, (5, 4, 3)),
    "matmul_attention": (Attention, (5, 8)),
    "window_attention": (WindowAttention, (8, 7, 6)),
}


def _op_feed(name: str, shape: tuple) -> np.ndarray:
    x = _feed(shape, seed=3)
    if name == "masks":  # exact hits for the comparisons
        x.reshape(-1)[:6] = [0.0, 0.5, -1.0, 0.2, 0.0, 0.5]
    return x


@pytest.fixture(scope="module")
def exported_ops(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo_ops")
    out = {}
    for name, (factory, shape) in OPS.items():
        torch.manual_seed(0)
        module = realistic_weights(factory())
        paths = {flavor: root / f"{name}{suffix}" for flavor, suffix in SUFFIX.items()}
        for path in paths.values():
            tkio.save_model(module, path, input_shape=shape)
        out[name] = (module, shape, paths)
    return out


@pytest.mark.parametrize("flavor", BOTH)
@pytest.mark.parametrize("name", list(OPS))
def test_op_family_matches_in_keras_and_in_our_loader(exported_ops, name, flavor):
    module, shape, paths = exported_ops[name]
    x = _op_feed(name, shape)
    ref = _torch(module, x)
    assert_close_rel(_keras_predict(flavor, paths[flavor], x), ref, 1e-5)
    assert_close_rel(tkio.load_model(paths[flavor], compile=False).predict(x), ref, 1e-5)


def test_forms_of_each_op_in_each_dialect(tmp_path):
    """tf-keras files name ``tf.*`` functions in TFOpLambda layers; Keras 3 files hold keras.ops nodes."""
    import json
    import zipfile

    module = realistic_weights(WindowAttention())
    config = json.loads(tkio.to_json(module, input_shape=(8, 7, 6)))
    functions = {e["config"]["function"] for e in config["config"]["layers"] if e["class_name"] == "TFOpLambda"}
    assert functions == {"linalg.matmul", "gather", "roll", "math.add"}
    tkio.save_model(module, tmp_path / "m.keras", input_shape=(8, 7, 6))
    with zipfile.ZipFile(tmp_path / "m.keras") as zf:
        k3 = json.loads(zf.read("config.json"))
    ops = {(e["module"], e["class_name"]) for e in k3["config"]["layers"] if e["module"].startswith("keras.src.ops")}
    assert ops == {("keras.src.ops.numpy", c) for c in ("Matmul", "Take", "Roll", "Add")}
    assert not any(e["class_name"] in ("Lambda", "TFOpLambda") for e in k3["config"]["layers"])


def test_parameter_weights_load_back_bit_exact(exported_ops, tmp_path):
    """Class token and position embedding: Keras weights in both Kerases whose layers output them
    bit for bit; our loader holds them too, and load_weights restores them from Keras's own file."""
    module, shape, paths = exported_ops["class_token_pos_embedding"]
    x = _feed(shape)
    params = {"class_token": module.class_token, "pos_embedding": module.pos_embedding}
    for flavor in BOTH:
        keras = keras_module(flavor)
        model = keras.models.load_model(paths[flavor], compile=False)
        for layer_name, tensor in params.items():
            want = tensor.numpy(force=True)
            assert np.array_equal(model.get_layer(layer_name).get_weights()[0], want)
            probe = keras.Model(model.inputs, model.get_layer(layer_name).output)
            got = np.asarray(probe.predict(x, verbose=0))
            assert got.shape == (2, *want.shape) and all(np.array_equal(g, want) for g in got)
        ours = tkio.load_model(paths[flavor], compile=False)
        for layer_name, tensor in params.items():
            assert torch.equal(ours.module.layers[layer_name].bias, tensor.detach())
    keras_model = keras_module("tf_keras").models.load_model(paths["tf_keras"], compile=False)
    keras_model.save_weights(tmp_path / "w.h5")
    fresh = tkio.model_from_json(tkio.to_json(module, input_shape=shape))
    tkio.load_weights(fresh, tmp_path / "w.h5")
    for layer_name, tensor in params.items():
        assert torch.equal(fresh.module.layers[layer_name].bias, tensor.detach())
    assert_close_rel(fresh.predict(x), _torch(module, x), 1e-5)


# --------------------------------------------------------------------------------- full size, slow
#: torchvision's own models at full size, and the smallest input each allows
FULL_SIZE = {"convnext_tiny": 32, "vit_b_16": 224, "swin_t": 224}


@pytest.mark.slow
@pytest.mark.parametrize("flavor", BOTH)
@pytest.mark.parametrize(("factory", "side"), list(FULL_SIZE.items()))
def test_full_size_torchvision_models(factory, side, flavor, tmp_path):
    import torchvision

    torch.manual_seed(0)
    module = realistic_weights(getattr(torchvision.models, factory)(num_classes=10))
    shape = (3, side, side)
    path = tmp_path / f"m{SUFFIX[flavor]}"
    tkio.save_model(module, path, input_shape=shape)
    x = _feed(shape)
    ref = _torch(module, x)
    _check_reference(ref)
    record_zoo("torchvision", factory, flavor, assert_close_rel(_keras_predict(flavor, path, x), ref, 1e-4))
