"""Recurrent layers: nn.RNN / nn.LSTM / nn.GRU <-> SimpleRNN / LSTM / GRU (+ Bidirectional).

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

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from torchkeras_io._keras.config import MODEL_CLASSES, LayerDef
from torchkeras_io._layers.activation import activation_module
from torchkeras_io._layers.base import Adapter, KerasLayer, combine, direct_tensors
from torchkeras_io._layers.registry import BUILDERS, Built, WeightSource, builds, cfg_int_tuple, exports, unsupported
from torchkeras_io._tensors import Lazy, bits_equal
from torchkeras_io.errors import UnsupportedLayerError

_KINDS = {nn.LSTM: ("LSTM", "lstm", 4), nn.GRU: ("GRU", "gru", 3), nn.RNN: ("SimpleRNN", "simple_rnn", 1)}


def _kind(module):
    for cls, kind in _KINDS.items():
        if type(module) is cls or isinstance(module, cls):
            return kind
    return None


def _resets_after(module) -> bool:
    """False for a GRU module computing Keras's ``reset_after=False`` (one (3u,) Keras bias)."""
    return bool(getattr(module, "reset_after", True))


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
                names |= {f"bias_ih_l{k}{sfx}"} | (set() if _one_bias(module) else {f"bias_hh_l{k}{sfx}"})
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


class RecurrentAdapter(Adapter):
    family = "recurrent"

    def match(self, module):
        kind = _kind(module)
        if kind is None or getattr(module, "proj_size", 0):
            return False
        return set(direct_tensors(module)) == _expected_names(module)

    # --------------------------------------------------------------------------- export
    def _direction(self, module, k, sfx, prefix):
        cls, base, gates = _kind(module)
        cell = f"{prefix}{base}_cell/"
        reorder = _gru_swap if gates == 3 else (lambda t: t)
        w_ih = getattr(module, f"weight_ih_l{k}{sfx}")
        w_hh = getattr(module, f"weight_hh_l{k}{sfx}")
        weights = [
            Lazy.of(cell + "kernel", w_ih, lambda w: reorder(w).t()),
            Lazy.of(cell + "recurrent_kernel", w_hh, lambda w: reorder(w).t()),
        ]
        extras = []
        if module.bias and _one_bias(module):  # b_hh is a zero buffer: the Keras bias is b_ih
            weights.append(Lazy.of(cell + "bias", getattr(module, f"bias_ih_l{k}{sfx}"), reorder))
        elif module.bias:
            b_ih = Lazy.of(f"bias_ih_l{k}{sfx}", getattr(module, f"bias_ih_l{k}{sfx}"))
            b_hh = Lazy.of(f"bias_hh_l{k}{sfx}", getattr(module, f"bias_hh_l{k}{sfx}"))
            n = b_ih.shape[0]
            if gates == 3 and not _resets_after(module):  # one (3u,) bias: both torch biases add
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
        cls, base, _ = _kind(module)
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
        cls, _, gates = _kind(module)
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
        if gates == 3 and bias.shape == (3 * u,) and module.bias and _resets_after(module):
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
        _, _, gates = _kind(module)
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
            if _one_bias(module):  # the whole Keras bias in b_ih; b_hh stays the zero buffer
                out[n_ih] = w[2].map(reorder)
            elif gates == 3 and not _resets_after(module):  # Keras bias (3u,): b_ih, with b_hh = 0
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


# ================================================================================ config -> torch
#
# ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` compute Keras's LSTM, GRU(reset_after=True) and
# SimpleRNN(tanh | relu) exactly, and are used as they are. Other activations (the old default
# ``hard_sigmoid`` among them) and GRU(reset_after=False) use :class:`KerasLSTM`, :class:`KerasGRU`
# and :class:`KerasSimpleRNN`: subclasses with the same parameters (so the adapter above loads
# them) whose forward is a time loop. :class:`KerasRecurrent` adds the Keras layer around either:
# return_sequences / return_state, go_backwards, initial states, masks, Bidirectional merges.


def _activations(rnn) -> tuple:
    """(activation, recurrent activation) of a recurrent module, as callables."""
    act = getattr(rnn, "keras_activation", None)
    if act is not None:
        return act, rnn.keras_recurrent_activation
    if isinstance(rnn, nn.RNN):
        return (torch.relu if rnn.nonlinearity == "relu" else torch.tanh), None
    return torch.tanh, torch.sigmoid


