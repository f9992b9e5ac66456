"""Recurrent layers' weights: nn.RNN / nn.LSTM / nn.GRU <-> SimpleRNN / LSTM / GRU (+ Bidirectional).

A torch module with ``num_layers=N`` is N Keras layers; ``bidirectional=True`` makes each a
``Bidirectional`` whose weights are the forward cell's then the backward cell's.

* LSTM gates are i, f, c, o on both sides; GRU gates are z, r, h in Keras and r, z, n in torch
  (the first two blocks swap). torch GRU is Keras ``GRU(reset_after=True)``: bias ``(2, 3u)``.
* Keras has one bias where torch LSTM/RNN have two: we write ``b_ih + b_hh`` for Keras and keep
  both torch biases as extras, used again when they still add up to the Keras bias.
* Keras ``GRU(reset_after=False)`` (a (3u,) bias) maps to modules with ``reset_after = False``
  (:class:`KerasGRU`): ``b_ih + b_hh`` is the Keras bias; plain ``nn.GRU`` cannot compute it.
* Older layouts are normalised on load: Keras 1 per-gate LSTM (12 arrays, gates i, c, f, o) and
  GRU (9 arrays), and CuDNNLSTM / CuDNNGRU (bias of 8u / 6u), as tf-keras converts them.
"""

from __future__ import annotations

import torch

from torchkeras_io._layers.base import Adapter, KerasLayer, combine, direct_tensors
from torchkeras_io._layers.recurrent.modules import one_bias, resets_after, rnn_kind
from torchkeras_io._layers.registry import adapts
from torchkeras_io._tensors import Lazy, bits_equal
from torchkeras_io.errors import UnsupportedLayerError


def _gru_swap(t: torch.Tensor) -> torch.Tensor:
    """z, r, h <-> r, z, n along the first axis (its own inverse)."""
    u = t.shape[0] // 3
    return torch.cat([t[u : 2 * u], t[:u], t[2 * u :]])


def _expected_names(module) -> set:
    names = set()
    for k in range(module.num_layers):
        for sfx in ("", "_reverse")[: 2 if module.bidirectional else 1]:
            names |= {f"weight_ih_l{k}{sfx}", f"weight_hh_l{k}{sfx}"}
            if module.bias:
                names |= {f"bias_ih_l{k}{sfx}"} | (set() if one_bias(module) else {f"bias_hh_l{k}{sfx}"})
    return names


class _Stacked:
    """Reader of a Keras weight that only moves the elements of several torch tensors around
    (``fn(*parts)``, e.g. the GRU bias ``stack([b_ih, b_hh])``): ``parts`` and ``fn`` let the
    optimizer-state mapping find which parameter element each Keras element is."""

    def __init__(self, parts: list, fn) -> None:
        self.parts, self.fn = parts, fn

    def __call__(self) -> torch.Tensor:
        return self.fn(*[p.read() for p in self.parts])


def _cudnn_kernel(k: torch.Tensor, gates: int) -> torch.Tensor:
    """tf-keras ``transform_kernels(k, lambda b: b.T.reshape(b.shape, order='F'))``."""
    u = k.shape[1] // gates
    blocks = [k[:, g * u : (g + 1) * u] for g in range(gates)]
    return torch.cat([b.reshape(u, b.shape[0]).t() for b in blocks], dim=1)


def _cudnn_recurrent(k: torch.Tensor, gates: int) -> torch.Tensor:
    u = k.shape[1] // gates
    return torch.cat([k[:, g * u : (g + 1) * u].t() for g in range(gates)], dim=1)


