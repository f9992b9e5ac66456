"""Exported branching models load into the right layers in tf-keras and Keras 3, and bad files are refused or flagged."""

import json
import zipfile

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import BOTH, ORACLE_WARNINGS, as_list, assert_close_rel, keras_module, realistic_weights
from torch import nn

import torchkeras_io as tkio
from torchkeras_io._keras.order import layer_order

pytestmark = [*ORACLE_WARNINGS]

RTOL = 1e-5


# ------------------------------------------------------------------------- branching modules
class TwoInputTwoHead(nn.Module):
    """Two inputs, one shared concatenation, two heads of different widths (one through a sigmoid)."""

    def __init__(self):
        super().__init__()
        self.o1 = nn.Linear(10, 2)
        self.o2 = nn.Linear(10, 3)

    def forward(self, a, b):
        x = torch.cat([a, b], dim=1)
        return self.o1(x), torch.sigmoid(self.o2(x))


class SharedEncoder(nn.Module):
    """A siamese encoder: one layer called three times, at different depths of the graph."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(6, 6)
        self.pre = nn.Linear(6, 6)
        self.h1 = nn.Linear(12, 4)
        self.h2 = nn.Linear(6, 4)

    def forward(self, a, b):
        ea, eb = self.enc(a), self.enc(torch.relu(self.pre(b)))
        return self.h1(torch.cat([ea, eb], 1)), self.h2(self.enc(ea))


def conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Inception(nn.Module):
    """GoogLeNet's block: four branches whose first 1x1 convolutions all have the same shape."""

    def __init__(self, cin: int, width: int):
        super().__init__()
        self.b1 = conv_bn(cin, width, 1)
        self.b2 = nn.Sequential(conv_bn(cin, width, 1), conv_bn(width, width, 3))
        self.b3 = nn.Sequential(conv_bn(cin, width, 1), conv_bn(width, width, 3), conv_bn(width, width, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, width, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class Residual(nn.Module):
    """ResNet's basic block with a projection shortcut, and squeeze-excite on the residual branch."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.se = SqueezeExcite(cout)
        self.proj = nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.proj_bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        y = self.se(self.bn2(self.conv2(self.conv1(x))))
        return F.relu(y + self.proj_bn(self.proj(x)))


class BranchyNet(nn.Module):
    """A stem, an inception block, two SE-residual blocks (same-shaped siblings everywhere), a head."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8, 3)
        self.inception = Inception(8, 4)
        self.res1 = Residual(16, 16, 1)
        self.res2 = Residual(16, 24, 2)
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        x = self.res2(self.res1(self.inception(self.stem(x))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


CASES = {
    "two_input_two_head": (TwoInputTwoHead, [(4,), (6,)]),
    "shared_encoder": (SharedEncoder, [(6,), (6,)]),
    "inception": (lambda: Inception(3, 4), (3, 12, 12)),
    "branchy": (BranchyNet, (3, 16, 16)),
}


def _inputs(shapes, seed: int = 1) -> list:
    shapes = shapes if isinstance(shapes[0], tuple) else [shapes]
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((2, *s), generator=g) for s in shapes]


def _torch_outputs(module, xs) -> list:
    with torch.no_grad():
        return [y.numpy() for y in as_list(module(*xs))]


def _keras_outputs(model, xs) -> list:
    feed = [x.numpy() for x in xs]
    return [np.asarray(y) for y in as_list(model.predict(feed if len(feed) > 1 else feed[0], verbose=0))]


def _weighted_layer_names(path) -> list:
    """The legacy file's ``layer_names`` that have weights: the order Keras pairs by."""
    with h5py.File(path, "r") as f:
        g = f["model_weights"]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs["layer_names"]]
        return [n for n in names if len(g[n].attrs["weight_names"])]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = {}
    for name, (factory, shape) in CASES.items():
        torch.manual_seed(0)
        module = realistic_weights(factory())
        base = tmp_path_factory.mktemp(name)
        for ext in ("h5", "keras"):
            tkio.save_model(module, base / f"m.{ext}", input_shape=shape)
        out[name] = (module, shape, base)
    return out


@pytest.mark.parametrize("oracle", BOTH)
@pytest.mark.parametrize("name", list(CASES))
def test_legacy_h5_pairs_every_weight_with_its_layer(saved, name, oracle):
    module, shape, base = saved[name]
    model = keras_module(oracle).models.load_model(base / "m.h5", compile=False)
    # the positional pairing itself: Keras's weighted layers, in its own order, are the file's groups
    assert [layer.name for layer in model.layers if layer.weights] == _weighted_layer_names(base / "m.h5")
    xs = _inputs(shape)
    for got, ref in zip(_keras_outputs(model, xs), _torch_outputs(module, xs), strict=True):
        assert_close_rel(got, ref, RTOL)


@pytest.mark.parametrize("name", list(CASES))
def test_keras_archive_pairs_same_shaped_siblings_by_path(saved, name):
    module, shape, base = saved[name]
    keras = keras_module("keras3")
    model = keras.saving.load_model(base / "m.keras", compile=False)
    # the archive's config lists the layers as Keras 3 rebuilds them (a fixed point), so the store
    # paths layers/conv2d, layers/conv2d_1, ... we numbered in it are the ones Keras 3 numbers
    with zipfile.ZipFile(base / "m.keras") as zf:
        config = json.loads(zf.read("config.json"))
    assert [e["name"] for e in config["config"]["layers"]] == [layer.name for layer in model.layers]
    xs = _inputs(shape)
    for got, ref in zip(_keras_outputs(model, xs), _torch_outputs(module, xs), strict=True):
        assert_close_rel(got, ref, RTOL)


@pytest.mark.parametrize("oracle", BOTH)
def test_our_model_of_keras_order_is_keras_own(saved, oracle, tmp_path):
    """The rebuild order we compute (and write) is the one each Keras computes, from a config in another order."""
    module, shape, base = saved["branchy"]
    path = tmp_path / "shuffled.h5"
    path.write_bytes((base / "m.h5").read_bytes())
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        written = [e["name"] for e in config["config"]["layers"]]
        config["config"]["layers"] = config["config"]["layers"][::-1]  # Keras re-sorts whatever the config lists
        f.attrs["model_config"] = json.dumps(config).encode("utf-8")
    model = keras_module(oracle).models.load_model(path, compile=False)
    keras_order = [layer.name for layer in model.layers]
    assert layer_order(config, oracle) == keras_order
    assert written == keras_order  # what we wrote is already that order: a fixed point
    xs = _inputs(shape)
    assert_close_rel(_keras_outputs(model, xs)[0], _torch_outputs(module, xs)[0], RTOL)


# ------------------------------------------------------------------ our loader flags bad files
def _reorder_layer_names(path, swap: tuple) -> None:
    """Swap two groups in ``layer_names``, as a writer that ignores Keras's order would list them."""
    with h5py.File(path, "r+") as f:
        g = f["model_weights"]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs["layer_names"]]
        i, j = names.index(swap[0]), names.index(swap[1])
        names[i], names[j] = names[j], names[i]
        g.attrs["layer_names"] = np.array([n.encode() for n in names])


def test_our_loader_flags_a_file_keras_would_load_swapped(saved, tmp_path):
    module, shape, base = saved["inception"]
    path = tmp_path / "swapped.h5"
    path.write_bytes((base / "m.h5").read_bytes())
    # two same-shaped 1x1 convolutions of different branches: Keras loads each with the other's kernel
    _reorder_layer_names(path, ("b1_0", "b2_0_0"))
    xs = _inputs(shape)
    refs = _torch_outputs(module, xs)
    wrong = _keras_outputs(keras_module("tf_keras").models.load_model(path, compile=False), xs)[0]
    assert float(np.max(np.abs(wrong - refs[0]))) > 1e-2 * float(np.max(np.abs(refs[0])))  # the oracle: swapped
    with pytest.warns(tkio.TorchKerasIOWarning, match=r"swapped\.h5.*'b1_0' would get the weights of 'b2_0_0'.*"
                                                      r"silent swap"):  # fmt: skip
        ours = tkio.load_model(path, compile=False)
    assert_close_rel(ours.predict(xs[0]), refs[0], RTOL)  # by name, ours is right
    # positional loading as Keras does it is refused rather than done swapped
    with pytest.raises(tkio.WeightMismatchError, match=r"swapped\.h5.*another order.*by_name=True"):
        with pytest.warns(tkio.TorchKerasIOWarning, match="module's own order"):
            ours.load_weights(path)


def test_our_loader_flags_a_file_keras_would_fail_on(saved, tmp_path):
    module, shape, base = saved["two_input_two_head"]
    path = tmp_path / "heads.h5"
    path.write_bytes((base / "m.h5").read_bytes())
    _reorder_layer_names(path, ("o1", "o2"))  # the order our exporter used to write
    with pytest.raises(ValueError, match="o2"):  # both Kerases: a shape mismatch
        keras_module("keras3").models.load_model(path, compile=False)
    with pytest.warns(tkio.TorchKerasIOWarning, match=r"'o2' would get the weights of 'o1' \(shapes"):
        ours = tkio.load_model(path, compile=False)
    xs = _inputs(shape)
    for got, ref in zip(as_list(ours.predict(xs)), _torch_outputs(module, xs), strict=True):
        assert_close_rel(got, ref, RTOL)


def _swap_store_paths(path, a: str, b: str, tmp_path) -> None:
    """Swap two layers' places in a ``.keras`` store, as a writer numbering paths in its own order would."""
    with zipfile.ZipFile(path) as zf:
        entries = {info.filename: zf.read(info) for info in zf.infolist()}
    store = tmp_path / "store.weights.h5"
    store.write_bytes(entries["model.weights.h5"])
    with h5py.File(store, "r+") as f:
        f.move(f"layers/{a}", "layers/_swap")
        f.move(f"layers/{b}", f"layers/{a}")
        f.move("layers/_swap", f"layers/{b}")
    entries["model.weights.h5"] = store.read_bytes()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


def test_our_loader_reads_an_archive_numbered_in_another_order_by_its_stored_names(saved, tmp_path):
    module, shape, base = saved["inception"]
    path = tmp_path / "swapped.keras"
    path.write_bytes((base / "m.keras").read_bytes())
    _swap_store_paths(path, "conv2d", "conv2d_1", tmp_path)  # two same-shaped 1x1 convolutions
    xs = _inputs(shape)
    refs = _torch_outputs(module, xs)
    wrong = _keras_outputs(keras_module("keras3").saving.load_model(path, compile=False), xs)[0]
    assert float(np.max(np.abs(wrong - refs[0]))) > 1e-2 * float(np.max(np.abs(refs[0])))  # the oracle: swapped
    with pytest.warns(tkio.TorchKerasIOWarning, match=r"swapped\.keras: Keras 3 pairs .* by store path.*silent swap"):
        ours = tkio.load_model(path, compile=False)
    assert_close_rel(ours.predict(xs[0]), refs[0], RTOL)


# ------------------------------------------------------------------- prove before writing
def _broken_models(saved):
    """Models whose Keras config does not fit them: a dangling reference, an unknown class, a narrower layer."""
    _, _, base = saved["two_input_two_head"]
    for edit in ("dangling", "unknown_class", "narrower"):
        model = tkio.load_model(base / "m.h5", compile=False)
        config = json.loads(json.dumps(model.module.keras_config))
        entry = next(e for e in config["config"]["layers"] if e["name"] == "o1")
        if edit == "dangling":
            entry["inbound_nodes"] = [[["no_such_layer", 0, 0, {}]]]
        elif edit == "unknown_class":
            entry["class_name"] = "NoSuchLayer"
        else:
            entry["config"]["units"] = 7
        model.module.keras_config = config
        yield edit, model


@pytest.mark.parametrize("ext", ["h5", "keras"])
def test_a_config_that_would_not_load_is_never_written(saved, tmp_path, ext):
    expected = {"dangling": tkio.UnsupportedLayerError, "unknown_class": tkio.UnsupportedLayerError,
                "narrower": tkio.WeightMismatchError}  # fmt: skip
    for edit, model in _broken_models(saved):
        path = tmp_path / f"{edit}.{ext}"
        with pytest.raises(expected[edit], match=rf"{edit}\.{ext}.*(o1|no_such_layer)"):
            tkio.save_model(model, path)
        assert not path.exists(), edit
        # a refused save leaves an existing file as it was
        path.write_bytes(b"previous")
        with pytest.raises(expected[edit]):
            tkio.save_model(model, path)
        assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{e}.{ext}" for e in expected)  # no temporaries


def test_to_json_refuses_a_config_that_would_not_load(saved):
    for _, model in _broken_models(saved):
        with pytest.raises(tkio.TorchKerasIOError, match="o1|no_such_layer"):
            model.to_json()


def test_layers_that_feed_no_output_are_left_out(tmp_path):
    class DeadBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 3)
            self.unused = nn.Linear(4, 3)

        def forward(self, x):
            self.unused(x)
            return self.used(x)

    module = realistic_weights(DeadBranch())
    with pytest.warns(tkio.TorchKerasIOWarning, match=r"\['unused'\] feed no output"):
        tkio.save_model(module, tmp_path / "d.h5", input_shape=(4,))
    xs = _inputs((4,))
    for flavor in BOTH:
        got = _keras_outputs(keras_module(flavor).models.load_model(tmp_path / "d.h5", compile=False), xs)
        assert_close_rel(got[0], _torch_outputs(module, xs)[0], RTOL)


