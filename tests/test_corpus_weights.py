"""Every layer with weights in the real-world corpus (``shared/corpus``) loads into its torch module.

For each legacy-HDF5 file the test reads the layers with weights itself (h5py, not the library),
works out the Keras class of each layer (from the root ``model_config``, the ``arch/`` sidecar, or
the weight names and shapes when neither exists), builds the matching torch module, loads the file
with ``tkio.load_weights(container, path, by_name=True, layer_names=...)`` and checks:

* every layer with weights is loaded, and nothing is missing, unexpected or mismatched, except the
  layers listed in ``SPECIAL`` (unrepresentable layouts), whose own behaviour is asserted;
* every torch tensor equals the file's arrays under the documented mapping (computed here from the
  weight *names*, not their positions: Linear.weight == kernel.T, conv permutes, Keras 1 gate
  regrouping i,c,f,o -> i,f,c,o, GRU z,r,h -> r,z,n, ...), exactly.

Layers the library cannot map to one torch module:

* a nested model (one HDF5 group holding the weights of several sub-layers) and a
  SeparableConv2D (one Keras layer, two torch convolutions) are loaded into a small module that
  holds the arrays as they are (the generic adapter: positional, file shapes), then re-checked by
  writing each sub-layer to its own group of a temporary file and loading those into real torch
  modules (Conv2d, depthwise Conv2d, BatchNorm, Linear, ...);
* custom layers (GarNetStack, HGQ FixedPointQuantizer) and a MultiHeadAttention whose
  ``key_dim != embed_dim / num_heads`` are loaded the same raw way;
* GRU(reset_after=False) must raise ``UnsupportedLayerError`` for ``nn.GRU``;
* per-element PReLU alphas (one slope per pixel) do not fit ``nn.PReLU`` and are reported as
  mismatched (``WeightMismatchError`` without ``skip_mismatch``);
* a Keras 3 ``.weights.h5`` file must raise ``FileFormatError`` naming '.weights.h5'.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import warnings
from pathlib import Path
from typing import Optional

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import torchkeras_io as tkio

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
if not CORPUS.is_dir():
    pytest.skip(f"corpus not found at {CORPUS}", allow_module_level=True)

# Keras facts, written out here rather than taken from the library so that the oracle stays independent
MODEL_CLASSES = {"Sequential", "Functional", "Model"}
KERAS1_CLASSES = {  # Keras 1 class names that Keras 2 renamed
    "Convolution1D": "Conv1D",
    "Convolution2D": "Conv2D",
    "Convolution3D": "Conv3D",
    "AtrousConvolution1D": "Conv1D",
    "AtrousConvolution2D": "Conv2D",
    "Deconvolution2D": "Conv2DTranspose",
    "SeparableConvolution2D": "SeparableConv2D",
}

FILES = CORPUS / "files"
ARCH = CORPUS / "arch"
with open(CORPUS / "MANIFEST.tsv", newline="", encoding="utf-8") as _fh:
    MANIFEST = {row["filename"]: row for row in csv.DictReader(_fh, delimiter="\t")}

# Layers that do not load as "mapped" (file -> {layer: kind}); every other layer with weights must.
#   nested     a nested model: raw group load + per-sub-layer load from a split copy
#   separable  SeparableConv2D: raw group load + depthwise/pointwise Conv2d from a split copy
#   custom     a custom layer class: raw load (generic adapter), arrays unchanged
#   mha        MultiHeadAttention with key_dim != E/H: no nn.MultiheadAttention; raw load
#   gru_v1     GRU(reset_after=False): nn.GRU raises UnsupportedLayerError
#   prelu_elem PReLU with one alpha per element: nn.PReLU(C) is a WeightMismatch
_GRU5 = {f"gru_{i}": "gru_v1" for i in range(6, 11)}
SPECIAL = {
    "2nithing__streamlit_teachable_machine__keras_model.h5": {"sequential_1": "nested", "sequential_3": "nested"},
    "AdityaDutt__Bird-Song-Classification__model_checkpoint.h5": {"model": "nested"},
    "Jwuthri__udacity-robotics-follow__model_weights.h5": {
        f"separable_conv2d_keras_{i}": "separable" for i in range(1, 7)
    },
    "WenzhiMichael__AIfinance__transformer_model.h5": {
        "multi_head_attention": "mha",
        "multi_head_attention_1": "mha",
    },
    "anushree1001__Comparing-Multiple-Pre-trained-Neural-network-models-on-IMDB-dataset__bigru_model.h5": {
        "bidirectional_4": "gru_v1"
    },
    "fastmachinelearning__example-models__keras_garnet_3layer_weights.h5": {"gar_1": "custom"},
    "fastmachinelearning__example-models__keras_hgq_mnist_heterogeneous.h5": {
        name: "custom"
        for name in (
            "h_quantize_quantizer",
            "h_conv2d_quantizer",
            "h_conv2d_relu_quantizer",
            "h_conv2d_1_quantizer",
            "h_conv2d_1_relu_quantizer",
            "h_dense_quantizer",
            "h_dense_relu_quantizer",
            "h_dense_1_quantizer",
        )
    },
    "lukasz-marek__wshop2017__generator.h5": _GRU5,
    "matthiasplappert__keras-rl-weights__cdqn_Pendulum-v0_weights.h5f": {
        "model_1": "nested",
        "sequential_1": "nested",
        "sequential_2": "nested",
    },
    "nakahatar111__1D_GAN__1D_gan.h5": {"sequential_27": "nested", "sequential_28": "nested"},
    "nanoporetech__medaka__medaka_test_data_test_model.hdf5": {
        "bidirectional_1": "gru_v1",
        "bidirectional_2": "gru_v1",
    },
    "wolfapple__CarND-Behavioral-Cloning-Project__model.h5": {f"prelu_{i}": "prelu_elem" for i in range(1, 6)},
    "yokoponzoo__keras-vae__vae.h5": {"encoder": "nested", "decoder": "nested"},
}
KERAS3_WEIGHTS = {"Exitarr__collaborative-filtering-based-Recommendation-System__best_model.weights.h5"}
NO_WEIGHTS = {"HTAKM__Denoising_autoencoder_pytorch2tfjs__denoising_autoencoder.h5"}  # TFOpLambda only

RAW_KINDS = {"nested", "separable", "custom", "mha"}  # loaded into a raw (generic) module
REFUSED_KINDS = {"gru_v1", "prelu_elem"}  # not loadable into their torch module


# ------------------------------------------------------------------------------ reading the file
def _dec(v):
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf-8")
    if isinstance(v, np.ndarray):
        return [_dec(x) for x in v.tolist()] if v.ndim else _dec(v[()])
    if isinstance(v, (list, tuple)):
        return [_dec(x) for x in v]
    return v


def _name_list(group, attr: str) -> list:
    """Keras's load_attributes_from_hdf5_group, incl. chunked attributes and empty float arrays."""
    if attr in group.attrs:
        raw = group.attrs[attr]
        if isinstance(raw, np.ndarray) and raw.size == 0:
            return []
        out = _dec(raw)
        return [out] if isinstance(out, str) else out
    out, i = [], 0
    while f"{attr}{i}" in group.attrs:
        out += _dec(group.attrs[f"{attr}{i}"])
        i += 1
    return out


