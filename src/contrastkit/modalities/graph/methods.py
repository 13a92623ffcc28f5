"""Builders of the graph methods: a graph and the options a user gave -> the method.

Each builder takes the options it knows from ``given`` (command-line names with ``_``); the
others of the graph command line do not apply to it and are refused before it is called
(:mod:`contrastkit.modalities.graph.plugin` lists them per method).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.graph.sources import Graph


def build_graphmae(graph: Graph, given: dict[str, Any]) -> torch.nn.Module:
    from contrastkit.modalities.graph.graphmae import GraphMAE

    options = {k: given[k] for k in ("encoder", "mask_rate", "replace_rate", "alpha") if k in given}
    if "hidden" in given:
        options["hidden_dim"] = given["hidden"]
    if "gat_init" in given:
        options["init"] = given["gat_init"]
    return GraphMAE(graph.num_features, **options)


def build_scgc(graph: Graph, given: dict[str, Any]) -> torch.nn.Module:
    from contrastkit.modalities.graph.scgc import SCGC

    if graph.y is None and "clusters" not in given:
        raise ConfigError("scgc needs --clusters K on a graph without labels.")
    options = {k: given[k] for k in ("order", "temperature", "warmup_epochs", "pretrain_epochs",
                                     "reconstruction_weight") if k in given}
    if "hidden" in given:
        options["hidden"] = (given["hidden"],) * 2
    if "embedding_dim" in given:
        options["embedding_dim"] = given["embedding_dim"]
    return SCGC(graph.num_features, graph.adjacency(), given.get("clusters", graph.num_classes),
                cumulative=not given.get("no_influence", False), **options)


def build_graphcl(graph: Graph, given: dict[str, Any]) -> torch.nn.Module:
    from contrastkit.modalities.graph.graphcl import GraphCL

    options = {k: given[k] for k in ("encoder", "objective", "temperature") if k in given}
    if "hidden" in given:
        options["hidden_dim"] = given["hidden"]
    return GraphCL(graph.num_features, **options)


def build_graphclip(graph: Graph, given: dict[str, Any]) -> torch.nn.Module:
    from contrastkit.modalities.graph.graphclip import GraphCLIP

    if "text_embeddings" not in given:
        raise ConfigError("graphclip needs --text-embeddings FILE.npy: one row per node (its summary's embedding).")
    path = Path(given["text_embeddings"])
    if not path.is_file():
        raise DataError(f"Text embeddings '{path}' do not exist. Check the path.")
    text = torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32))
    return GraphCLIP(graph.num_features, text, **({"encoder": given["encoder"]} if "encoder" in given else {}))
