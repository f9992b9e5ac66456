"""Keras SimpleRNN / LSTM / GRU (and their CuDNN forms, ``RNN`` over a cell, ``Bidirectional``) ->
the torch modules of :mod:`.modules`."""

from __future__ import annotations

from torch import nn

from torchkeras_io._keras.config import LayerDef
from torchkeras_io._layers.activation import activation_module
from torchkeras_io._layers.recurrent.modules import KerasGRU, KerasLSTM, KerasRecurrent, KerasSimpleRNN, keras_bias
from torchkeras_io._layers.registry import Built, builds, unsupported

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