@dataclasses.dataclass
class KLayer:
    """One layer group of the file: its weights in file order."""

    name: str
    weight_names: list
    arrays: list

    @property
    def shapes(self) -> list:
        return [a.shape for a in self.arrays]


@dataclasses.dataclass
class KFile:
    path: Path
    keras_version: Optional[str]  # of the weights group; None: a Keras 1 file
    backend: Optional[str]
    layers: list  # KLayer, only those with weights, in layer_names order
    configs: dict  # top-level layer name -> (class_name, config); {} without an architecture
    leaf_configs: dict  # every non-model layer, nested models flattened

    @property
    def keras1(self) -> bool:
        return self.keras_version is None or self.keras_version.startswith("1")


def _model_config(h5: h5py.File, path: Path):
    raw = h5.attrs.get("model_config")
    if raw is None:
        side = ARCH / f"{path.name}.json"
        if not side.exists():
            return None
        raw = side.read_text(encoding="utf-8")
    cfg = json.loads(_dec(raw))
    while isinstance(cfg, str):  # some sidecars are JSON-encoded twice
        cfg = json.loads(cfg)
    return cfg


def _entries(model_cfg: dict):
    """(name, class_name, config) of a model config's direct layers (list or dict forms)."""
    c = model_cfg.get("config")
    entries = c if isinstance(c, list) else (c or {}).get("layers") or []
    for e in entries:
        conf = e.get("config") or {}
        yield e.get("name") or conf.get("name"), e["class_name"], conf


