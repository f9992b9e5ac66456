"""Hostile model configs (class names as import paths, bad values, YAML bombs) are refused as file errors, importing nothing."""

from __future__ import annotations

import json
import time

import pytest
from hostile_corpus import our_model


@pytest.mark.parametrize("cls", ["os.system", "builtins.eval", "torch.nn.Module", "Custom>Evil", "__main__.X"])
def test_class_names_are_never_import_paths(cls):
    import torchkeras_io as tkio

    config = json.loads(tkio.to_json(our_model(), input_shape=(6,)))
    config["config"]["layers"][-1]["class_name"] = cls
    with pytest.raises(tkio.FileFormatError, match="not a Keras class name"):
        tkio.model_from_json(json.dumps(config))
    config = json.loads(tkio.to_json(our_model(), input_shape=(6,)))
    config["class_name"] = cls
    with pytest.raises(tkio.FileFormatError, match="not a Keras class name"):
        tkio.model_from_json(json.dumps(config))


def test_bad_config_values_are_file_errors_but_factory_errors_pass_through():
    import torchkeras_io as tkio

    config = json.loads(tkio.to_json(our_model(), input_shape=(6,)))
    config["config"]["layers"][-1]["config"]["units"] = -3
    with pytest.raises(tkio.FileFormatError, match="cannot build"):
        tkio.model_from_json(json.dumps(config))
    config["config"]["layers"][-1]["class_name"] = "MyLayer"

    def factory(cfg):
        raise TypeError("a bug in the caller's factory")

    with pytest.raises(TypeError, match="caller's factory"):
        tkio.model_from_json(json.dumps(config), custom_objects={"MyLayer": factory})


def test_yaml_alias_bomb_and_depth_are_refused_quickly():
    import torchkeras_io as tkio

    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(9)
    )
    t0 = time.perf_counter()
    with pytest.raises(tkio.FileFormatError, match="alias bomb"):
        tkio.model_from_yaml(bomb)
    with pytest.raises(tkio.FileFormatError, match="cyclic"):
        tkio.model_from_yaml("a: &a [*a]\n")
    with pytest.raises(tkio.FileFormatError):
        tkio.model_from_yaml("[" * 2000 + "]" * 2000)
    assert time.perf_counter() - t0 < 5
