"""Recurrent layers: nn.RNN / nn.LSTM / nn.GRU <-> SimpleRNN / LSTM / GRU (+ Bidirectional), and
ConvLSTM. :mod:`.weights` maps the weights both ways, :mod:`.modules` holds the torch modules
the config builders (:mod:`.build`, :mod:`.conv_lstm`) make, :mod:`.export` writes Keras layers
for torch's recurrent modules. Importing the package registers them all."""

from torchkeras_io._layers.recurrent import build, conv_lstm, export, weights  # noqa: F401