def _leaves(model_cfg: dict, out: dict) -> dict:
    for name, cls, conf in _entries(model_cfg):
        if cls in MODEL_CLASSES:
            _leaves({"class_name": cls, "config": conf}, out)
        else:
            out[name] = (cls, conf)
    return out


def read_file(path: Path) -> KFile:
    with h5py.File(path, "r") as h5:
        group = h5 if ("layer_names" in h5.attrs or "layer_names0" in h5.attrs) else h5["model_weights"]
        version = _dec(group.attrs["keras_version"]) if "keras_version" in group.attrs else None
        backend = _dec(group.attrs["backend"]) if "backend" in group.attrs else None
        layers = []
        for name in _name_list(group, "layer_names"):
            wnames = _name_list(group[name], "weight_names")
            if wnames:
                layers.append(KLayer(name, wnames, [np.asarray(group[name][w][()]) for w in wnames]))
        cfg = _model_config(h5, path)
    configs = {n: (c, conf) for n, c, conf in _entries(cfg)} if cfg else {}
    return KFile(path, version, backend, layers, configs, _leaves(cfg, {}) if cfg else {})


# --------------------------------------------------------------------------- weight roles by name
_K1_ROLE = re.compile(
    r"^(?P<owner>.+?)_(?P<role>[WUb]_[a-z]|[WUb]|gamma|beta|running_mean|running_std|alphas)(?:_\d+)?$"
)
_K1_ALIAS = {
    "W": "kernel",
    "U": "recurrent_kernel",
    "b": "bias",
    "running_mean": "moving_mean",
    "running_std": "moving_variance",  # Keras 1 stored the variance under this name
    "alphas": "alpha",
}


def role_of(weight_name: str, keras1: bool):
    """(owner sub-layer, role, gate) of a weight, e.g. ('lstm_1', 'kernel', 'i') for 'lstm_1_W_i'."""
    parts = weight_name.split(":")[0].split("/")
    leaf = parts[-1]
    m = _K1_ROLE.match(leaf) if keras1 else None
    if m:
        role, gate = m["role"], None
        if re.fullmatch(r"[WUb]_[a-z]", role):
            role, gate = role.split("_")
        return m["owner"], _K1_ALIAS.get(role, role), gate
    return (parts[-2] if len(parts) > 1 else None), leaf, None


# ---------------------------------------------------------------------------- the test-side builder
class RawLayer(nn.Module):
    """A Keras layer's arrays as they are: the generic adapter loads them positionally."""

    def __init__(self, arrays):
        super().__init__()
        for i, a in enumerate(arrays):
            self.register_buffer(f"w{i}", torch.zeros(a.shape, dtype=torch.from_numpy(np.zeros(0, a.dtype)).dtype))


@dataclasses.dataclass
class Plan:
    """How one Keras layer maps to torch, and what the torch tensors must equal after loading."""

    name: str
    kind: str  # "mapped" or one of the SPECIAL kinds
    klass: str
    module: nn.Module
    expected: dict  # torch tensor name ('a+b': the sum of two tensors) -> array
    note: str = ""
    parts: list = dataclasses.field(default_factory=list)  # sub-plans of nested / separable layers
    part_layers: list = dataclasses.field(default_factory=list)  # their KLayers (split copy)


def _raw_plan(layer: KLayer, kind: str, klass: str, note: str = "") -> Plan:
    return Plan(layer.name, kind, klass, RawLayer(layer.arrays), {f"w{i}": a for i, a in enumerate(layer.arrays)}, note)


def _to_torch_conv(kernel: np.ndarray) -> np.ndarray:
    """Keras (k..., in, out) -> torch (out, in, k...)."""
    r = kernel.ndim - 2
    return kernel.transpose((r + 1, r) + tuple(range(r)))


