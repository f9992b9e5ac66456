"""The torch modules of Keras's recurrent layers.

``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` compute Keras's LSTM, GRU(reset_after=True) and
SimpleRNN(tanh | relu) exactly, and are used as they are. Other activations (the old default
``hard_sigmoid`` among them) and GRU(reset_after=False) use :class:`KerasLSTM`, :class:`KerasGRU`
and :class:`KerasSimpleRNN`: subclasses with the same parameters (so the weight adapter loads
them) whose forward is a time loop. :class:`KerasRecurrent` adds the Keras layer around either:
return_sequences / return_state, go_backwards, initial states, masks, Bidirectional merges.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

_KINDS = {nn.LSTM: ("LSTM", "lstm", 4), nn.GRU: ("GRU", "gru", 3), nn.RNN: ("SimpleRNN", "simple_rnn", 1)}


def rnn_kind(module):
    """(Keras class, Keras cell name, gates) of a torch recurrent module, or None."""
    for cls, kind in _KINDS.items():
        if type(module) is cls or isinstance(module, cls):
            return kind
    return None


def resets_after(module) -> bool:
    """False for a GRU module computing Keras's ``reset_after=False`` (one (3u,) Keras bias)."""
    return bool(getattr(module, "reset_after", True))


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
    _, kind, _ = rnn_kind(rnn)
    u = rnn.hidden_size
    if x.is_meta:  # shape inference: no need to step through time
        return x.new_empty(x.shape[0], x.shape[1], u), tuple(x.new_empty(x.shape[0], u) for _ in state)
    act, ract = _activations(rnn)
    w_ih, w_hh = getattr(rnn, f"weight_ih_l0{sfx}"), getattr(rnn, f"weight_hh_l0{sfx}")
    b_ih = getattr(rnn, f"bias_ih_l0{sfx}") if rnn.bias else None
    b_hh = getattr(rnn, f"bias_hh_l0{sfx}") if rnn.bias else None
    xp = F.linear(x, w_ih, b_ih)  # input projections of every step at once
    reset_after = resets_after(rnn)
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


def one_bias(rnn) -> bool:
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
    if not rnn.bias or one_bias(rnn):
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