class Attend(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x)[0]


class Scores(nn.Module):
    """Attention scores: a matmul of two activations, a TFOpLambda in the legacy config."""

    def __init__(self):
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.k = nn.Linear(8, 8)

    def forward(self, x):
        return torch.matmul(self.q(x), self.k(x).transpose(1, 2))


@pytest.mark.parametrize(("factory", "cls"), [(Attend, "MultiHeadAttention"), (Scores, "TFOpLambda")])
def test_h5_that_keras3_cannot_read_says_keras_does(tmp_path, factory, cls):
    module = realistic_weights(factory())
    with pytest.warns(tkio.TorchKerasIOWarning, match=rf"a\.h5: Keras 3 cannot rebuild {cls}.*'\.keras'"):
        tkio.save_model(module, tmp_path / "a.h5", input_shape=(5, 8))
    tkio.save_model(module, tmp_path / "a.keras", input_shape=(5, 8))
    keras = keras_module("keras3")
    with pytest.raises((ValueError, TypeError)):  # the warning is true: Keras 3 cannot load the .h5 ...
        keras.models.load_model(tmp_path / "a.h5", compile=False)
    xs = _inputs((5, 8))
    ref = _torch_outputs(module, xs)[0]
    for model in (keras_module("tf_keras").models.load_model(tmp_path / "a.h5", compile=False),
                  keras.saving.load_model(tmp_path / "a.keras", compile=False)):  # fmt: skip
        assert_close_rel(_keras_outputs(model, xs)[0], ref, RTOL)  # ... and tf-keras, and Keras 3 the .keras, do


# ----------------------------------------------------------------------- real architectures
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["regnet_y_400mf", "googlenet"])
def test_torchvision_branching_models_load_in_both_kerases(arch, tmp_path):
    import torchvision

    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
    module = realistic_weights(getattr(torchvision.models, arch)(**kwargs))
    xs = _inputs((3, 64, 64))
    refs = _torch_outputs(module, xs)
    for ext, oracles in (("h5", BOTH), ("keras", ("keras3",))):
        path = tmp_path / f"m.{ext}"
        tkio.save_model(module, path, input_shape=(3, 64, 64))
        for oracle in oracles:
            model = keras_module(oracle).models.load_model(path, compile=False)
            assert_close_rel(_keras_outputs(model, xs)[0], refs[0], RTOL)