def _infer_class(layer: KLayer, roles) -> Optional[str]:
    """The Keras class of a layer without an architecture, from weight names and shapes."""
    s = {r for _, r, _ in roles}
    by = {r: a for (_, r, _), a in zip(roles, layer.arrays)}
    if "recurrent_kernel" in s:
        per_dir = len(layer.arrays) // (2 if _bidirectional(layer) else 1)
        if per_dir in (12, 9):  # Keras 1 per-gate W, U, b
            return "LSTM" if per_dir == 12 else "GRU"
        gates = by["kernel"].shape[-1] // by["recurrent_kernel"].shape[0]
        return {4: "LSTM", 3: "GRU", 1: "SimpleRNN"}[gates]
    if s == {"embeddings"}:
        return "Embedding"
    if "depthwise_kernel" in s:
        return "SeparableConv2D" if "pointwise_kernel" in s else "DepthwiseConv2D"
    if {"moving_mean", "moving_variance"} <= s:
        return "BatchNormalization"
    if s == {"alpha"}:
        return "PReLU"
    if "kernel" in s and s <= {"kernel", "bias"}:
        rank = by["kernel"].ndim
        if rank == 4 and re.search("transpose|deconv", layer.name + " ".join(layer.weight_names), re.I):
            return "Conv2DTranspose"
        return {2: "Dense", 3: "Conv1D", 4: "Conv2D", 5: "Conv3D"}[rank]
    return None


def _bidirectional(layer: KLayer) -> bool:
    joined = " ".join(layer.weight_names)
    return "forward_" in joined and "backward_" in joined


def _unwrap(klass, conf):
    while klass in ("TimeDistributed", "Bidirectional") and conf and "layer" in conf:
        inner = conf["layer"]
        klass, conf = inner["class_name"], inner.get("config", {})
    return KERAS1_CLASSES.get(klass, klass), conf


def plan_layer(layer: KLayer, klass: Optional[str], conf: Optional[dict], kf: KFile) -> Plan:
    roles = [role_of(w, kf.keras1) for w in layer.weight_names]
    if klass in MODEL_CLASSES or (klass is None and len({o for o, _, _ in roles}) > 1 and not _bidirectional(layer)):
        return _nested_plan(layer, roles, kf)
    bidir = klass == "Bidirectional" or (klass is None and _bidirectional(layer))
    klass, conf = _unwrap(klass, conf or {})
    if klass is None:
        klass = _infer_class(layer, roles)
        if klass is None:
            raise AssertionError(f"{layer.name}: cannot tell the Keras class from {layer.weight_names}")
    by = {r: a for (_, r, _), a in zip(roles, layer.arrays)}
    builder = _BUILDERS.get(klass)
    if builder is None:
        return _raw_plan(layer, "custom", klass, f"custom layer {klass}: arrays kept as they are")
    if klass in ("LSTM", "GRU", "SimpleRNN"):
        return builder(layer, roles, conf, bidir, kf, klass)
    return builder(layer, by, conf, kf, klass)


def _dense(layer, by, conf, kf, klass):
    k = by["kernel"]
    m = nn.Linear(k.shape[0], k.shape[1], bias="bias" in by)
    exp = {"weight": k.T}
    if "bias" in by:
        exp["bias"] = by["bias"]
    return Plan(layer.name, "mapped", "Dense", m, exp)


def _conv(layer, by, conf, kf, klass):
    k = by["kernel"]
    note = ""
    if klass == "Conv1D" and k.ndim == 4:
        # Keras 1 Convolution1D: (k, 1, in, out), or the Keras 1.1 layout (out, in, k, 1)
        legacy = k.shape[1] != 1 or ("nb_filter" in conf and k.shape[3] != conf["nb_filter"])
        k = (k.transpose(2, 3, 1, 0) if legacy else k)[:, 0]
        note = "Keras 1 4-D Conv1D kernel"
    elif conf.get("dim_ordering") == "th":
        k = k.transpose(tuple(range(2, k.ndim)) + (1, 0))  # (out, in, k...) -> (k..., in, out)
        note = "Keras 1 'th' kernel"
    rank = k.ndim - 2
    groups = int(conf.get("groups", 1) or 1)
    cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[rank - 1]
    m = cls(k.shape[-2] * groups, k.shape[-1], tuple(k.shape[:-2]), groups=groups, bias="bias" in by)
    exp = {"weight": _to_torch_conv(k)}
    if "bias" in by:
        exp["bias"] = by["bias"]
    return Plan(layer.name, "mapped", f"Conv{rank}D", m, exp, note)


def _conv_transpose(layer, by, conf, kf, klass):
    k = by["kernel"]
    if kf.keras1:  # Keras 1 Deconvolution2D: (kh, kw, in, out) ('tf') or (out, in, kh, kw) ('th')
        k = k.transpose(2, 3, 0, 1) if conf.get("dim_ordering") == "th" else k.transpose(0, 1, 3, 2)
    m = nn.ConvTranspose2d(k.shape[3], k.shape[2], tuple(k.shape[:2]), bias="bias" in by)
    exp = {"weight": k.transpose(3, 2, 0, 1)}  # (kh, kw, out, in) -> (in, out, kh, kw)
    if "bias" in by:
        exp["bias"] = by["bias"]
    return Plan(layer.name, "mapped", "Conv2DTranspose", m, exp)


