"""The layer families: importing the package registers every family's adapter, builders and
exporters in :mod:`torchkeras_io._layers.registry`."""

from torchkeras_io._layers import (  # noqa: F401
    activation,
    applications,
    attention,
    conv,
    core,
    dense,
    embedding,
    functional,
    lambdas,
    merge,
    norm,
    ops,
    pooling,
    recurrent,
    reshaping,
    slicing,
    tensor_ops,
    wrappers,
)
