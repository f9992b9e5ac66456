"""Keras-side knowledge that is not tied to HDF5: model configs of every Keras generation."""