@adapts
class RecurrentAdapter(Adapter):
    family = "recurrent"

    def match(self, module):
        kind = rnn_kind(module)
        if kind is None or getattr(module, "proj_size", 0):
            return False
        return set(direct_tensors(module)) == _expected_names(module)

    # --------------------------------------------------------------------------- export
    def _direction(self, module, k, sfx, prefix):
        cls, base, gates = rnn_kind(module)
        cell = f"{prefix}{base}_cell/"
        reorder = _gru_swap if gates == 3 else (lambda t: t)
        w_ih = getattr(module, f"weight_ih_l{k}{sfx}")
        w_hh = getattr(module, f"weight_hh_l{k}{sfx}")
        weights = [
            Lazy.of(cell + "kernel", w_ih, lambda w: reorder(w).t()),
            Lazy.of(cell + "recurrent_kernel", w_hh, lambda w: reorder(w).t()),
        ]
        extras = []
        if module.bias and one_bias(module):  # b_hh is a zero buffer: the Keras bias is b_ih
            weights.append(Lazy.of(cell + "bias", getattr(module, f"bias_ih_l{k}{sfx}"), reorder))
        elif module.bias:
            b_ih = Lazy.of(f"bias_ih_l{k}{sfx}", getattr(module, f"bias_ih_l{k}{sfx}"))
            b_hh = Lazy.of(f"bias_hh_l{k}{sfx}", getattr(module, f"bias_hh_l{k}{sfx}"))
            n = b_ih.shape[0]
            if gates == 3 and not resets_after(module):  # one (3u,) bias: both torch biases add
                bias = combine(cell + "bias", (n,), b_ih.dtype, [b_ih, b_hh], lambda a, b: reorder(a + b))
                extras = [b_ih, b_hh]
            elif gates == 3:
                bias = Lazy(cell + "bias", (2, n), b_ih.dtype,
                            _Stacked([b_ih, b_hh], lambda a, b: torch.stack([reorder(a), reorder(b)])))  # fmt: skip
            else:
                bias = combine(cell + "bias", (n,), b_ih.dtype, [b_ih, b_hh], lambda a, b: a + b)
                extras = [b_ih, b_hh]
            weights.append(bias)
        return weights, extras

    def export(self, module, ctx=None):
        cls, base, _ = rnn_kind(module)
        layers = []
        for k in range(module.num_layers):
            if module.bidirectional:
                fw, fe = self._direction(module, k, "", f"forward_{base}/")
                bw, be = self._direction(module, k, "_reverse", f"backward_{base}/")
                layers.append(KerasLayer("Bidirectional", fw + bw, fe + be))
            else:
                w, e = self._direction(module, k, "", "")
                layers.append(KerasLayer(cls, w, e))
        return layers

    # --------------------------------------------------------------------------- import
    def normalize(self, module, index, weights, extras, info):
        dirs = 2 if module.bidirectional else 1
        if len(weights) % dirs:
            return weights, extras
        half = len(weights) // dirs
        out, extras = [], dict(extras)
        for d, sfx in enumerate(("", "_reverse")[:dirs]):
            part, new_extras = self._normalize_direction(module, index, weights[d * half : (d + 1) * half], sfx, info)
            out += part
            extras.update(new_extras)
        return out, extras

    def _normalize_direction(self, module, k, w, sfx, info):
        cls, _, gates = rnn_kind(module)
        if gates == 4 and len(w) == 12:  # Keras 1 LSTM: W,U,b for gates i, c, f, o
            w = [
                self._cat([w[0], w[6], w[3], w[9]]),
                self._cat([w[1], w[7], w[4], w[10]]),
                self._cat([w[2], w[8], w[5], w[11]]),
            ]
        elif gates == 3 and len(w) == 9:  # Keras 1 GRU: W,U,b for gates z, r, h
            w = [self._cat([w[0], w[3], w[6]]), self._cat([w[1], w[4], w[7]]), self._cat([w[2], w[5], w[8]])]
        if len(w) != 3 or len(w[1].shape) != 2:
            return w, {}
        u = w[1].shape[0]
        kernel, rec, bias = w
        if gates > 1 and bias.shape == (2 * gates * u,):  # CuDNNLSTM / CuDNNGRU
            kernel = kernel.map(lambda a: _cudnn_kernel(a, gates))
            rec = rec.map(lambda a: _cudnn_recurrent(a, gates))
            if gates == 3:
                return [kernel, rec, bias.map(lambda b: b.reshape(2, -1), (2, 3 * u))], {}
            halves = {
                f"bias_ih_l{k}{sfx}": bias.map(lambda b: b[: 4 * u], (4 * u,)),
                f"bias_hh_l{k}{sfx}": bias.map(lambda b: b[4 * u :], (4 * u,)),
            }
            return [kernel, rec, bias.map(lambda b: b[: 4 * u] + b[4 * u :], (4 * u,))], halves
        if gates == 3 and bias.shape == (3 * u,) and module.bias and resets_after(module):
            raise UnsupportedLayerError(
                "GRU with reset_after=False (the Keras 1 / Keras <= 2.2 default) has no torch.nn.GRU "
                "equivalent; build the model with torchkeras_io.load_model / model_from_json instead",
                filepath=info.filepath,
            )
        return [kernel, rec, bias], {}

    @staticmethod
    def _cat(parts):
        shape = tuple(parts[0].shape[:-1]) + (sum(p.shape[-1] for p in parts),)
        return combine(parts[0].name, shape, parts[0].dtype, parts, lambda *a: torch.cat(a, dim=-1))

    def load(self, module, index, weights, extras):
        _, _, gates = rnn_kind(module)
        dirs = 2 if module.bidirectional else 1
        per = len(weights) // dirs
        out = {}
        reorder = _gru_swap if gates == 3 else (lambda t: t)
        for d, sfx in enumerate(("", "_reverse")[:dirs]):
            w = weights[d * per : (d + 1) * per]
            out[f"weight_ih_l{index}{sfx}"] = w[0].map(lambda a: reorder(a.t()))
            out[f"weight_hh_l{index}{sfx}"] = w[1].map(lambda a: reorder(a.t()))
            if not module.bias:
                continue
            n_ih, n_hh = f"bias_ih_l{index}{sfx}", f"bias_hh_l{index}{sfx}"
            if one_bias(module):  # the whole Keras bias in b_ih; b_hh stays the zero buffer
                out[n_ih] = w[2].map(reorder)
            elif gates == 3 and not resets_after(module):  # Keras bias (3u,): b_ih, with b_hh = 0
                out[n_ih], out[n_hh] = _split_bias(w[2].map(reorder), extras.get(n_ih), extras.get(n_hh))
            elif gates == 3:
                out[n_ih] = w[2].map(lambda b: reorder(b[0]))
                out[n_hh] = w[2].map(lambda b: reorder(b[1]))
            else:
                out[n_ih], out[n_hh] = _split_bias(w[2], extras.get(n_ih), extras.get(n_hh))
        return out


def _split_bias(bias: Lazy, e_ih, e_hh):
    """torch's two biases: the stored extras when they still sum to the Keras bias, else (bias, 0)."""

    def pick():
        b = bias.read()
        if e_ih is not None and e_hh is not None and e_ih.shape == bias.shape == e_hh.shape:
            i, h = e_ih.read(), e_hh.read()
            if i.dtype == h.dtype == b.dtype and bits_equal(i + h, b):
                return i, h
        return b, torch.zeros_like(b)

    return (
        Lazy(bias.name, bias.shape, bias.dtype, lambda: pick()[0]),
        Lazy(bias.name, bias.shape, bias.dtype, lambda: pick()[1]),
    )
