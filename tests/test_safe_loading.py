"""A file from elsewhere is read without running its code (issue 32).

Every command and function that reads a checkpoint is handed one whose unpickling would create a
marker file (a real checkpoint with one object added whose ``__reduce__`` is ``Path.touch``): each
refuses it with a DataError (exit status 2) naming the file, and the marker never appears. Passing
``--trust-checkpoint`` reads it, and so runs its code: the marker appears, which shows the file is
really what the refusals guard against. The project's own checkpoints of every modality still load
and resume (the loaders' own tests, and the SIGKILL resume tests, check exactness).

A second part reads the source (``ast``, nothing imported): every ``torch.load`` passes
``weights_only=True``, nothing unpickles with ``pickle`` / ``joblib`` / ``dill``, no ``np.load``
allows pickles, no ``yaml.load`` goes without a safe loader, Lightning's resume passes
``weights_only``, and Hugging Face models load from safetensors; each exception is on
:data:`ALLOWED` with its reason.
"""

from __future__ import annotations

import ast
import json
import pathlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import contrastkit
from contrastkit.cli import main
from contrastkit.core.errors import DataError
from contrastkit.core.safe_loading import UnsafeFileError, read_torch_file
from tests.test_fit_command import COMMON, case


class TouchOnLoad:
    """Unpickling this creates ``marker``: the stand-in for any code a pickle can run."""

    def __init__(self, marker: Path):
        self.marker = Path(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def plant(checkpoint: Path, marker: Path) -> Path:
    """Rewrite ``checkpoint`` (a real one) with a TouchOnLoad object added to it."""
    content = torch.load(checkpoint, map_location="cpu", weights_only=True)
    content["contrastkit"] = {**content.get("contrastkit", {}), "note": TouchOnLoad(marker)}
    torch.save(content, checkpoint)
    return checkpoint


def planted_file(path: Path, marker: Path, content: dict | None = None) -> Path:
    """A torch file holding only ``content`` and a TouchOnLoad object."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**(content or {}), "note": TouchOnLoad(marker)}, path)
    return path


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_the_planted_file_runs_code_when_unpickled_in_full(tmp_path):
    """The test file is genuine: the full unpickler runs it; the reader of contrastkit refuses it."""
    marker = tmp_path / "marker"
    path = planted_file(tmp_path / "x.pt", marker)
    with pytest.raises(UnsafeFileError, match="was not read") as refused:
        read_torch_file(path, alternative="Do something else.")
    assert str(path) in str(refused.value) and "Do something else." in str(refused.value)
    assert not marker.exists()
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.exists()


# --- an image run: embed, export, contrastkit.load, fit --resume ------------------------------------

IMAGE_RUN = ["fit", "--method", "simclr", "--data", "digits", "--limit", "128", "--holdout", "0", "--backbone",
             "small-cnn", "--max-epochs", "1", "--no-report", "--no-baselines", *COMMON]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    """A finished two-step image run (not to be modified: copy it)."""
    out = tmp_path_factory.mktemp("image") / "run"
    assert main([*IMAGE_RUN, "--out", str(out)]) == 0
    return out


@pytest.fixture
def planted_image_run(image_run, tmp_path) -> tuple[Path, Path]:
    """(a copy of the image run whose last.ckpt carries code, the marker that code would create)."""
    run = tmp_path / "run"
    shutil.copytree(image_run, run)
    marker = tmp_path / "marker"
    plant(run / "checkpoints" / "last.ckpt", marker)
    return run, marker


def test_embed_refuses_a_checkpoint_that_carries_code(planted_image_run, tmp_path, capsys):
    run, marker = planted_image_run
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert main(["embed", "--checkpoint", str(checkpoint), "--data", "digits", "--out", str(tmp_path / "e.npy")]) == 2
    err = one_line(capsys.readouterr().err)
    assert str(checkpoint) in err and "was not read" in err and "--trust-checkpoint" in err, err
    assert "contrastkit export" in err, err  # the safe way to share a model
    assert not marker.exists() and not (tmp_path / "e.npy").exists()


def test_embed_with_trust_checkpoint_reads_it_and_runs_its_code(planted_image_run, image_run, tmp_path):
    import numpy as np

    run, marker = planted_image_run
    out = tmp_path / "e.npy"
    assert main(["embed", "--checkpoint", str(run / "checkpoints" / "last.ckpt"), "--data", "digits",
                 "--out", str(out), "--trust-checkpoint"]) == 0
    assert marker.exists()
    # and the project's own checkpoint embeds identically without the option
    assert main(["embed", "--checkpoint", str(image_run / "checkpoints" / "last.ckpt"), "--data", "digits",
                 "--out", str(tmp_path / "own.npy")]) == 0
    np.testing.assert_array_equal(np.load(out), np.load(tmp_path / "own.npy"))


def test_export_refuses_a_checkpoint_that_carries_code(planted_image_run, tmp_path, capsys):
    run, marker = planted_image_run
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "exported")]) == 2
    err = one_line(capsys.readouterr().err)
    assert str(checkpoint) in err and "--trust-checkpoint" in err, err
    assert not marker.exists() and not (tmp_path / "exported" / "model.safetensors").exists()


def test_export_of_the_projects_own_checkpoint_still_works(image_run, tmp_path):
    assert main(["export", "--checkpoint", str(image_run / "checkpoints" / "last.ckpt"),
                 "--out", str(tmp_path / "exported")]) == 0
    assert isinstance(contrastkit.load(tmp_path / "exported"), torch.nn.Module)


def test_contrastkit_load_refuses_the_file_and_the_folder(planted_image_run, image_run):
    run, marker = planted_image_run
    checkpoint = run / "checkpoints" / "last.ckpt"
    for target in (checkpoint, run):
        with pytest.raises(DataError, match="was not read") as refused:
            contrastkit.load(target)
        assert str(checkpoint) in str(refused.value)
    assert not marker.exists()
    assert isinstance(contrastkit.load(image_run), torch.nn.Module)  # the project's own run loads
    contrastkit.load(checkpoint, trust_checkpoint=True)
    assert marker.exists()


def test_image_resume_refuses_a_last_checkpoint_that_carries_code(planted_image_run, capsys):
    run, marker = planted_image_run
    (run / "summary.json").unlink()
    resume = ["fit", "--resume", "--out", str(run), "--max-epochs", "2", "--max-steps", "3"]
    assert main(resume) == 2
    err = one_line(capsys.readouterr().err)
    assert str(run / "checkpoints" / "last.ckpt") in err and "--trust-checkpoint" in err, err
    assert not marker.exists()
    # With the option the run goes on, and the file's code ran.
    assert main([*resume, "--trust-checkpoint"]) == 0
    assert marker.exists()
    # the checkpoint it wrote is the project's own again: plain values, at the third step
    assert read_torch_file(run / "checkpoints" / "last.ckpt", alternative="")["global_step"] == 3
    # The option is not saved with the run: the next resume reads without running code again.
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert "trust_checkpoint" not in saved


def test_trust_checkpoint_cannot_come_from_a_config_file(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("method: simclr\ndata: digits\ntrust-checkpoint: true\n")
    assert main(["fit", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "command line only" in one_line(capsys.readouterr().err)


# --- every other modality: its own run loads; its resume (its reader and the engine's) refuses -----

@pytest.mark.parametrize("modality", ["tabular", "timeseries", "graph", "text", "pairs"])
def test_every_modality_loads_its_own_run_and_its_resume_refuses_a_checkpoint_that_carries_code(
        modality, tmp_path, monkeypatch, capsys):
    method, extra = case(modality, tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["fit", "--method", method, *extra, *COMMON, "--out", str(out)]) == 0, capsys.readouterr().err
    folder = out / "seed-1" if modality == "graph" else out
    assert contrastkit.load(folder) is not None  # the project's own run loads without trusting it
    marker = tmp_path / "marker"
    checkpoint = plant(folder / "checkpoints" / "last.ckpt", marker)
    (folder / "summary.json").unlink()  # as if the run had been killed after its checkpoint
    capsys.readouterr()
    assert main(["fit", "--resume", "--out", str(out)]) == 2
    err = one_line(capsys.readouterr().err)
    assert str(checkpoint) in err and "was not read" in err and "without resuming" in err, err
    assert not marker.exists()


# --- the other loaders ---------------------------------------------------------------------------

def test_ts2vec_load_refuses_a_file_that_carries_code(tmp_path):
    from contrastkit.modalities.timeseries.ts2vec import TS2Vec

    marker = tmp_path / "marker"
    path = planted_file(tmp_path / "model.pt", marker, {"config": {}, "averaged_encoder": {}})
    with pytest.raises(DataError, match="was not read") as refused:
        TS2Vec.load(path)
    assert str(path) in str(refused.value)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"ts2vec": {}}))
    with pytest.raises(DataError, match="was not read"):
        contrastkit.load(tmp_path)
    assert not marker.exists()


def test_pairs_loader_refuses_heads_that_carry_code(tmp_path):
    from contrastkit.modalities.pairs.run_folder import CONFIG_FILE, HEADS_FILE, load_pairs_run

    marker = tmp_path / "marker"
    (tmp_path / CONFIG_FILE).write_text(yaml.safe_dump({"objective": "clip"}))
    (tmp_path / "tower_a").mkdir()
    path = planted_file(tmp_path / HEADS_FILE, marker)
    for load in (load_pairs_run, contrastkit.load):
        with pytest.raises(DataError, match="was not read") as refused:
            load(tmp_path)
        assert str(path) in str(refused.value)
    assert not marker.exists()


def test_graph_loader_refuses_a_checkpoint_that_carries_code(tmp_path):
    from contrastkit.modalities.graph.run_folder import load_trained

    marker = tmp_path / "marker"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"command": "graph", "options": {}}))
    path = planted_file(tmp_path / "checkpoints" / "last.ckpt", marker, {"state_dict": {}})
    for load in (load_trained, contrastkit.load):
        with pytest.raises(DataError, match="was not read") as refused:
            load(tmp_path)
        assert str(path) in str(refused.value) and "trust_checkpoint=True" in str(refused.value)
    assert not marker.exists()


def test_a_text_model_whose_weights_are_a_pickle_is_refused(tmp_path):
    from contrastkit.modalities.text.encoders import TextEncoder

    marker = tmp_path / "marker"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    path = planted_file(tmp_path / "pytorch_model.bin", marker)
    for load in (TextEncoder.from_folder, contrastkit.load):
        with pytest.raises(DataError, match="safetensors") as refused:
            load(tmp_path)
        assert str(path) in str(refused.value)
    assert not marker.exists()


def test_a_truncated_checkpoint_is_a_data_error_naming_it(image_run, tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes((image_run / "checkpoints" / "last.ckpt").read_bytes()[:1000])
    with pytest.raises(DataError, match="could not be read") as failed:
        contrastkit.load(broken)
    assert str(broken) in str(failed.value)


# --- the source: no loader that can run a file's code, except those allowed below ---------------------

SRC = Path(__file__).resolve().parents[1] / "src" / "contrastkit"

# (file under src/contrastkit, enclosing function, what): why it is allowed.
ALLOWED = {
    ("core/safe_loading.py", "read_torch_file", "torch.load weights_only=<expression>"):
        "the one reader of torch files: weights_only=not trust, and trust is only ever the user's explicit "
        "--trust-checkpoint / trust_checkpoint=True, documented as running the file's code",
    ("engine/trainer.py", "_train", "Lightning fit weights_only=<expression>"):
        "Lightning's resume load: weights_only=not trust_checkpoint (the same explicit choice)",
    ("modalities/graph/sources.py", "", "import pickle"):
        "the Planetoid reader: the raw Planetoid files are Python-2 pickles, read by _PlanetoidUnpickler",
    ("modalities/graph/sources.py", "_PlanetoidUnpickler", "pickle.Unpickler"):
        "a restricted unpickler: find_class admits only numpy arrays and dtypes, scipy CSR matrices, "
        "defaultdict and list, so a Planetoid file cannot name any other callable",
    ("core/safe_loading.py", "", "import pickle"):
        "only for pickle.UnpicklingError, the refusal of torch's weights-only unpickler",
}

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_constant(node: ast.expr | None, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _findings(path: Path) -> list[tuple[str, str, int]]:
    """(enclosing function or class, what, line) of every use that could run a file's code."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, str, int]] = []

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                and not scope else scope
            check(child, inner)
            visit(child, inner)

    def check(node: ast.AST, scope: str) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in UNSAFE_MODULES:
                    found.append(("", f"import {alias.name}", node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            names = {a.name for a in node.names}
            loaders = names & {"load", "loads", "load_all", "unsafe_load", "full_load", "Loader", "UnsafeLoader",
                               "Unpickler"}
            if root in UNSAFE_MODULES or (root in ("torch", "yaml", "numpy") and loaders):
                found.append((scope, f"from {node.module} import {', '.join(sorted(names))}", node.lineno))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in UNSAFE_MODULES and not node.attr.endswith("Error"):  # errors load nothing
            found.append((scope, f"{node.value.id}.{node.attr}", node.lineno))
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name == "torch.load":
                weights_only = _keyword(node, "weights_only")
                if weights_only is None or isinstance(weights_only, ast.Constant):
                    if not _is_constant(weights_only, True):
                        found.append((scope, "torch.load without weights_only=True", node.lineno))
                else:
                    found.append((scope, "torch.load weights_only=<expression>", node.lineno))
            elif name in ("np.load", "numpy.load"):
                allow = _keyword(node, "allow_pickle")
                if (allow is not None and not _is_constant(allow, False)) or any(k.arg is None for k in node.keywords):
                    found.append((scope, "np.load that may allow pickles", node.lineno))
            elif name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.unsafe_load_all",
                          "yaml.full_load", "yaml.full_load_all"):
                loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                if not (name in ("yaml.load", "yaml.load_all") and loader is not None
                        and _dotted(loader).split(".")[-1] in SAFE_YAML_LOADERS):
                    found.append((scope, f"{name} without a safe loader", node.lineno))
            elif _keyword(node, "ckpt_path") is not None:  # Lightning's resume load
                weights_only = _keyword(node, "weights_only")
                if weights_only is None or (isinstance(weights_only, ast.Constant) and weights_only.value is not True):
                    found.append((scope, "Lightning fit without weights_only=True", node.lineno))
                elif not isinstance(weights_only, ast.Constant):
                    found.append((scope, "Lightning fit weights_only=<expression>", node.lineno))
            elif name.endswith(".from_pretrained") and "Tokenizer" not in name and "Config" not in name:
                if not _is_constant(_keyword(node, "use_safetensors"), True):
                    found.append((scope, f"{name} without use_safetensors=True", node.lineno))
            if _is_constant(_keyword(node, "trust_remote_code"), True):
                found.append((scope, "trust_remote_code=True", node.lineno))

    visit(tree, "")
    return found


def _all_findings() -> dict[tuple[str, str, str], list[int]]:
    found: dict[tuple[str, str, str], list[int]] = {}
    for path in sorted(SRC.rglob("*.py")):
        for scope, what, line in _findings(path):
            found.setdefault((path.relative_to(SRC).as_posix(), scope, what), []).append(line)
    return found


def test_the_walker_sees_each_kind_of_unsafe_load(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import pickle, joblib\nimport torch, yaml, numpy as np\nfrom transformers import AutoModel\n"
        "def f(p, t, trainer):\n"
        "    torch.load(p)\n    torch.load(p, weights_only=False)\n    torch.load(p, weights_only=t)\n"
        "    torch.load(p, weights_only=True)\n"
        "    pickle.loads(p)\n    np.load(p, allow_pickle=True)\n    np.load(p, allow_pickle=False)\n    np.load(p)\n"
        "    yaml.load(p)\n    yaml.load(p, Loader=yaml.SafeLoader)\n    yaml.safe_load(p)\n    yaml.unsafe_load(p)\n"
        "    trainer.fit(None, ckpt_path=p)\n    trainer.fit(None, ckpt_path=p, weights_only=True)\n"
        "    AutoModel.from_pretrained(p)\n    AutoModel.from_pretrained(p, use_safetensors=True)\n")
    found = {(what, line) for _, what, line in _findings(sample)}
    assert found == {
        ("import pickle", 1), ("import joblib", 1),
        ("torch.load without weights_only=True", 5), ("torch.load without weights_only=True", 6),
        ("torch.load weights_only=<expression>", 7), ("pickle.loads", 9), ("np.load that may allow pickles", 10),
        ("yaml.load without a safe loader", 13), ("yaml.unsafe_load without a safe loader", 16),
        ("Lightning fit without weights_only=True", 17), ("AutoModel.from_pretrained without use_safetensors=True", 19),
    }, found


def test_every_use_that_could_run_a_files_code_is_allowed_by_name():
    found = _all_findings()
    unexplained = {key: lines for key, lines in found.items() if key not in ALLOWED}
    assert not unexplained, (
        "Reading a file must not run its code: use contrastkit.core.safe_loading.read_torch_file, "
        "safetensors + JSON, np.load(allow_pickle=False), yaml.safe_load; or add the use to ALLOWED with its "
        f"reason. Found: {unexplained}")
    stale = set(ALLOWED) - set(found)
    assert not stale, f"ALLOWED names uses the source no longer has: {stale}"
