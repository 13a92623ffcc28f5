"""Only the engine optimises: no optimiser is built, and no ``.backward(`` or optimiser ``.step(``
is called, anywhere in the package outside ``contrastkit/engine/`` and a named allow-list.

The check reads the source with ``ast`` (so a comment or a docstring that mentions ``.backward()``
does not count) and fails on a stale allow-list entry too, so the list can only shrink honestly.
"""

from __future__ import annotations

import ast
from pathlib import Path

import torch

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "contrastkit"
ENGINE = PACKAGE / "engine"

# path (relative to the package) -> why it may call backward / build an optimiser
ALLOWED = {
    "nn/gradcache.py": "GradCache's second stage runs inside a custom autograd Function's backward: it is part "
                         "of the engine's backward pass (the chunks' embeddings get their cached gradients), not "
                         "an optimisation loop of its own.",
    "modalities/pairs/method.py": "TwoTowerMethod.backward_loss: the engine calls it in place of loss.backward() "
                            "(per-sample gradient harmonization backpropagates through the towers' features).",
}

OPTIMIZER_CLASSES = {name for name in dir(torch.optim)
                     if isinstance(getattr(torch.optim, name), type)
                     and issubclass(getattr(torch.optim, name), torch.optim.Optimizer)}
ENGINE_BUILDERS = {"LARS", "adamw", "build_optimizer", "fit_auxiliary_optimizer"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return _dotted(node.func) + "()"
    return type(node).__name__


def optimisation_calls(source: str) -> list[str]:
    """``line: call`` for each optimiser construction, ``.backward(`` and optimiser ``.step(``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        last = name.rsplit(".", 1)[-1]
        receiver = name.rsplit(".", 1)[0].rsplit(".", 1)[-1].lower() if "." in name else ""
        if last == "backward" or (last == "step" and receiver.startswith("opt")):
            found.append(f"{node.lineno}: {name}(")
        elif last in OPTIMIZER_CLASSES and (name.startswith(("torch.optim.", "optim.")) or name == last):
            found.append(f"{node.lineno}: {name}(")
        elif last in ENGINE_BUILDERS:
            found.append(f"{node.lineno}: {name}(")
    return sorted(found, key=lambda call: int(call.split(":")[0]))


def test_the_detector_finds_what_it_looks_for():
    source = ("import torch\nopt = torch.optim.AdamW(p)\nloss.backward()\nopt.step()\n"
              "torch.autograd.backward([a], [g])\nSGD(p, lr=1)\nself.optimizer.step()\n"
              "x = '''loss.backward()'''  # loss.backward()\nscheduler.step()\n")
    assert optimisation_calls(source) == [
        "2: torch.optim.AdamW(", "3: loss.backward(", "4: opt.step(", "5: torch.autograd.backward(",
        "6: SGD(", "7: self.optimizer.step("]


def test_only_the_engine_optimises():
    offenders, used = {}, set()
    for path in sorted(PACKAGE.rglob("*.py")):
        if ENGINE in path.parents:
            continue
        relative = path.relative_to(PACKAGE).as_posix()
        calls = optimisation_calls(path.read_text())
        if not calls:
            continue
        if relative in ALLOWED:
            used.add(relative)
            continue
        offenders[relative] = calls
    assert not offenders, ("optimisation outside the engine (route it through contrastkit.engine.train, or "
                           f"fit_auxiliary for a probe or an autoencoder): {offenders}")
    stale = sorted(set(ALLOWED) - used)
    assert not stale, f"allow-list entries with nothing left to allow: {stale}"
