"""Fine-tuning from scratch (the baseline of issue 22's SparK claim): the run's architecture freshly
initialised, everything else as for the run's own weights."""

import json

import numpy as np
import pytest
import torch

from tests.fine_tune_reference import digits_simclr_run


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    return digits_simclr_run(tmp_path_factory.mktemp("scratch") / "run", limit=400, max_steps=4)


def test_from_scratch_probes_an_encoder_built_afresh_and_not_the_runs(image_run):
    from contrastkit.evaluation.fine_tune import balanced_labels, carve_development
    from contrastkit.evaluation.knn import weighted_knn_accuracy
    from contrastkit.modalities.image.encoders import build_encoder
    from contrastkit.modalities.image.fine_tune import fine_tune_image_run, run_rows
    from contrastkit.modalities.image.sources import open_image_source
    from contrastkit.modalities.image.training.restore import load_method

    seed = 3
    scratch = fine_tune_image_run(image_run, 30, epochs=1, dev_size=60, seed=seed, from_scratch=True)
    trained = fine_tune_image_run(image_run, 30, epochs=1, dev_size=60, seed=seed)
    assert scratch["init"] == "scratch" and trained["init"] == "run"

    # A second derivation of the scratch kNN figure: the encoder built by hand under the seed, the rows
    # carved and drawn by the shared helpers, the embeddings of the run's eval view.
    method, config, data = load_method(image_run / "checkpoints" / "last.ckpt")
    torch.manual_seed(seed)
    encoder = build_encoder(config.backbone, in_channels=data.channels, image_size=data.image_size,
                            width=config.width).eval()
    rows, y, train_part, _ = run_rows(image_run)
    images = open_image_source(config.data, image_size=data.image_size, channels=data.channels).images
    images = images[torch.from_numpy(rows.astype(np.int64))]
    rest, dev = carve_development(y, train_part, 60, seed)
    labelled = balanced_labels(y, rest, 30, seed)
    with torch.inference_mode():
        features = encoder(method.eval_view(images)).numpy()
    expected = weighted_knn_accuracy(features[labelled], y[labelled], features[dev], y[dev], 30, 0.1)
    assert scratch["knn_top1"] == pytest.approx(expected, abs=1e-9)
    assert json.dumps(scratch["tried"]) != json.dumps(trained["tried"]) or scratch["knn_top1"] != trained["knn_top1"]


def test_from_scratch_refuses_a_backbone_the_run_sized_itself(tmp_path):
    from contrastkit.core.errors import ConfigError
    from contrastkit.modalities.image.config import FitConfig
    from contrastkit.modalities.image.fine_tune import fresh_backbone
    from contrastkit.modalities.image.methods.parts import DataInfo

    with pytest.raises(ConfigError, match="backbone auto"):
        fresh_backbone(FitConfig(method="mae", backbone="auto"), DataInfo(channels=3, image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, num_samples=10), 0)


def test_the_command_line_fine_tunes_from_scratch_and_says_so(image_run, tmp_path):
    from contrastkit.cli import main

    output = tmp_path / "ft.json"
    assert main(["evaluate", "--fine-tune", "--from-scratch", "--run", str(image_run), "--labels", "30", "--epochs",
                 "1", "--dev-size", "60", "--seed", "3", "--output", str(output)]) == 0
    figures = json.loads(output.read_text())
    assert figures["init"] == "scratch"
    from contrastkit.modalities.image.fine_tune import fine_tune_image_run

    direct = fine_tune_image_run(image_run, 30, epochs=1, dev_size=60, seed=3, from_scratch=True)
    assert figures["knn_top1"] == direct["knn_top1"] and figures["fine_tune_top1"] == direct["fine_tune_top1"]
