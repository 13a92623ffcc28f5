"""split.json, the run folder's record of which rows of embeddings.npy trained and which were held out:
both forms read back as the rows written, a folder from before it (an audio run's parts.json) still
reads, and a file that cannot belong to the run is refused with the file named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contrastkit.core.errors import DataError
from contrastkit.engine.run_folder import read_split, write_split


@pytest.mark.parametrize("train, holdout, written", [
    (np.arange(0, 6), np.arange(6, 9), ([0, 6], [6, 9])),  # an image run: the training part first
    ([4, 0, 7], [2, 9], ({"rows": [4, 0, 7]}, {"rows": [2, 9]})),  # a run in its data's order
    (np.arange(5), [], ([0, 5], [0, 0])),  # nothing held out
])
def test_both_forms_read_back_as_the_rows_written(tmp_path, train, holdout, written):
    write_split(tmp_path, train, holdout, held_out="a carve")
    split = json.loads((tmp_path / "split.json").read_text())
    assert (split["train"], split["holdout"], split["held_out"]) == (*written, "a carve")
    read_train, read_holdout = read_split(tmp_path)
    assert read_train.tolist() == list(train) and read_holdout.tolist() == list(holdout)
    assert read_train.dtype == np.int64 == read_holdout.dtype


def test_an_audio_run_from_before_split_json_reads_from_its_parts_file(tmp_path):
    (tmp_path / "parts.json").write_text(json.dumps({"scored": "dev", "train": [0, 2, 3], "evaluated": [1, 5]}))
    train, holdout = read_split(tmp_path)
    assert train.tolist() == [0, 2, 3] and holdout.tolist() == [1, 5]
    assert read_split(tmp_path / "elsewhere") is None  # no record at all


def test_a_file_that_cannot_be_the_runs_is_refused(tmp_path):
    write_split(tmp_path, [0, 1, 7], [2])
    assert read_split(tmp_path, rows=8)[0].tolist() == [0, 1, 7]
    with pytest.raises(DataError, match="outside the 5 rows"):
        read_split(tmp_path, rows=5)
    (tmp_path / "split.json").write_text(json.dumps({"train": [0, 3]}))
    with pytest.raises(DataError, match="split.json"):
        read_split(tmp_path)