def _depthwise(layer, by, conf, kf, klass):
    k = by["depthwise_kernel"]
    kh, kw, cin, dm = k.shape
    m = nn.Conv2d(cin, cin * dm, (kh, kw), groups=cin, bias="bias" in by)
    exp = {"weight": k.reshape(kh, kw, 1, cin * dm).transpose(3, 2, 0, 1)}
    if "bias" in by:
        exp["bias"] = by["bias"]
    return Plan(layer.name, "mapped", "DepthwiseConv2D", m, exp)


def _separable(layer, by, conf, kf, klass):
    """One Keras layer, two torch convolutions: raw load, then each half from a split copy."""
    plan = _raw_plan(layer, "separable", "SeparableConv2D", "depthwise Conv2d + 1x1 Conv2d (split copy)")
    idx = {role_of(w, kf.keras1)[1]: i for i, w in enumerate(layer.weight_names)}
    dw = KLayer(f"{layer.name}__depthwise", [layer.weight_names[idx["depthwise_kernel"]]], [by["depthwise_kernel"]])
    keep = [i for r, i in idx.items() if r in ("pointwise_kernel", "bias")]
    pw = KLayer(f"{layer.name}__pointwise", [layer.weight_names[i] for i in keep], [layer.arrays[i] for i in keep])
    plan.parts = [_depthwise(dw, {"depthwise_kernel": by["depthwise_kernel"]}, {}, kf, "DepthwiseConv2D")]
    pk = by["pointwise_kernel"]
    pw_plan = _conv(pw, {"kernel": pk, **({"bias": by["bias"]} if "bias" in by else {})}, {}, kf, "Conv2D")
    plan.parts.append(pw_plan)
    plan.part_layers = [dw, pw]
    return plan


def _batchnorm(layer, by, conf, kf, klass):
    c = by["moving_mean"].shape[0]
    affine = "gamma" in by and "beta" in by
    m = nn.BatchNorm1d(c, eps=float(conf.get("epsilon", 1e-3)), affine=affine)
    exp = {"running_mean": by["moving_mean"], "running_var": by["moving_variance"]}
    if affine:
        exp.update(weight=by["gamma"], bias=by["beta"])
    order = [role_of(w, kf.keras1)[1] for w in layer.weight_names]
    note = "BN file order beta, gamma (TF 1.x tf.layers)" if order[:2] == ["beta", "gamma"] else ""
    if any(w.split(":")[0].endswith(("running_std", "running_std_2")) for w in layer.weight_names):
        note = "Keras 1 BN running_std (= variance)"
    return Plan(layer.name, "mapped", "BatchNormalization", m, exp, note)


def _layernorm(layer, by, conf, kf, klass):
    d = by["gamma"].shape[0]
    m = nn.LayerNorm(d, eps=float(conf.get("epsilon", 1e-3)), bias="beta" in by)
    exp = {"weight": by["gamma"]}
    if "beta" in by:
        exp["bias"] = by["beta"]
    return Plan(layer.name, "mapped", "LayerNormalization", m, exp)


def _embedding(layer, by, conf, kf, klass):
    e = by["embeddings"]
    return Plan(layer.name, "mapped", "Embedding", nn.Embedding(*e.shape), {"weight": e})


def _prelu(layer, by, conf, kf, klass):
    a = by["alpha"]
    c = a.shape[-1]
    if a.size != c:  # one slope per element: torch keeps one per channel at most
        return Plan(layer.name, "prelu_elem", "PReLU", nn.PReLU(c), {}, f"alpha {a.shape}: one slope per element")
    return Plan(layer.name, "mapped", "PReLU", nn.PReLU(c), {"weight": a.reshape(-1)})