def _scan(rnn, x, state: tuple, sfx: str = "", mask=None, zero_output: bool = False):
    """One direction of layer 0 over ``x`` (B, T, I) in the order given, Keras's way.

    Returns (outputs (B, T, u), final state tuple). Where ``mask`` (B, T) is False the state is
    kept and the output is the previous step's output (zeros before the first), or zeros with
    ``zero_output`` (Keras's ``zero_output_for_mask``).
    """
    _, kind, _ = _kind(rnn)
    u = rnn.hidden_size
    if x.is_meta:  # shape inference: no need to step through time
        return x.new_empty(x.shape[0], x.shape[1], u), tuple(x.new_empty(x.shape[0], u) for _ in state)
    act, ract = _activations(rnn)
    w_ih, w_hh = getattr(rnn, f"weight_ih_l0{sfx}"), getattr(rnn, f"weight_hh_l0{sfx}")
    b_ih = getattr(rnn, f"bias_ih_l0{sfx}") if rnn.bias else None
    b_hh = getattr(rnn, f"bias_hh_l0{sfx}") if rnn.bias else None
    xp = F.linear(x, w_ih, b_ih)  # input projections of every step at once
    reset_after = _resets_after(rnn)
    if kind == "gru" and not reset_after:  # Keras: one input-side bias; the reset gate acts before U_h
        if b_hh is not None:
            xp = xp + b_hh
        w_rz, w_n = w_hh[: 2 * u], w_hh[2 * u :]
    h = state[0]
    c = state[1] if kind == "lstm" else None
    prev = torch.zeros_like(h)
    outs = []
    for t in range(x.shape[1]):
        g = xp[:, t]
        c_new = None
        if kind == "lstm":
            z = g + F.linear(h, w_hh, b_hh)
            i, f, cc, o = z[:, :u], z[:, u : 2 * u], z[:, 2 * u : 3 * u], z[:, 3 * u :]
            c_new = ract(f) * c + ract(i) * act(cc)
            h_new = ract(o) * act(c_new)
        elif kind == "gru":
            if reset_after:
                gh = F.linear(h, w_hh, b_hh)
                r = ract(g[:, :u] + gh[:, :u])
                zg = ract(g[:, u : 2 * u] + gh[:, u : 2 * u])
                n = act(g[:, 2 * u :] + r * gh[:, 2 * u :])
            else:
                gh = F.linear(h, w_rz)
                r = ract(g[:, :u] + gh[:, :u])
                zg = ract(g[:, u : 2 * u] + gh[:, u:])
                n = act(g[:, 2 * u :] + F.linear(r * h, w_n))
            h_new = zg * h + (1 - zg) * n
        else:
            h_new = act(g + F.linear(h, w_hh, b_hh))
        if mask is None:
            out, h, c = h_new, h_new, c_new
        else:
            m = mask[:, t : t + 1]
            out = torch.where(m, h_new, torch.zeros_like(h_new) if zero_output else prev)
            h = torch.where(m, h_new, h)
            if c is not None:
                c = torch.where(m, c_new, c)
            prev = out
        outs.append(out)
    return torch.stack(outs, 1), ((h, c) if kind == "lstm" else (h,))


def _loop_forward(rnn, x, hx=None):
    """torch's recurrent API (one layer, either direction) computed by :func:`_scan`."""
    lstm = isinstance(rnn, nn.LSTM)
    batched = x.dim() == 3
    if not batched:
        x = x.unsqueeze(0)
        if hx is not None:
            hx = tuple(h.unsqueeze(1) for h in hx) if lstm else hx.unsqueeze(1)
    elif not rnn.batch_first:
        x = x.transpose(0, 1)
    dirs = 2 if rnn.bidirectional else 1
    if hx is None:
        zeros = x.new_zeros(dirs, x.shape[0], rnn.hidden_size)
        hx = (zeros, zeros) if lstm else zeros
    h0, c0 = hx if lstm else (hx, None)
    outs, hs, cs = [], [], []
    for d in range(dirs):
        seq, st = _scan(rnn, x.flip(1) if d else x, (h0[d], c0[d]) if lstm else (h0[d],), ("", "_reverse")[d])
        outs.append(seq.flip(1) if d else seq)
        hs.append(st[0])
        if lstm:
            cs.append(st[1])
    out, h = torch.cat(outs, -1), torch.stack(hs)
    c = torch.stack(cs) if lstm else None
    if batched and not rnn.batch_first:
        out = out.transpose(0, 1)
    if not batched:
        out, h, c = out.squeeze(0), h.squeeze(1), (c.squeeze(1) if lstm else None)
    return (out, (h, c)) if lstm else (out, h)


def _loop_init(module, activation, recurrent_activation):
    if module.num_layers != 1 or getattr(module, "proj_size", 0):
        raise ValueError(f"{type(module).__name__} has one layer and no projection")
    module.keras_activation = activation if activation is not None else nn.Tanh()
    module.keras_recurrent_activation = recurrent_activation if recurrent_activation is not None else nn.Sigmoid()


