"""No scoring command defaults to a test split (issue 17): each default is a development split
(SciFact: a fixed carve of the train claims; code-docstring: valid; UCR: a fixed carve of the
training split), the test split is scored only when named, and then the command says so."""

from __future__ import annotations

import argparse
import inspect
import json

import numpy as np
import pytest

from contrastkit.cli import build_parser, main
from tests.conftest import data_path


def parse(argv: list[str]) -> argparse.Namespace:
    """The options as ``contrastkit`` itself parses them (the real parsers, nothing run): a training
    command through the one fit command, the others through the main parser."""
    from contrastkit.cli import FIT_ALIASES
    from contrastkit.fit_command import parse_fit

    if argv[0] in FIT_ALIASES:
        return parse_fit(argv[1:], modality=FIT_ALIASES[argv[0]], prog=f"contrastkit {argv[0]}")[2]
    return build_parser().parse_args(argv)


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser: the main parser's subcommands and each modality's fit options."""
    from contrastkit.fit_command import OptionParser
    from contrastkit.modalities import load_plugins

    parsers = {name: command for name, command in build_parser().commands.items()
               if name not in ("fit", "text", "pairs", "graph", "timeseries")}
    for name, modality in load_plugins().items():
        parsers[name] = OptionParser(prog=f"contrastkit fit --modality {name}")
        modality.load_cli().add_arguments(parsers[name])
    return parsers


# ------------------------------------------------------------------------- the parsers' defaults


def test_evaluate_scores_the_dev_split_unless_told():
    args = parse(["evaluate", "--task", "retrieval", "--model", "bm25", "--data", "scifact"])
    assert args.split == "dev"


def test_text_scores_the_dev_split_unless_told():
    from contrastkit.modalities.text.cli import DEFAULTS

    # Unset on the command line, the option takes the saved run's value (--resume) or the default.
    args = parse(["text", "--method", "simcse", "--data", "s.txt", "--out", "run", "--eval-retrieval", "scifact"])
    assert args.eval_split is None and DEFAULTS["eval_split"] == "dev"


def test_pairs_scores_code_docstring_valid_and_a_file_only_on_a_named_split():
    from contrastkit.modalities.pairs.cli import code_docstring_eval_split

    args = parse(["pairs", "--data", "code-docstring", "--out", "run"])
    assert args.eval_split is None and code_docstring_eval_split(args) == "valid"


def test_timeseries_scores_a_dev_carve_unless_told():
    from contrastkit.modalities.timeseries.cli import RUN_DEFAULTS

    args = parse(["timeseries", "--data", "GunPoint", "--out", "run"])
    assert args.eval_split is None and RUN_DEFAULTS["eval_split"] == "dev"


def test_no_split_option_of_any_command_defaults_to_test():
    split_options = [(name, action.dest, action.default) for name, command in command_parsers().items()
                     for action in command._actions if "split" in action.dest]
    assert {(name, dest) for name, dest, _ in split_options} >= {
        ("evaluate", "split"), ("text", "eval_split"), ("pairs", "eval_split"), ("timeseries", "eval_split")}
    assert all(default != "test" for _, _, default in split_options), split_options


def test_library_readers_and_scorers_default_to_dev():
    from contrastkit.modalities.text.evaluation import evaluate_text_task
    from contrastkit.modalities.text.sources import read_beir

    for function in (read_beir, evaluate_text_task):
        assert inspect.signature(function).parameters["split"].default == "dev", function.__name__


# ------------------------------------------------------------------------- what the commands score


def test_evaluate_bm25_on_scifact_scores_the_dev_carve_and_names_a_test_run(capsys):
    pytest.importorskip("bm25s", reason="the BM25 baseline needs bm25s")
    scifact = str(data_path("scifact"))
    assert main(["evaluate", "--task", "retrieval", "--model", "bm25", "--data", scifact]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["split"] == "dev" and printed["queries"] == 268
    assert "test split" not in captured.err
    assert main(["evaluate", "--task", "retrieval", "--model", "bm25", "--data", scifact, "--split", "test"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["queries"] == 300
    assert captured.err.count("scoring the test split") == 1


def test_pairs_on_code_docstring_reads_valid_by_default():
    from contrastkit.modalities.pairs.cli import read_train_and_eval
    from contrastkit.modalities.pairs.pairs import read_code_docstring

    data_path("code-docstring")  # skips with the reason when the pairs are absent
    _, evaluation = read_train_and_eval(parse(["pairs", "--data", "code-docstring", "--out", "run"]))
    assert evaluation.ids == read_code_docstring("valid").ids and len(evaluation) == 436


# ------------------------------------------------------------------------- the time-series dev carve


def round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def test_timeseries_dev_carve_is_stratified_disjoint_and_fixed():
    from contrastkit.modalities.timeseries.cli import carve_dev_split

    labels = np.array([0] * 34 + [1] * 33 + [2] * 3 + [3] * 1)
    labels = labels[np.random.default_rng(7).permutation(labels.size)]
    kept, dev = carve_dev_split(labels.size, labels)
    assert np.intersect1d(kept, dev).size == 0
    assert np.array_equal(np.sort(np.concatenate([kept, dev])), np.arange(labels.size))
    for label in range(4):  # round(0.3 n) per class, but never the class's last series
        n = int(np.sum(labels == label))
        assert int(np.sum(labels[dev] == label)) == min(round_half_up(0.3 * n), n - 1)
    again_kept, again_dev = carve_dev_split(labels.size, labels)
    assert np.array_equal(again_dev, dev) and np.array_equal(again_kept, kept)
    _, unlabeled_dev = carve_dev_split(10)
    assert unlabeled_dev.size == 3


def test_timeseries_test_data_needs_the_test_split_named(tmp_path, capsys):
    code = main(["timeseries", "--data", "a.ts", "--test-data", "b.ts", "--out", str(tmp_path / "run")])
    assert code == 2 and "scored only with --eval-split test" in capsys.readouterr().err.replace("\n", " ")


def test_timeseries_default_run_scores_the_carve_not_the_test_split(tmp_path, capsys):
    pytest.importorskip("aeon", reason="aeon ships the bundled UCR sets")
    from contrastkit.modalities.timeseries.sources import load_bundled

    out = tmp_path / "ipd"
    assert main(["timeseries", "--data", "ItalyPowerDemand", "--iters", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    train = load_bundled("ItalyPowerDemand", "train")  # 67 series, classes of 34 and 33
    expected_dev = sum(round_half_up(0.3 * n) for n in np.bincount(train.y))
    assert summary["eval_split"] == "dev" and expected_dev == 20
    assert (summary["train_series"], summary["eval_series"]) == (67 - 20, 20)
    dev = np.load(out / "dev_indices.npy")
    np.testing.assert_array_equal(np.load(out / "dev_labels.npy"), train.y[dev])
    assert np.load(out / "dev_embeddings.npy").shape == (20, 320)
    assert not (out / "test_embeddings.npy").exists()
    assert "test split" not in capsys.readouterr().err
