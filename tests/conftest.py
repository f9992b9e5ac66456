"""Shared test helpers. Append only; keep it small."""

import os

# Keras 3 reads its backend once, at first import: it must be torch before anything imports keras.
os.environ["KERAS_BACKEND"] = "torch"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def _make_torchvision_importable() -> None:
    """Let ``import torchvision`` work beside the CPU torch pin.

    The torchvision wheels on the package index are built against CUDA torch: with our CPU build
    their compiled operators (``torchvision::nms``, ``roi_align``, ...) cannot load, and importing
    torchvision then fails in ``torchvision/_meta_registrations.py`` ("operator torchvision::nms
    does not exist") because it registers fake kernels for operators that were never defined.
    Lightning imports torchvision when it is installed, so this hits more than the zoo tests.
    The classification models never call these detection operators: defining their schemas (no
    kernels) lets the import finish, and a call to one of them would still fail loudly. Where the
    compiled library does load (a matching torch), nothing is defined here.
    """
    import glob
    import importlib.util

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    try:
        torch.ops.load_library(glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so"))[0])
        return
    except (OSError, RuntimeError, IndexError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    for schema in _TORCHVISION_SCHEMAS:
        lib.define(schema)
    _KEEP_ALIVE.append(lib)  # a Library object unregisters its definitions when collected


_KEEP_ALIVE: list = []
#: the operator schemas of torchvision's csrc (0.28), for which it registers fake kernels at import
_TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "qroi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, bool aligned) -> Tensor",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, "
    "SymInt width) -> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, "
    "SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, "
    "SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
    "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, "
    "SymInt groups, SymInt offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
)

_make_torchvision_importable()

#: the oracles of a parametrized interop test
BOTH = ("tf_keras", "keras3")
K3 = ("keras3",)
TFK = ("tf_keras",)
#: warnings the oracles print while writing and reading legacy HDF5 (``pytestmark = [*ORACLE_WARNINGS, ...]``)
ORACLE_WARNINGS = [
    pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def _np(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def assert_close_rel(actual, expected, rtol) -> float:
    """max|actual - expected| <= rtol * max|expected| (numpy arrays or torch tensors); returns that ratio."""
    a, e = _np(actual), _np(expected)
    assert a.shape == e.shape, f"shape {a.shape} != expected {e.shape}"
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    err = float(np.max(np.abs(a - e))) if e.size else 0.0
    assert scale > 0, "reference output is all zeros: the comparison would prove nothing"
    assert err <= rtol * scale, f"max|a-b| = {err:.3g} > {rtol:g} * max|ref| ({scale:.3g}); rel {err / scale:.3g}"
    return err / scale


def record_zoo(table: str, row: str, column: str, rel_error: float) -> None:
    """Note a zoo case's measured error for ``tools/zoo_table.py``, which renders ``docs/zoo.md`` from
    what the tests themselves measured (only when it sets ``TKIO_ZOO_RECORD``; a no-op otherwise)."""
    path = os.environ.get("TKIO_ZOO_RECORD")
    if path:
        import json

        with open(path, "a") as f:
            f.write(json.dumps({"table": table, "row": row, "column": column, "rel_error": rel_error}) + "\n")


def keras_module(flavor: str):
    """The oracle: tf_keras ("tf_keras") or Keras 3 on its torch backend ("keras3")."""
    if flavor == "tf_keras":
        return pytest.importorskip("tf_keras")
    keras = pytest.importorskip("keras")
    assert keras.backend.backend() == "torch", "keras was imported before conftest set KERAS_BACKEND=torch"
    return keras


def as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def assert_outputs_close(got, ref, rtol) -> None:
    """:func:`assert_close_rel` for each output of a model of one or several outputs, naming the one that differs."""
    got, ref = as_list(got), as_list(ref)
    assert len(got) == len(ref), f"{len(got)} outputs, expected {len(ref)}"
    for i, (g, r) in enumerate(zip(got, ref)):
        try:
            assert_close_rel(np.asarray(g), np.asarray(r), rtol)
        except AssertionError as exc:
            raise AssertionError(f"output #{i}: {exc}") from None


def randomize_keras_weights(model, rng: np.random.Generator) -> None:
    """Non-trivial weights for a Keras model: positive variances, gammas of both signs, the rest N(0, 0.5)."""
    values = []
    for w, v in zip(model.weights, model.get_weights()):
        if "variance" in w.name:
            values.append(rng.uniform(0.3, 2.0, v.shape))
        elif "gamma" in w.name:
            values.append(rng.uniform(0.5, 1.5, v.shape) * rng.choice([-1, 1], v.shape))
        elif np.issubdtype(v.dtype, np.floating):
            values.append(rng.normal(0.0, 0.5, v.shape))
        else:
            values.append(v)
    model.set_weights([np.asarray(a, dtype=v.dtype) for a, v in zip(values, model.get_weights())])


def keras_then_ours(model, feed, path) -> tuple:
    """(Keras's outputs on ``feed``, ours after ``model.save(path)`` and ``tkio.load_model``), as lists."""
    import torchkeras_io as tkio

    ref = as_list(model.predict(feed, verbose=0))
    model.save(path)
    got = as_list(tkio.load_model(path, compile=False).predict(feed))
    assert len(got) == len(ref)
    return ref, got


def realistic_weights(module, calibration=None, seed: int = 0):
    """Random weights at a trained network's scale for a torch module; returns it in eval mode.

    torch's initial values (zero biases, betas, class tokens and position embeddings; unit gammas
    and layer scales; BatchNorm statistics 0 and 1) make those tensors identities or no-ops, so an
    export that drops, transposes or swaps them would still match. Here none is left constant:
    He-normal conv/linear kernels (LeCun for attention's ``in_proj_weight``, keeping softmax soft),
    BN/LN/GN gammas in [0.75, 1.25], all biases and betas N(0, 0.1), layer scales in [0.2, 1],
    other tensors used in forward (class token, position embedding, bias tables) N(0, 0.3).
    BatchNorm moving statistics: with ``calibration`` (an input batch), each BN's own input's in one
    eval pass, perturbed, so deep networks give O(1) outputs and the normalisation is neither
    vanishing nor the identity; without, means N(0, 0.1) and variances in [0.5, 1.5].
    """
    import math

    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)

    def rand(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    def calibrate(bn, args):  # a forward pre-hook: the statistics of the BN's input at inference
        x = args[0]
        dims = [d for d in range(x.dim()) if d != 1]
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        bn.running_mean.copy_(mean + 0.05 * var.sqrt() * torch.randn(mean.shape, generator=g))
        bn.running_var.copy_(var * torch.exp(0.1 * torch.randn(var.shape, generator=g)))

    with torch.no_grad():
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                if isinstance(m, norms) and name == "weight":
                    p.copy_(rand(p.shape, 0.75, 1.25))
                elif name.endswith("bias"):
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
                elif name in ("weight", "in_proj_weight") and p.dim() >= 2:
                    gain = 2.0 if name == "weight" else 1.0
                    p.copy_(torch.randn(p.shape, generator=g) * math.sqrt(gain / p[0].numel()))
                elif "scale" in name:
                    p.copy_(rand(p.shape, 0.2, 1.0))
                else:
                    p.copy_(0.3 * torch.randn(p.shape, generator=g))
            if calibration is None and isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(rand(m.running_var.shape, 0.5, 1.5))
        if calibration is not None:
            bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            # eval mode, so downstream layers calibrate on what upstream ones give at inference (a
            # train-mode pass normalises with batch statistics: perturbed afterwards, the drift grows
            # through deep networks with squeeze-excitation gates, efficientnet's logits 100x)
            hooks = [bn.register_forward_pre_hook(calibrate) for bn in bns]
            try:
                module.eval()(calibration)
            finally:
                for h in hooks:
                    h.remove()
    return module.eval()


def bits_equal(a, b) -> bool:
    """Bitwise equality of two tensors (NaNs with equal payloads compare equal); the tests' own, so
    that checking what the library wrote does not depend on the library."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point:
        as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        a, b = a.contiguous().view(as_int), b.contiguous().view(as_int)
    return torch.equal(a, b)