class KerasLSTM(nn.LSTM):
    """``nn.LSTM`` (one layer) with any Keras activation and recurrent activation (a time loop)."""

    def __init__(self, *args, activation=None, recurrent_activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        _loop_init(self, activation, recurrent_activation)

    def forward(self, input, hx=None):  # noqa: A002 - torch's name
        return _loop_forward(self, input, hx)


class KerasGRU(nn.GRU):
    """``nn.GRU`` (one layer) with any Keras activations, and Keras's ``reset_after=False`` variant.

    With ``reset_after=False`` the reset gate multiplies the previous state before the recurrent
    matmul (``n = act(W_in x + b_in + b_hn + W_hn (r * h))``) and Keras's single (3u,) bias is
    ``b_ih + b_hh``.
    """

    def __init__(self, *args, activation=None, recurrent_activation=None, reset_after: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        _loop_init(self, activation, recurrent_activation)
        self.reset_after = bool(reset_after)

    def forward(self, input, hx=None):  # noqa: A002
        return _loop_forward(self, input, hx)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", reset_after={self.reset_after}"


class KerasSimpleRNN(nn.RNN):
    """``nn.RNN`` (one layer) with any Keras activation (a time loop)."""

    def __init__(self, *args, activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        _loop_init(self, activation, None)

    def forward(self, input, hx=None):  # noqa: A002
        return _loop_forward(self, input, hx)


def _is_plain(rnn) -> bool:
    return type(rnn) in (nn.LSTM, nn.GRU, nn.RNN)


def _one_bias(rnn) -> bool:
    """True for a module made by :func:`keras_bias`: ``bias_hh_l*`` are zero buffers, not parameters."""
    return bool(getattr(rnn, "bias", False)) and "bias_hh_l0" in rnn._buffers


def keras_bias(rnn: nn.Module) -> nn.Module:
    """Give a recurrent module Keras's one bias per gate: Keras's LSTM, SimpleRNN and
    GRU(reset_after=False) have a single bias where torch adds ``b_ih + b_hh``.

    ``bias_hh_l*`` become zero buffers (non-persistent: ``state_dict`` holds exactly Keras's
    variables) and ``b_ih`` is the Keras bias, so the module's trainable parameters are Keras's
    variables one to one and an optimizer updates them as Keras does (two trainable biases would
    each take the full step). torch's kernels still run: they read the buffers like parameters.
    GRU(reset_after=True) keeps both biases: Keras has both too (its (2, 3u) bias)."""
    if not rnn.bias or _one_bias(rnn):
        return rnn
    for name in [n for n in rnn._parameters if n.startswith("bias_hh_l")]:
        value = rnn._parameters.pop(name).detach()
        rnn.register_buffer(name, torch.zeros_like(value), persistent=False)
    rnn._init_flat_weights()  # torch's kernels take the tensors from this list
    return rnn


def _gather_time(t, index):
    """``t[b, index[b, j]]`` for (B, T, F) ``t`` and (B, J) ``index``."""
    return t.gather(1, index.unsqueeze(-1).expand(-1, -1, t.shape[-1]))


class KerasRecurrent(nn.Module):
    """A Keras SimpleRNN / LSTM / GRU layer, or a ``Bidirectional`` of one, around a torch RNN.

    ``rnn``: ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (or a subclass above), one layer, batch_first;
    ``bidirectional=True`` for Keras's Bidirectional, whose forward/backward layers are the two
    directions. ``forward(x, initial_state=None, mask=None)`` takes Keras's inputs: ``x`` may be
    the Keras 2 list ``[x, *states]``; the mask is a (B, T) tensor of kept steps.
    """

    def __init__(self, rnn: nn.Module, return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False, zero_output_for_mask: bool = False, time_major: bool = False,
                 merge_mode: Optional[str] = "concat", backward_go_backwards: bool = True):  # fmt: skip
        super().__init__()
        if rnn.num_layers != 1 or not rnn.batch_first or getattr(rnn, "proj_size", 0):
            raise ValueError("KerasRecurrent wraps a one-layer, batch_first recurrent module without projection")
        self.rnn = rnn
        self.return_sequences, self.return_state = bool(return_sequences), bool(return_state)
        self.go_backwards, self.backward_go_backwards = bool(go_backwards), bool(backward_go_backwards)
        self.zero_output_for_mask, self.time_major = bool(zero_output_for_mask), bool(time_major)
        self.merge_mode = merge_mode

    @property
    def _states_per_direction(self) -> int:
        return 2 if isinstance(self.rnn, nn.LSTM) else 1

    def extra_repr(self) -> str:
        flags = ["return_sequences", "return_state", "go_backwards", "zero_output_for_mask", "time_major"]
        out = [f for f in flags if getattr(self, f)]
        if self.rnn.bidirectional:
            out.append(f"merge_mode={self.merge_mode!r}")
        return ", ".join(out)

    # ------------------------------------------------------------------------------ masks
    def compute_mask(self, x, mask=None):
        if isinstance(mask, (list, tuple)):
            mask = mask[0] if mask else None
        out = mask if self.return_sequences else None
        masks = [out, out] if self.rnn.bidirectional and self.merge_mode is None else [out]
        if self.return_state:
            masks += [None] * (self._states_per_direction * (2 if self.rnn.bidirectional else 1))
        return masks if len(masks) > 1 else masks[0]

    # ------------------------------------------------------------------------------ running
    def forward(self, x, initial_state=None, mask=None, training=None, **kwargs):
        if isinstance(x, (list, tuple)):  # Keras 2: initial states are extra inputs
            x, extra = x[0], list(x[1:])
            if extra:
                initial_state = extra
        if isinstance(mask, (list, tuple)):
            mask = mask[0] if mask else None
        if initial_state is not None and not isinstance(initial_state, (list, tuple)):
            initial_state = [initial_state]
        if self.time_major:
            x = x.transpose(0, 1)
            mask = mask.transpose(0, 1) if mask is not None else None
        results = self._directions(x, initial_state, mask)
        outs = [r[0] if self.return_sequences else r[1] for r in results]
        if self.rnn.bidirectional:
            a, b = outs
            mode = self.merge_mode
            if mode == "concat":
                outs = [torch.cat([a, b], -1)]
            elif mode == "sum":
                outs = [a + b]
            elif mode == "mul":
                outs = [a * b]
            elif mode == "ave":
                outs = [(a + b) / 2]
        if self.time_major and self.return_sequences:
            outs = [o.transpose(0, 1) for o in outs]
        if self.return_state:
            outs += [s for r in results for s in r[2]]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _directions(self, x, initial_state, mask):
        """[(outputs in Keras's order, last output, final states)] per direction."""
        rnn, n = self.rnn, self._states_per_direction
        dirs = 2 if rnn.bidirectional else 1
        if x.is_meta:  # shape inference (torch's meta kernels step through time, slowly)
            b, t, u = x.shape[0], x.shape[1], rnn.hidden_size
            return [(x.new_empty(b, t, u), x.new_empty(b, u), tuple(x.new_empty(b, u) for _ in range(n)))] * dirs
        if initial_state is None:
            zeros = x.new_zeros(x.shape[0], rnn.hidden_size)
            states = [(zeros,) * n for _ in range(dirs)]
        else:
            if len(initial_state) != n * dirs:
                raise ValueError(f"expected {n * dirs} initial state tensors, got {len(initial_state)}")
            states = [tuple(initial_state[d * n : (d + 1) * n]) for d in range(dirs)]
        if mask is not None:
            mask = mask.to(torch.bool).reshape(x.shape[:2])
            if bool(mask.all()):
                mask = None
        # (suffix, runs reversed, outputs flipped back to input order)
        specs = [("", self.go_backwards, False)]
        if dirs == 2:
            specs.append(("_reverse", self.backward_go_backwards, True))
        standard = dirs == 1 or (not self.go_backwards and self.backward_go_backwards)
        if _is_plain(rnn) and standard:
            if mask is None:
                return self._native(x, states)
            packed = self._packed(x, states, mask)
            if packed is not None:
                return packed
        out = []
        for (sfx, reverse, flip), st in zip(specs, states):
            xs = x.flip(1) if reverse else x
            ms = mask.flip(1) if mask is not None and reverse else mask
            seq, st = _scan(rnn, xs, st, sfx, ms, self.zero_output_for_mask)
            out.append((seq.flip(1) if flip else seq, seq[:, -1], st))
        return out

    def _hx(self, states):
        h = torch.stack([s[0] for s in states])
        return (h, torch.stack([s[1] for s in states])) if self._states_per_direction == 2 else h

    def _split_hn(self, hn):
        if self._states_per_direction == 2:
            return [(hn[0][d], hn[1][d]) for d in range(hn[0].shape[0])]
        return [(hn[d],) for d in range(hn.shape[0])]

    def _native(self, x, states):
        """No mask: torch's own kernel, one call for both directions."""
        u = self.rnn.hidden_size
        if not self.rnn.bidirectional:
            out, hn = self.rnn(x.flip(1) if self.go_backwards else x, self._hx(states))
            return [(out, out[:, -1], self._split_hn(hn)[0])]
        out, hn = self.rnn(x, self._hx(states))
        st = self._split_hn(hn)
        return [(out[..., :u], out[:, -1, :u], st[0]), (out[..., u:], out[:, 0, u:], st[1])]

    def _packed(self, x, states, mask):
        """Masks keeping one contiguous run of steps per sample (left or right padding): torch's
        kernel on packed sequences, the masked steps filled in as Keras fills them. Else None."""
        b, t = mask.shape
        steps = torch.arange(t, device=mask.device)
        length = mask.sum(1)
        first = mask.to(torch.uint8).argmax(1)
        end = t - mask.flip(1).to(torch.uint8).argmax(1)
        if not bool(((length > 0) & (length == end - first)).all()):
            return None
        reverse = not self.rnn.bidirectional and self.go_backwards
        if reverse:  # the run, last step first
            index = (end[:, None] - 1 - steps[None]).clamp(min=0)
        else:
            index = (first[:, None] + steps[None]).clamp(max=t - 1)
        packed = nn.utils.rnn.pack_padded_sequence(_gather_time(x, index), length.cpu(), batch_first=True,
                                                   enforce_sorted=False)  # fmt: skip
        out, hn = self.rnn(packed, self._hx(states))
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=t)
        st = self._split_hn(hn)
        before, after = steps[None] < first[:, None], steps[None] >= end[:, None]
        valid = ~(before | after)
        zero = self.zero_output_for_mask
        u = self.rnn.hidden_size
        result = []
        for d in range(2 if self.rnn.bidirectional else 1):
            o = out[..., d * u : (d + 1) * u]
            backward = reverse or d == 1
            k = (end[:, None] - 1 - steps[None]) if reverse else (steps[None] - first[:, None])
            seq = _gather_time(o, k.clamp(0, t - 1))  # input order
            # masked steps after the run repeat its last output (before it: zeros, the initial
            # "previous output"); the backward direction meets them in the other order
            last = (length - 1) if reverse or not backward else torch.zeros_like(length)
            repeat = (before if backward else after)[..., None]
            fill = torch.zeros_like(seq) if zero else torch.where(repeat, _gather_time(o, last[:, None]), 0.0)
            seq = torch.where(valid[..., None], seq, fill)
            if reverse:  # Keras's go_backwards outputs are in processing order
                result.append((seq.flip(1), seq[:, 0], st[d]))
            elif backward:
                result.append((seq, seq[:, 0], st[d]))
            else:
                result.append((seq, seq[:, -1], st[d]))
        return result


# ---------------------------------------------------------------------------------- builders
_RNN_CLASSES = {"SimpleRNN": "rnn", "LSTM": "lstm", "GRU": "gru", "CuDNNLSTM": "lstm", "CuDNNGRU": "gru"}
_TORCH_RNN = {"rnn": (nn.RNN, KerasSimpleRNN), "lstm": (nn.LSTM, KerasLSTM), "gru": (nn.GRU, KerasGRU)}


def _input_features(layer, in_shapes) -> int:
    features = in_shapes[0][-1] if in_shapes and in_shapes[0] else None
    if features is None:
        raise unsupported(layer, f"the feature axis of its input is unknown: {in_shapes[0] if in_shapes else None}")
    return int(features)


def _rnn_module(layer, class_name: str, cfg: dict, input_size: int, ctx, bidirectional: bool) -> nn.Module:
    """The torch module computing one Keras recurrent layer config (both directions if bidirectional)."""
    kind = _RNN_CLASSES[class_name]
    if cfg.get("stateful"):
        raise unsupported(layer, "stateful=True keeps state between batches; only stateful=False is supported")
    units, bias = int(cfg["units"]), bool(cfg.get("use_bias", True))
    if class_name.startswith("CuDNN"):  # fixed sigmoid / tanh; CuDNNGRU is reset_after=True
        act_spec, ract_spec, reset_after = "tanh", "sigmoid", True
    else:  # Keras 1 / 2 defaults: hard_sigmoid and (for configs without the key) reset_after=False
        act_spec = cfg.get("activation", "tanh")
        ract_spec = cfg.get("recurrent_activation", "sigmoid" if ctx.generation >= 3 else "hard_sigmoid")
        reset_after = bool(cfg.get("reset_after", ctx.generation >= 3))
    act, _ = activation_module(act_spec, ctx.generation)
    ract, _ = activation_module(ract_spec, ctx.generation) if kind != "rnn" else (None, None)
    plain, loop = _TORCH_RNN[kind]
    common = dict(bias=bias, batch_first=True, bidirectional=bidirectional)
    if kind == "rnn":
        if type(act) in (nn.Tanh, nn.ReLU):
            return keras_bias(nn.RNN(input_size, units, nonlinearity="relu" if type(act) is nn.ReLU else "tanh",
                                     **common))  # fmt: skip
        return keras_bias(KerasSimpleRNN(input_size, units, activation=act, **common))
    exact = type(act) is nn.Tanh and type(ract) is nn.Sigmoid and (kind == "lstm" or reset_after)
    if exact:  # CuDNNLSTM trains two biases, as torch does (its (8u,) bias)
        two = kind == "gru" or class_name.startswith("CuDNN")
        return plain(input_size, units, **common) if two else keras_bias(plain(input_size, units, **common))
    if kind == "gru":
        gru = KerasGRU(input_size, units, activation=act, recurrent_activation=ract, reset_after=reset_after, **common)
        return gru if reset_after else keras_bias(gru)
    return keras_bias(KerasLSTM(input_size, units, activation=act, recurrent_activation=ract, **common))


@builds(*_RNN_CLASSES)
def _recurrent(layer, in_shapes, ctx):
    c = layer.config
    rnn = _rnn_module(layer, layer.class_name, c, _input_features(layer, in_shapes), ctx, False)
    module = KerasRecurrent(
        rnn,
        return_sequences=bool(c.get("return_sequences", False)),
        return_state=bool(c.get("return_state", False)),
        go_backwards=bool(c.get("go_backwards", False)),
        zero_output_for_mask=bool(c.get("zero_output_for_mask", False)),
        time_major=bool(c.get("time_major", False)),
    )
    return Built(module, "cl", "rnn", mask="consume")


_CELLS = {"SimpleRNNCell": "SimpleRNN", "LSTMCell": "LSTM", "GRUCell": "GRU"}


@builds("RNN")
def _rnn_of_cell(layer, in_shapes, ctx):
    """``RNN(LSTMCell(...))`` and friends: the cell's settings with the RNN layer's flags."""
    c = layer.config
    cell = c.get("cell")
    cls = cell.get("class_name") if isinstance(cell, dict) else None
    if cls not in _CELLS:
        raise unsupported(layer, f"an RNN over {cls or cell!r}: only SimpleRNNCell, LSTMCell and GRUCell are supported")
    cfg = dict(cell.get("config") or {})
    cfg.update({k: c[k] for k in ("return_sequences", "return_state", "go_backwards", "stateful", "time_major",
                                  "zero_output_for_mask") if k in c})  # fmt: skip
    return _recurrent(LayerDef(_CELLS[cls], layer.name, cfg), in_shapes, ctx)


# settings a Bidirectional's backward_layer must share with its forward layer to be one module
_SHARED = ("units", "activation", "recurrent_activation", "use_bias", "reset_after", "return_sequences",
           "return_state", "stateful", "time_major")  # fmt: skip


@builds("Bidirectional")
def _bidirectional(layer, in_shapes, ctx):
    c = layer.config
    inner, back = c.get("layer"), c.get("backward_layer")
    if not isinstance(inner, dict) or inner.get("class_name") not in _RNN_CLASSES:
        what = inner.get("class_name") if isinstance(inner, dict) else inner
        raise unsupported(layer, f"Bidirectional over {what!r}: only SimpleRNN, LSTM and GRU layers are supported")
    fcfg = inner["config"]
    backward_go_backwards = not fcfg.get("go_backwards", False)
    if isinstance(back, dict):
        bcfg = back.get("config", {})
        differ = [k for k in _SHARED if fcfg.get(k) != bcfg.get(k)]
        if back.get("class_name") != inner["class_name"] or differ:
            raise unsupported(layer, f"its backward_layer differs from the forward layer ({differ or 'class'}); "
                                     "only a backward_layer with the same settings is supported")  # fmt: skip
        backward_go_backwards = bool(bcfg.get("go_backwards", True))
    merge_mode = c.get("merge_mode", "concat")
    if merge_mode not in ("concat", "sum", "mul", "ave", None):
        raise unsupported(layer, f"merge_mode {merge_mode!r}")
    rnn = _rnn_module(layer, inner["class_name"], fcfg, _input_features(layer, in_shapes), ctx, True)
    return_sequences = bool(fcfg.get("return_sequences", False))
    module = KerasRecurrent(
        rnn,
        return_sequences=return_sequences,
        return_state=bool(fcfg.get("return_state", False)),
        go_backwards=bool(fcfg.get("go_backwards", False)),
        zero_output_for_mask=return_sequences,  # Bidirectional forces it on both layers
        time_major=bool(fcfg.get("time_major", False)),
        merge_mode=merge_mode,
        backward_go_backwards=backward_go_backwards,
    )
    return Built(module, "cl", "rnn", mask="consume")


class TimeDistributed(nn.Module):
    """Keras ``TimeDistributed``: ``layer`` applied to every step of (B, T, ...) as one (B*T, ...) batch.

    ``layout`` is what ``layer`` takes ("cl" Keras's, "cf" channels first, "any"), ``out_layout``
    what it returns when that differs; the wrapper itself takes and returns Keras's layout.
    """

    def __init__(self, layer: nn.Module, layout: str = "cl", out_layout: Optional[str] = None):
        super().__init__()
        self.layer, self.layout, self.out_layout = layer, layout, out_layout

    def forward(self, x, mask=None, training=None, **kwargs):
        b, t = x.shape[:2]
        y = x.reshape((b * t,) + tuple(x.shape[2:]))
        if self.layout == "cf" and y.dim() >= 3:
            y = y.movedim(-1, 1).contiguous()
        y = self.layer(y)
        if (self.out_layout or self.layout) == "cf" and y.dim() >= 3:
            y = y.movedim(1, -1)
        return y.reshape((b, t) + tuple(y.shape[1:]))


@builds("TimeDistributed")
def _time_distributed(layer, in_shapes, ctx):
    inner = layer.config.get("layer")
    if not isinstance(inner, dict) or "class_name" not in inner:
        raise unsupported(layer, "no wrapped layer in its config")
    shape = in_shapes[0]
    if len(shape) < 3:
        raise unsupported(layer, f"needs an input with a time axis, got {shape}")
    cls, cfg = inner["class_name"], inner.get("config", {})
    step_shapes = [(None,) + tuple(shape[2:])]
    sub = LayerDef(cls, f"{layer.name}/{cfg.get('name', cls)}", cfg)
    custom = ctx.custom_objects.get(cfg.get("name")) or ctx.custom_objects.get(cls)
    if custom is not None:
        module = custom(dict(cfg))
        if not isinstance(module, nn.Module):
            raise unsupported(sub, "custom_objects factory did not return an nn.Module")
        built = Built(module, "cl", "" if any(True for _ in module.parameters()) else None)
    elif cls in MODEL_CLASSES:  # a whole model applied to every step
        from torchkeras_io._graph.graph import _Builder
        from torchkeras_io._keras.config import _layer

        sub_model = _layer({"class_name": cls, "config": cfg}, ctx.generation, 1).model
        graph = _Builder(sub_model, ctx, step_shapes).run()
        built = Built(graph, "cl", "" if any(True for _ in graph.parameters()) else None)
    elif cls in BUILDERS:
        try:
            built = BUILDERS[cls](sub, step_shapes, ctx)
        except (KeyError, ValueError, TypeError) as exc:
            raise unsupported(sub, f"unreadable config: {exc}") from exc
    else:
        raise unsupported(sub, "no torch equivalent is known")
    layout = "cl" if built.layout == "any" else built.layout
    weights = None if built.weights is None else ("layer" + (f".{built.weights}" if built.weights else ""))
    return Built(TimeDistributed(built.module, layout, built.out_layout), "cl", weights, mask="pass")


# ------------------------------------------------------------------------------ ConvLSTM1D/2D/3D
def _tf_same_pads(sizes, kernel, stride, dilation) -> list:
    """F.pad argument for TensorFlow 'same' padding (the odd pixel at the end), last axis first."""
    pads = []
    for n, k, s, d in reversed(list(zip(sizes, kernel, stride, dilation))):
        eff = (k - 1) * d + 1
        total = max(0, (-(-n // s) - 1) * s + eff - n)
        pads += [total // 2, total - total // 2]
    return pads


class ConvLSTM(nn.Module):
    """Keras ``ConvLSTM1D/2D/3D``: the weights as Keras stores them (``kernel`` (*k, C, 4f),
    ``recurrent_kernel`` (*k, f, 4f), ``bias`` (4f,), gates i, f, c, o); a time loop of
    convolutions. Takes and returns Keras's layout; masks keep the state as in LSTM."""

    def __init__(self, rank: int, in_channels: int, filters: int, kernel_size, strides=1, padding: str = "valid",
                 dilation_rate=1, channels_first: bool = False, use_bias: bool = True, activation=None,
                 recurrent_activation=None, return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False):  # fmt: skip
        super().__init__()
        self.rank, self.filters = int(rank), int(filters)
        self.kernel_size = tuple(kernel_size)
        self.strides, self.dilation_rate = tuple(strides), tuple(dilation_rate)
        self.padding, self.channels_first = padding, bool(channels_first)
        self.return_sequences, self.return_state, self.go_backwards = return_sequences, return_state, go_backwards
        self.kernel = nn.Parameter(torch.zeros(self.kernel_size + (in_channels, 4 * filters)))
        self.recurrent_kernel = nn.Parameter(torch.zeros(self.kernel_size + (filters, 4 * filters)))
        self.bias = nn.Parameter(torch.zeros(4 * filters)) if use_bias else None
        self.activation = activation if activation is not None else nn.Tanh()
        self.recurrent_activation = recurrent_activation if recurrent_activation is not None else nn.Sigmoid()

    def _torch_weight(self, k):
        return k.permute((self.rank + 1, self.rank) + tuple(range(self.rank)))

    def _conv(self, x, w, stride, dilation, padding):
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.rank - 1]
        if padding == "same":
            pads = _tf_same_pads(x.shape[2:], self.kernel_size, stride, dilation)
            if any(pads):
                x = F.pad(x, pads)
        elif padding != "valid":
            raise ValueError(f"padding {padding!r}")
        return conv(x, w, stride=stride, dilation=dilation)

    def compute_mask(self, x, mask=None):
        if isinstance(mask, (list, tuple)):
            mask = mask[0] if mask else None
        out = mask if self.return_sequences else None
        return [out, None, None] if self.return_state else out

    def forward(self, x, initial_state=None, mask=None, training=None, **kwargs):
        if isinstance(x, (list, tuple)):
            x, extra = x[0], list(x[1:])
            initial_state = extra or initial_state
        if isinstance(mask, (list, tuple)):
            mask = mask[0] if mask else None
        b, t = x.shape[:2]
        steps = x.reshape((b * t,) + tuple(x.shape[2:]))
        if not self.channels_first:
            steps = steps.movedim(-1, 1)
        ones = (1,) * self.rank
        xc = self._conv(steps, self._torch_weight(self.kernel), self.strides, self.dilation_rate, self.padding)
        if self.bias is not None:
            xc = xc + self.bias.reshape((1, -1) + ones)
        xc = xc.reshape((b, t) + tuple(xc.shape[1:]))
        if initial_state is not None:
            h, c = [s if self.channels_first else s.movedim(-1, 1) for s in initial_state]
        else:
            h = c = xc.new_zeros((b, self.filters) + tuple(xc.shape[3:]))
        if self.go_backwards:
            xc = xc.flip(1)
            mask = mask.flip(1) if mask is not None else None
        w_rec = self._torch_weight(self.recurrent_kernel)
        f, act, ract = self.filters, self.activation, self.recurrent_activation
        outs, prev = [], torch.zeros_like(h)
        for i in range(t if not xc.is_meta else 1):
            z = xc[:, i] + self._conv(h, w_rec, ones, ones, "same")
            c_new = ract(z[:, f : 2 * f]) * c + ract(z[:, :f]) * act(z[:, 2 * f : 3 * f])
            h_new = ract(z[:, 3 * f :]) * act(c_new)
            if mask is None:
                h, c, out = h_new, c_new, h_new
            else:
                m = mask[:, i].to(torch.bool).reshape((b, 1) + ones)
                h, c = torch.where(m, h_new, h), torch.where(m, c_new, c)
                out = prev = torch.where(m, h_new, prev)
            outs.append(out)
        if xc.is_meta:  # shape inference: one step tells the shapes
            outs = outs * t

        def keras(y, channels=1):
            return y if self.channels_first else y.movedim(channels, -1)

        y = keras(torch.stack(outs, 1), 2) if self.return_sequences else keras(outs[-1])
        return (y, keras(h), keras(c)) if self.return_state else y


@builds("ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")
def _conv_lstm(layer, in_shapes, ctx):
    c = layer.config
    shape = in_shapes[0]
    rank = len(shape) - 3
    if rank not in (1, 2, 3):
        raise unsupported(layer, f"expects (batch, time, *spatial, channels) input, got {shape}")
    if c.get("stateful"):
        raise unsupported(layer, "stateful=True keeps state between batches; only stateful=False is supported")
    channels_first = c.get("data_format") == "channels_first"
    cin = shape[2] if channels_first else shape[-1]
    if cin is None:
        raise unsupported(layer, f"the channel axis of its input is unknown: {shape}")
    padding = str(c.get("padding", "valid")).lower()
    if padding not in ("valid", "same"):
        raise unsupported(layer, f"padding {padding!r}")
    act, _ = activation_module(c.get("activation", "tanh"), ctx.generation)
    ract, _ = activation_module(
        c.get("recurrent_activation", "sigmoid" if ctx.generation >= 3 else "hard_sigmoid"), ctx.generation
    )
    module = ConvLSTM(
        rank, int(cin), int(c["filters"]), cfg_int_tuple(c["kernel_size"], rank),
        cfg_int_tuple(c.get("strides", 1) or 1, rank), padding, cfg_int_tuple(c.get("dilation_rate", 1) or 1, rank),
        channels_first, bool(c.get("use_bias", True)), act, ract, bool(c.get("return_sequences", False)),
        bool(c.get("return_state", False)), bool(c.get("go_backwards", False)),
    )  # fmt: skip
    return Built(module, "cl", "", mask="consume")


# ------------------------------------------------------------------------------- torch -> config
_ACT_NAMES = {nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.ReLU: "relu"}


def _export_activation(ctx, fn, default: str) -> str:
    if fn is None:
        return default
    name = _ACT_NAMES.get(type(fn))
    if name is None:  # e.g. hard_sigmoid: its meaning differs between tf-keras and Keras 3
        raise ctx.fail(f"recurrent activation {type(fn).__name__} has no meaning both Keras generations share")
    return name


@exports(nn.LSTM, nn.GRU, nn.RNN)
def _export_recurrent(ctx, node, module, args, kwargs, value):
    cls, base, gates = _kind(module)
    if getattr(module, "proj_size", 0):
        raise ctx.fail("LSTM proj_size has no Keras equivalent")
    if len(args) > 1 and args[1] is not None or kwargs.get("hx") is not None:
        raise ctx.fail("initial states passed to the recurrent module")
    if isinstance(module, nn.RNN) and not isinstance(module, (nn.LSTM, nn.GRU)):
        activation = "relu" if module.nonlinearity == "relu" else "tanh"
    else:
        activation = _export_activation(ctx, getattr(module, "keras_activation", None), "tanh")
    recurrent_activation = _export_activation(ctx, getattr(module, "keras_recurrent_activation", None), "sigmoid")
    name = ctx.layer_name(node)
    if args[0].rank != 3:
        raise ctx.fail("unbatched (time, features) input to a recurrent module")
    seq = (0, 1, 2) if module.batch_first else (1, 0, 2)  # Keras takes (batch, time, features)
    x = ctx.permute(args[0], seq)
    n, length = x.keras_shape[:2]
    units, dirs = module.hidden_size, 2 if module.bidirectional else 1
    states_per_dir = 2 if gates == 4 else 1
    h_n, c_n = [], []
    for k in range(module.num_layers):
        cfg = {"units": units, "activation": activation, "use_bias": module.bias, "return_sequences": True,
               "return_state": True, "go_backwards": False, "stateful": False, "unroll": False}  # fmt: skip
        if gates > 1:
            cfg["recurrent_activation"] = recurrent_activation
        if gates == 3:
            cfg["reset_after"] = _resets_after(module)
        lname = name if module.num_layers == 1 else f"{name}_l{k}"
        shape = (n, length, units * dirs) if module.batch_first else (length, n, units * dirs)
        outs = [(shape, seq, x.dtype)] + [((n, units), (0, 1), x.dtype)] * (
            states_per_dir * dirs)  # fmt: skip
        source = WeightSource("", module, RecurrentAdapter(), k, None)
        if dirs == 2:
            # "module" lets Keras 3 find the wrapped class; tf-keras >= 2.13 writes it too
            inner = {
                "module": "keras.layers",
                "class_name": cls,
                "registered_name": None,
                "config": {"name": f"{lname}_cell", "trainable": True, "dtype": "float32", **cfg},
            }
            layer_cfg = {"layer": inner, "merge_mode": "concat"}
            res = ctx.add("Bidirectional", layer_cfg, x, outs, name=lname, module=module, part=k, weights=source)
        else:
            res = ctx.add(cls, cfg, x, outs, name=lname, module=module, part=k, weights=source)
        x, states = res[0], res[1:]
        for d in range(dirs):  # Keras: [h, c] per direction, forward first; torch h_n index = layer*dirs + d
            own = states[d * states_per_dir : (d + 1) * states_per_dir]
            h_n.append(own[0])
            if gates == 4:
                c_n.append(own[1])
    return (x, (h_n, c_n)) if gates == 4 else (x, h_n)
