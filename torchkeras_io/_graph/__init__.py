"""The Keras graph: build a torch model from a Keras config, and export a torch module to one."""
