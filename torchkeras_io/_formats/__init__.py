"""Bytes only: the file formats (HDF5 layouts, the Keras 3 store and archive). No layers, no configs."""
