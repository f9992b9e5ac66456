"""nn.LSTM / nn.GRU / nn.RNN -> Keras LSTM / GRU / SimpleRNN layers (one per torch layer,
``Bidirectional`` for both directions), for the torch.fx export."""

from __future__ import annotations

from torch import nn

from torchkeras_io._layers.recurrent.modules import resets_after, rnn_kind
from torchkeras_io._layers.recurrent.weights import RecurrentAdapter
from torchkeras_io._layers.registry import WeightSource, exports

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
    cls, base, gates = rnn_kind(module)
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
            cfg["reset_after"] = resets_after(module)
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
