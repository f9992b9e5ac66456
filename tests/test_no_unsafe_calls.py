"""No code-executing deserialisation anywhere in the package (an AST scan of torchkeras_io/).

Loading a file must never run code from it: no pickle, eval, exec, compile, marshal, importlib,
``__import__``, ``torch.load`` without ``weights_only=True``, ``yaml.load`` without a safe loader,
``np.load`` with ``allow_pickle``, and no ``getattr`` of a module by a computed name (a file naming a
function to look up). The scan is over the source itself, so it also covers paths no test reaches.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "torchkeras_io"

BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "importlib", "shelve", "joblib"}
BANNED_CALLS = {"eval", "exec", "compile", "__import__", "execfile", "input"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}
# modules whose attributes a file-supplied name could reach through getattr
MODULE_NAMES = {"torch", "nn", "F", "np", "numpy", "builtins", "os", "sys", "functional", "math", "operator"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else node.attr
    return ""


def _kw(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _const(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def scan_source(source: str, filename: str = "<src>") -> list[str]:
    """Every unsafe construct in ``source``, as 'file:line: what'."""
    tree = ast.parse(source, filename)
    found = []

    def hit(node, what):
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in BANNED_MODULES:
                    hit(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            if node.module and node.module.split(".")[0] in BANNED_MODULES:
                hit(node, f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            last = name.rsplit(".", 1)[-1]
            if name in BANNED_CALLS or (last in BANNED_CALLS and name.startswith("builtins.")):
                hit(node, f"call of {name}()")
            elif name.split(".")[0] in BANNED_MODULES:
                hit(node, f"call of {name}()")
            elif last == "loads" and name.split(".")[0] in ("marshal", "pickle", "dill"):
                hit(node, f"call of {name}()")
            elif name == "torch.load":
                if not _const(_kw(node, "weights_only"), True):
                    hit(node, "torch.load without weights_only=True")
            elif name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load"):
                loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                safe = name in ("yaml.load", "yaml.load_all") and loader is not None
                if not (safe and _dotted(loader).rsplit(".", 1)[-1] in SAFE_YAML_LOADERS):
                    hit(node, f"{name} without a safe loader")
            elif name in ("np.load", "numpy.load"):
                allow = _kw(node, "allow_pickle")
                if allow is not None and not _const(allow, False):
                    hit(node, "np.load with allow_pickle")
            elif name in ("getattr", "builtins.getattr") and node.args:
                target = _dotted(node.args[0])
                attr = node.args[1] if len(node.args) > 1 else None
                if target.split(".")[0] in MODULE_NAMES and not isinstance(attr, ast.Constant):
                    hit(node, f"getattr({target}, <computed name>)")
            elif name in ("globals", "locals", "vars") and not node.args:
                hit(node, f"{name}() lookup")
    return found


def _package_files() -> list[pathlib.Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_package_has_no_unsafe_calls():
    files = _package_files()
    assert len(files) > 20, "the scan must see the whole package"
    found = []
    for path in files:
        found += scan_source(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))
    assert not found, "unsafe constructs in the package:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "import pickle",
        "from pickle import loads",
        "import marshal\nmarshal.loads(b'')",
        "import importlib\nimportlib.import_module(name)",
        "from importlib import import_module",
        "eval(text)",
        "exec(code)",
        "compile(src, 'f', 'exec')",
        "__import__(name)",
        "import builtins\nbuiltins.eval(x)",
        "torch.load(path)",
        "torch.load(path, weights_only=False)",
        "yaml.load(text)",
        "yaml.load(text, Loader=yaml.Loader)",
        "yaml.unsafe_load(text)",
        "yaml.full_load(text)",
        "np.load(path, allow_pickle=True)",
        "getattr(torch, name_from_file)",
        "getattr(nn, cls)(**cfg)",
        "globals()[name]",
    ],
)
def test_scanner_catches(source):
    assert scan_source(source), source


@pytest.mark.parametrize(
    "source",
    [
        "torch.load(path, weights_only=True)",
        "yaml.load(text, Loader=yaml.SafeLoader)",
        "yaml.safe_load(text)",
        "np.load(path)",
        "np.load(path, allow_pickle=False)",
        "getattr(torch, 'float8_e4m3fn', None)",
        "getattr(module, name)",
        "json.loads(text)",
    ],
)
def test_scanner_allows(source):
    assert not scan_source(source), source


def test_scan_covers_the_lambda_reader():
    """The Lambda bytecode reader (``_keras/pycode``) parses marshal data by hand: the scan must see all of it."""
    names = {p.relative_to(PACKAGE).as_posix() for p in _package_files()}
    reader = {"_keras/pycode/__init__.py", "_keras/pycode/unmarshal.py", "_keras/pycode/codeobj.py",
              "_keras/pycode/opcodes.py", "_keras/pycode/symbolic.py"}  # fmt: skip
    assert reader <= names, sorted(reader - names)
