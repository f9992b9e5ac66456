"""import-linter contract types the built-in ones lack: forbidden external submodules, private names.

``forbidden_submodules`` forbids submodules of an external package (``torch.nn``).

import-linter's own ``forbidden`` contract accepts only whole external packages (``torch``), because
its import graph squashes every external package into one node. ``_formats`` may use ``torch``
tensors but must not know about modules, so this contract reads the sources of the checked packages
itself and resolves every ``import``/``from ... import`` (inside functions too) to full module names.
Registered in pyproject.toml under ``[tool.importlinter] contract_types``; ``lint-imports`` puts the
working directory on ``sys.path``, so it runs from the repository root.

Only import statements are seen: ``import torch`` followed by ``torch.nn.Module`` passes.

``no_private_names`` forbids ``from torchkeras_io.x import _name`` between the package's modules.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


def _imported_names(tree: ast.AST):
    """(line, full dotted name) for every name an import statement can bind, as absolute paths."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module
            # `from torch import nn` names the submodule torch.nn
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def _source_file(module: str) -> Path:
    """The file of ``module``, found without importing it or its parents (a broken import elsewhere
    must not hide this contract's result)."""
    root, *rest = module.split(".")
    base = Path(importlib.util.find_spec(root).origin).parent.joinpath(*rest)
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _within(name: str, forbidden: str) -> bool:
    return name == forbidden or name.startswith(forbidden + ".")


class ForbiddenSubmodulesContract(Contract):
    """source_modules (internal packages) may not import forbidden_modules (dotted external names)."""

    type_name = "forbidden_submodules"

    source_modules = fields.ListField(subfield=fields.StringField())
    forbidden_modules = fields.ListField(subfield=fields.StringField())

    def check(self, graph, verbose: bool) -> ContractCheck:
        violations = []
        for source in self.source_modules:
            modules = sorted({source} | set(graph.find_descendants(source)))
            for module in modules:
                origin = _source_file(module)
                tree = ast.parse(origin.read_text(encoding="utf-8"), filename=str(origin))
                seen = set()
                for line, name in sorted(set(_imported_names(tree))):
                    hit = next((f for f in self.forbidden_modules if _within(name, f)), None)
                    if hit is not None and line not in seen:
                        seen.add(line)
                        violations.append((module, line, name, hit))
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for module, line, name, hit in check.metadata["violations"]:
            output.print_error(f"{module} (l.{line}) imports {name}, which is within {hit}", bold=False)
        output.new_line()


class NoPrivateNamesContract(Contract):
    """No module of ``packages`` imports another module's private name (``from x import _helper``).

    A name that other modules need is part of its module's interface inside the package, so it
    drops the underscore; private submodules (``from pkg import _sub``) are modules, not names, and
    are left to the other contracts.
    """

    type_name = "no_private_names"

    packages = fields.ListField(subfield=fields.StringField())

    def check(self, graph, verbose: bool) -> ContractCheck:
        violations = []
        for package in self.packages:
            for module in sorted({package} | set(graph.find_descendants(package))):
                origin = _source_file(module)
                tree = ast.parse(origin.read_text(encoding="utf-8"), filename=str(origin))
                for node in ast.walk(tree):
                    if not (isinstance(node, ast.ImportFrom) and node.module and not node.level):
                        continue
                    if not _within(node.module, package):
                        continue
                    for alias in node.names:
                        name = alias.name
                        if name.startswith("_") and not name.startswith("__") and not _is_module(node.module, name):
                            violations.append((module, node.lineno, f"{node.module}.{name}"))
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for module, line, name in check.metadata["violations"]:
            output.print_error(f"{module} (l.{line}) imports the private name {name}", bold=False)
        output.new_line()


def _is_module(package: str, name: str) -> bool:
    base = _source_file(package).parent
    return _source_file(package).name == "__init__.py" and (
        (base / f"{name}.py").is_file() or (base / name / "__init__.py").is_file()
    )