def _mha(layer, by, conf, kf, klass):
    names = [w.split(":")[0].split("/") for w in layer.weight_names]
    arrays = {"/".join(n[-2:]): a for n, a in zip(names, layer.arrays)}
    q, k, v, o = (arrays[f"{p}/kernel"] for p in ("query", "key", "value", "attention_output"))
    e, h, d = q.shape
    representable = h * d == e and k.shape == v.shape == q.shape and o.shape == (h, d, e) and len(layer.arrays) == 8
    if not representable:
        return _raw_plan(
            layer, "mha", "MultiHeadAttention", f"key_dim {d} x {h} heads != embed_dim {e}: no nn.MultiheadAttention"
        )
    m = nn.MultiheadAttention(e, h, batch_first=True)
    exp = {
        "in_proj_weight": np.concatenate([w.reshape(e, h * d).T for w in (q, k, v)]),
        "in_proj_bias": np.concatenate([arrays[f"{p}/bias"].ravel() for p in ("query", "key", "value")]),
        "out_proj.weight": o.reshape(h * d, e).T,
        "out_proj.bias": arrays["attention_output/bias"],
    }
    return Plan(layer.name, "mapped", "MultiHeadAttention", m, exp)


def _gru_swap(m: np.ndarray) -> np.ndarray:
    """Keras gate blocks z, r, h -> torch r, z, n along axis 0."""
    u = m.shape[0] // 3
    return np.concatenate([m[u : 2 * u], m[:u], m[2 * u :]])


def _recurrent(layer, roles, conf, bidir, kf, klass):
    dirs = [("forward_", ""), ("backward_", "_reverse")] if bidir else [("", "")]
    exp, notes, refused = {}, [], False
    for marker, sfx in dirs:
        sel = [(r, g, a) for w, (_, r, g), a in zip(layer.weight_names, roles, layer.arrays) if marker in w]
        per_gate = {(r, g): a for r, g, a in sel if g}
        if per_gate:  # Keras 1: W, U, b per gate (LSTM i, c, f, o; GRU z, r, h)
            gates = "ifco" if klass == "LSTM" else "zrh"
            kernel = np.concatenate([per_gate["kernel", g] for g in gates], axis=1)
            rec = np.concatenate([per_gate["recurrent_kernel", g] for g in gates], axis=1)
            bias = np.concatenate([per_gate["bias", g] for g in gates]) if ("bias", gates[0]) in per_gate else None
            notes.append("Keras 1 per-gate W/U/b")
        else:
            by = {r: a for r, _, a in sel}
            kernel, rec, bias = by["kernel"], by["recurrent_kernel"], by.get("bias")
        u = rec.shape[0]
        if klass == "GRU":
            if bias is not None and bias.shape == (3 * u,):  # one bias: reset_after=False
                refused = True
                continue
            exp[f"weight_ih_l0{sfx}"] = _gru_swap(kernel.T)
            exp[f"weight_hh_l0{sfx}"] = _gru_swap(rec.T)
            if bias is not None:
                exp[f"bias_ih_l0{sfx}"] = _gru_swap(bias[0])
                exp[f"bias_hh_l0{sfx}"] = _gru_swap(bias[1])
        else:
            exp[f"weight_ih_l0{sfx}"] = kernel.T
            exp[f"weight_hh_l0{sfx}"] = rec.T
            if bias is not None:
                exp[f"bias_ih_l0{sfx}+bias_hh_l0{sfx}"] = bias
    cls = {"LSTM": nn.LSTM, "GRU": nn.GRU, "SimpleRNN": nn.RNN}[klass]
    m = cls(kernel.shape[0], u, batch_first=True, bidirectional=bidir, bias=bias is not None)
    if conf.get("recurrent_activation", conf.get("inner_activation")) == "hard_sigmoid":
        notes.append("hard_sigmoid: weights exact, nn outputs differ")
    name = ("Bidirectional " if bidir else "") + klass
    if refused:
        return Plan(layer.name, "gru_v1", name, m, {}, "GRU reset_after=False: bias (3u,)")
    return Plan(layer.name, "mapped", name, m, exp, "; ".join(dict.fromkeys(notes)))


_BUILDERS: dict = {
    "Dense": _dense,
    "Conv1D": _conv,
    "Conv2D": _conv,
    "Conv3D": _conv,
    "Conv2DTranspose": _conv_transpose,
    "DepthwiseConv2D": _depthwise,
    "SeparableConv2D": _separable,
    "BatchNormalization": _batchnorm,
    "LayerNormalization": _layernorm,
    "Embedding": _embedding,
    "PReLU": _prelu,
    "MultiHeadAttention": _mha,
    "LSTM": _recurrent,
    "GRU": _recurrent,
    "SimpleRNN": _recurrent,
}


