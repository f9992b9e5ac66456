"""The format-neutral record of a Keras file: what every reader produces and every writer consumes."""
