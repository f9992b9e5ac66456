"""One load and one save pipeline over the formats, the layer adapters and the Keras graph."""