def _nested_plan(layer: KLayer, roles, kf: KFile) -> Plan:
    """A nested model's group: raw load, plus one real torch module per sub-layer (split copy).

    The group lists all sub-layers' trainable weights, then all non-trainable ones; grouping by the
    owner in each weight's name (order kept) restores each sub-layer's own Keras order.
    """
    order, owned = [], {}
    for i, (owner, _, _) in enumerate(roles):
        if owner not in owned:
            order.append(owner)
            owned[owner] = []
        owned[owner].append(i)
    plan = _raw_plan(layer, "nested", "Model", f"{len(order)} sub-layers")
    for owner in order:
        sub = KLayer(owner, [layer.weight_names[i] for i in owned[owner]], [layer.arrays[i] for i in owned[owner]])
        klass, conf = kf.leaf_configs.get(owner, (None, None))
        part = plan_layer(sub, klass, conf, kf)
        assert part.kind == "mapped", f"{layer.name}/{owner}: sub-layer is {part.kind}"
        plan.parts.append(part)
        plan.part_layers.append(sub)
    plan.klass = "Model[" + ",".join(sorted({p.klass for p in plan.parts})) + "]"
    return plan


def plan_file(kf: KFile) -> list:
    plans = []
    for layer in kf.layers:
        klass, conf = kf.configs.get(layer.name, (None, None))
        plans.append(plan_layer(layer, klass, conf, kf))
    return plans


# ------------------------------------------------------------------------------------- checking
def _container(plans) -> tuple:
    root = nn.Module()
    names = {}
    for i, p in enumerate(plans):
        root.add_module(f"m{i}", p.module)
        names[f"m{i}"] = p.name
    return root, names


def _check_tensors(plan: Plan) -> None:
    state = plan.module.state_dict()
    seen = set()
    for key, want in plan.expected.items():
        parts = key.split("+")
        got = sum(state[k] for k in parts)
        seen.update(parts)
        want = torch.from_numpy(np.ascontiguousarray(want))
        assert got.shape == want.shape, f"{plan.name}/{key}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        assert got.dtype == want.dtype, f"{plan.name}/{key}: dtype {got.dtype} != {want.dtype}"
        assert torch.equal(got, want), (
            f"{plan.name}/{key}: values differ from the file (max {(got - want).abs().max()})"
        )
    left = set(state) - seen - {"num_batches_tracked"}
    assert not left, f"{plan.name}: torch tensors {sorted(left)} were not checked"


def _load_and_check(plans, path) -> None:
    """Load ``plans`` from ``path`` by name; every one must load and equal the file arrays."""
    root, names = _container(plans)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tkio.TorchKerasIOWarning)
        report = tkio.load_weights(root, path, by_name=True, layer_names=names)
    assert sorted(report.loaded) == sorted(names.values())
    assert report.missing == [] and report.mismatched == []
    for p in plans:
        _check_tensors(p)
    return report


def _write_split(path: Path, kf: KFile, layers) -> None:
    """A legacy weights file with one group per (sub-)layer, in the source file's dialect."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode("utf-8") for layer in layers]
        if kf.keras_version is not None:
            f.attrs["keras_version"] = kf.keras_version.encode("utf-8")
        if kf.backend is not None:
            f.attrs["backend"] = kf.backend.encode("utf-8")
        for layer in layers:
            g = f.create_group(layer.name)
            g.attrs["weight_names"] = [w.encode("utf-8") for w in layer.weight_names]
            for w, a in zip(layer.weight_names, layer.arrays):
                g.create_dataset(w, data=a)


def _check_refused(plan: Plan, path: Path) -> None:
    root, names = _container([plan])
    before = {k: v.clone() for k, v in plan.module.state_dict().items()}
    if plan.kind == "gru_v1":
        with pytest.raises(tkio.UnsupportedLayerError, match="reset_after=False"):
            tkio.load_weights(root, path, by_name=True, layer_names=names)
    elif plan.kind == "prelu_elem":
        with pytest.raises(tkio.WeightMismatchError):
            tkio.load_weights(root, path, by_name=True, layer_names=names)
        with pytest.warns(tkio.TorchKerasIOWarning):
            report = tkio.load_weights(root, path, by_name=True, skip_mismatch=True, layer_names=names)
        c = plan.module.weight.shape[0]
        file_shape = tuple(_layer_shapes(path, plan.name)[0])
        assert report.loaded == []
        assert report.mismatched == [tkio.Mismatch(plan.name, "alpha", file_shape, (c,))]
    else:  # pragma: no cover
        raise AssertionError(plan.kind)
    for k, v in plan.module.state_dict().items():
        assert torch.equal(v, before[k]), f"{plan.name}: refused load changed {k}"


def _layer_shapes(path: Path, name: str) -> list:
    return next(layer.shapes for layer in read_file(path).layers if layer.name == name)


# ------------------------------------------------------------------------------------------ tests
ALL_FILES = sorted(MANIFEST)


def test_manifest_matches_files():
    assert sorted(p.name for p in FILES.iterdir()) == ALL_FILES
    assert len(ALL_FILES) == 46
    assert set(SPECIAL) | KERAS3_WEIGHTS | NO_WEIGHTS <= set(ALL_FILES)


@pytest.mark.parametrize("fname", ALL_FILES)
def test_corpus_file(fname, tmp_path):
    path = FILES / fname
    if fname in KERAS3_WEIGHTS:
        with h5py.File(path, "r") as h5:
            assert {"layers", "vars"} <= set(h5) and "layer_names" not in h5.attrs
        # read by the Keras 3 store reader (values: tests/test_keras3_formats.py); an unrelated module gets nothing
        report = tkio.load_weights(nn.Sequential(nn.Linear(2, 2)), path, by_name=True)
        assert report.loaded == [] and report.missing == ["0"] and len(report.unexpected) == 10
        return

    kf = read_file(path)
    plans = plan_file(kf)
    assert {p.name: p.kind for p in plans if p.kind != "mapped"} == SPECIAL.get(fname, {})
    if fname in NO_WEIGHTS:
        assert plans == []

    # 1. the file as it is: everything with a torch module loads, refused layers are left over
    loadable = [p for p in plans if p.kind not in REFUSED_KINDS]
    report = _load_and_check(loadable, path)
    assert sorted(report.unexpected) == sorted(p.name for p in plans if p.kind in REFUSED_KINDS)

    # 2. refused layers: the documented error, module untouched
    for p in plans:
        if p.kind in REFUSED_KINDS:
            _check_refused(p, path)

    # 3. nested models and separable convolutions: each sub-layer into its real torch module
    for i, p in enumerate(plans):
        if p.parts:
            split = tmp_path / f"split_{i}.h5"
            _write_split(split, kf, p.part_layers)
            _load_and_check(p.parts, split)


# ------------------------------------------------------------------- a table for the docs (manual)
def corpus_table() -> str:  # pragma: no cover - run by hand: python tests/test_corpus_weights.py
    labels = {
        "nested": "nested model → raw group; sub-layers from a split copy",
        "separable": "SeparableConv2D → raw group; depthwise + 1x1 Conv2d from a split copy",
        "custom": "custom layer → raw (generic adapter)",
        "mha": "MultiHeadAttention key_dim≠E/H → raw (generic adapter)",
        "gru_v1": "GRU reset_after=False → UnsupportedLayerError",
        "prelu_elem": "per-element PReLU alphas → WeightMismatchError / mismatched",
    }
    rows = ["| file | Keras | weighted layers | result |", "|---|---|---|---|"]
    for fname in ALL_FILES:
        version = MANIFEST[fname]["keras_version"].replace("(none)", "1.x")
        if fname in KERAS3_WEIGHTS:
            rows.append(f"| {fname} | 3 | – | refused: Keras 3 `.weights.h5` → FileFormatError |")
            continue
        plans = plan_file(read_file(FILES / fname))
        kinds: dict = {}
        for p in plans:
            kinds.setdefault(p.kind, []).append(p)
        parts = []
        if "mapped" in kinds:
            classes = sorted({p.klass for p in kinds["mapped"]})
            parts.append(f"{len(kinds['mapped'])} loaded ({', '.join(classes)})")
        for kind, label in labels.items():
            if kind in kinds:
                text = f"{len(kinds[kind])} {label}"
                subs = [q for p in kinds[kind] for q in p.parts]
                if subs:
                    text += f" ({len(subs)}: {', '.join(sorted({q.klass for q in subs}))})"
                parts.append(text)
        notes = sorted({q.note for p in plans for q in [p, *p.parts] if q.note and q.kind == "mapped"})
        result = "; ".join(parts) or "no weights (TFOpLambda only)"
        if notes:
            result += " — " + "; ".join(notes)
        rows.append(f"| {fname} | {version} | {len(plans)} | {result} |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover
    print(corpus_table())
