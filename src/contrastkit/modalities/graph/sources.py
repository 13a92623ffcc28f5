"""Graphs on disk -> :class:`Graph` (node features, edges, optional labels and split).

Readers:

* :func:`read_planetoid` — the raw Planetoid files (Yang, Cohen & Salakhutdinov, ICML 2016) as
  published in ``kimiyoung/planetoid`` and consumed by PyG's ``Planetoid`` and DGL: eight
  Python-2 pickles ``ind.<name>.{x,tx,allx,y,ty,ally,graph}`` and the text ``ind.<name>.test.index``.
  We parse them ourselves, with an unpickler that only admits the numpy / scipy.sparse /
  collections classes those files contain, so reading needs neither torch-geometric nor a
  writable folder (PyG writes ``processed/`` beside ``raw/``). The result matches PyG's exactly:
  features in the public order, the public split (the first 20 labelled nodes per class = 140
  train, the next 500 validation, the 1,000 test nodes of ``test.index``), and the edges with
  duplicates and self-loops removed, both directions stored (Cora: 10,556 directed edges).
* :func:`read_edge_list_graph` — users' own graphs: an edge-list CSV (``src,dst[,weight]``,
  optional header), a node-feature file (CSV of numbers, one row per node, or ``.npy``) and
  optional labels (one integer per line, or ``.npy``; ``-1`` = unlabelled) and an optional split
  (one word per line: ``train``, ``val``, ``test``, or ``-`` for a node in none of them).

:func:`open_graph_source` resolves a built-in name (``cora``, ``citeseer``) through
:func:`contrastkit.core.paths.data_root` (``<root>/planetoid/<Name>/raw``) or reads a folder.
"""

from __future__ import annotations

import csv
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.core.paths import data_root

PLANETOID_NAMES = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}
PLANETOID_PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
PLANETOID_VALIDATION_SIZE = 500


@dataclass
class Graph:
    """One graph held in memory.

    Attributes:
        x: (N, F) float32 node features.
        edge_index: (2, E) int64; column ``e`` is the directed edge ``edge_index[0, e] ->
            edge_index[1, e]``. Undirected graphs store both directions.
        edge_weight: (E,) float32 or None (all weights 1).
        y: (N,) int64 class per node, ``-1`` for unlabelled nodes, or None.
        train_mask, val_mask, test_mask: (N,) bool split masks, or None when there is no split.
        name: for messages and run names.
    """

    x: Tensor
    edge_index: Tensor
    edge_weight: Tensor | None = None
    y: Tensor | None = None
    train_mask: Tensor | None = None
    val_mask: Tensor | None = None
    test_mask: Tensor | None = None
    name: str = "graph"
    extras: dict = field(default_factory=dict)

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    @property
    def num_classes(self) -> int:
        return 0 if self.y is None else int(self.y.max().item()) + 1

    def adjacency(self, self_loops: bool = False) -> sp.csr_matrix:
        """The (N, N) scipy CSR adjacency A with A[src, dst] = weight (duplicates summed)."""
        n = self.num_nodes
        src, dst = self.edge_index.cpu().numpy()
        weight = (
            np.ones(src.shape[0], dtype=np.float32)
            if self.edge_weight is None
            else self.edge_weight.cpu().numpy().astype(np.float32)
        )
        adjacency = sp.csr_matrix((weight, (src, dst)), shape=(n, n))
        if self_loops:
            adjacency = adjacency + sp.identity(n, dtype=np.float32, format="csr")
        return adjacency.tocsr()

    def subgraph(self, nodes: Tensor) -> Graph:
        """The subgraph induced by ``nodes`` (sorted global ids), relabelled 0..len(nodes)-1;
        ``extras["node_ids"]`` keeps the global ids."""
        position = torch.full((self.num_nodes,), -1, dtype=torch.long, device=self.x.device)
        position[nodes] = torch.arange(len(nodes), device=self.x.device)
        src, dst = position[self.edge_index[0]], position[self.edge_index[1]]
        keep = (src >= 0) & (dst >= 0)

        def take(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[nodes]

        return Graph(
            x=self.x[nodes],
            edge_index=torch.stack([src[keep], dst[keep]]),
            edge_weight=None if self.edge_weight is None else self.edge_weight[keep],
            y=take(self.y),
            train_mask=take(self.train_mask),
            val_mask=take(self.val_mask),
            test_mask=take(self.test_mask),
            name=self.name,
            extras={"node_ids": nodes},
        )

    def with_features(self, x: Tensor) -> Graph:
        """The same graph with other node features (e.g. normalised)."""
        return replace(self, x=x)

    def to(self, device: torch.device | str) -> Graph:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self,
            x=self.x.to(device),
            edge_index=self.edge_index.to(device),
            edge_weight=move(self.edge_weight),
            y=move(self.y),
            train_mask=move(self.train_mask),
            val_mask=move(self.val_mask),
            test_mask=move(self.test_mask),
        )

    def to_pyg(self):
        """A ``torch_geometric.data.Data`` with the same tensors (needs torch-geometric)."""
        from torch_geometric.data import Data

        data = Data(x=self.x, edge_index=self.edge_index, y=self.y)
        for key in ("edge_weight", "train_mask", "val_mask", "test_mask"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data


def row_normalize_features(x: Tensor) -> Tensor:
    """x_i / sum_j x_ij (rows that sum to 0 stay 0); PyG's ``NormalizeFeatures``, DGL's default
    for the Planetoid sets, which GraphMAE trains on."""
    total = x.sum(dim=1, keepdim=True)
    return x / total.clamp(min=1e-12) * (total != 0)


def coalesce_edges(edge_index: np.ndarray, num_nodes: int, make_undirected: bool = True) -> np.ndarray:
    """Unique directed edges without self-loops, both directions when ``make_undirected``, sorted
    by (src, dst). Returns (2, E) int64."""
    src, dst = edge_index
    if make_undirected:
        src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
    keep = src != dst
    keys = np.unique(src[keep].astype(np.int64) * num_nodes + dst[keep])
    return np.stack([keys // num_nodes, keys % num_nodes]).astype(np.int64)


# --- Planetoid -----------------------------------------------------------------------------------


class _PlanetoidUnpickler(pickle.Unpickler):
    """Admits only the classes the Planetoid pickles are made of (unpickling any other class
    could run code from the file)."""

    def find_class(self, module: str, name: str):
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("scipy.sparse.csr", "csr_matrix"): sp.csr_matrix,
            ("collections", "defaultdict"): __import__("collections").defaultdict,
            ("builtins", "list"): list,
            ("__builtin__", "list"): list,
        }
        if (module, name) in allowed:
            return allowed[module, name]
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        raise pickle.UnpicklingError(f"class {module}.{name} is not allowed in a Planetoid file")


def _load_planetoid_part(path: Path):
    if not path.is_file():
        raise DataError(
            f"Planetoid file '{path}' is missing. A Planetoid raw folder holds ind.<name>."
            f"{{{','.join(PLANETOID_PARTS)}}} (from github.com/kimiyoung/planetoid, data/)."
        )
    if path.name.endswith("test.index"):
        try:
            return np.array([int(line) for line in path.read_text().split()], dtype=np.int64)
        except ValueError as err:
            raise DataError(f"'{path}' must hold one integer node id per line ({err}).") from err
    try:
        with path.open("rb") as f:
            return _PlanetoidUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, TypeError) as err:
        raise DataError(f"Cannot read '{path}' as a Planetoid pickle ({err}).") from err


def read_planetoid(raw_dir: str | Path, name: str = "cora") -> Graph:
    """The Planetoid graph ``name`` from the raw files in ``raw_dir`` (see the module docstring).

    The test nodes are stored in ``tx``/``ty`` in file order and their graph ids in
    ``test.index`` (not sorted); ``allx``/``ally`` hold the first ``len(allx)`` nodes. Features
    are assembled as ``vstack(allx, tx)`` and the test rows permuted so that row ``i`` is node
    ``i``. CiteSeer has isolated test ids missing from ``tx``; they get zero features and label
    ``-1`` (PyG pads with zeros too, and gives them class 0).
    """
    raw_dir = Path(raw_dir)
    key = name.lower()
    if not raw_dir.is_dir():
        raise DataError(f"Planetoid raw folder '{raw_dir}' does not exist. Check the path (or CONTRASTKIT_DATA).")
    parts = {p: _load_planetoid_part(raw_dir / f"ind.{key}.{p}") for p in PLANETOID_PARTS}
    test_index = parts["test.index"]
    test_sorted = np.sort(test_index)
    x_train = sp.csr_matrix(parts["allx"]).astype(np.float32)
    x_test = sp.csr_matrix(parts["tx"]).astype(np.float32)
    y_train = np.asarray(parts["ally"])
    y_test = np.asarray(parts["ty"])

    span = test_sorted.max() - test_sorted.min() + 1
    if span > x_test.shape[0]:  # CiteSeer: pad the ids absent from tx
        full_x = sp.lil_matrix((span, x_test.shape[1]), dtype=np.float32)
        full_x[test_sorted - test_sorted.min()] = x_test
        full_y = np.zeros((span, y_test.shape[1]), dtype=y_test.dtype)
        full_y[test_sorted - test_sorted.min()] = y_test
        x_test, y_test = full_x.tocsr(), full_y

    features = sp.vstack([x_train, x_test]).tolil()
    labels_onehot = np.vstack([y_train, y_test])
    # Row test_sorted[k] holds the k-th test row of the file; move it to graph id test_index[k].
    features[test_index] = features[test_sorted]
    labels_onehot[test_index] = labels_onehot[test_sorted]
    n = features.shape[0]
    labels = labels_onehot.argmax(axis=1).astype(np.int64)
    labels[labels_onehot.sum(axis=1) == 0] = -1

    adjacency_lists = parts["graph"]
    src = [u for u, neighbours in adjacency_lists.items() for _ in neighbours]
    dst = [v for neighbours in adjacency_lists.values() for v in neighbours]
    edges = np.array([src, dst], dtype=np.int64)
    if edges.size and (edges.min() < 0 or edges.max() >= n):
        raise DataError(f"'{raw_dir}/ind.{key}.graph' refers to node ids outside 0..{n - 1}.")
    edge_index = coalesce_edges(edges, n, make_undirected=False)

    num_train = parts["y"].shape[0]  # x/y hold the labelled training nodes, the first of allx
    masks = {}
    for split, index in (
        ("train", np.arange(num_train)),
        ("val", np.arange(num_train, num_train + PLANETOID_VALIDATION_SIZE)),
        ("test", test_index),
    ):
        mask = np.zeros(n, dtype=bool)
        mask[index] = True
        masks[split] = torch.from_numpy(mask)
    return Graph(
        x=torch.from_numpy(features.toarray().astype(np.float32)),
        edge_index=torch.from_numpy(edge_index),
        y=torch.from_numpy(labels),
        train_mask=masks["train"],
        val_mask=masks["val"],
        test_mask=masks["test"],
        name=key,
    )


# --- users' own graphs ---------------------------------------------------------------------------


def _read_numeric_csv(path: Path, what: str) -> list[list[str]]:
    """Rows of a CSV (a first row that is not numeric is taken as a header and dropped)."""
    if not path.is_file():
        raise DataError(f"The {what} file '{path}' does not exist. Check the path.")
    with path.open(newline="") as f:
        rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    if rows:
        try:
            [float(cell) for cell in rows[0]]
        except ValueError:
            rows = rows[1:]  # header
    if not rows:
        raise DataError(
            f"The {what} file '{path}' has no data rows (a first row that is not all numbers is "
            f"read as a header)."
        )
    return rows


def _read_edges(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    rows = _read_numeric_csv(path, "edge-list")
    widths = {len(row) for row in rows}
    if len(widths) != 1 or widths.pop() not in (2, 3):
        bad = next(i for i, row in enumerate(rows) if len(row) not in (2, 3) or len(row) != len(rows[0]))
        raise DataError(
            f"Edge list '{path}' must have 2 columns (src,dst) or 3 (src,dst,weight) on every row; "
            f"data row {bad + 1} has {len(rows[bad])}: {rows[bad]}. Fix the ragged rows."
        )
    try:
        src_dst = np.array([[int(row[0]), int(row[1])] for row in rows], dtype=np.int64).T
        weight = np.array([float(row[2]) for row in rows], dtype=np.float32) if len(rows[0]) == 3 else None
    except ValueError as err:
        raise DataError(
            f"Edge list '{path}': node ids must be integers 0..N-1 and weights numbers ({err})."
        ) from err
    return src_dst, weight


def _read_matrix(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        if not path.is_file():
            raise DataError(f"The node-feature file '{path}' does not exist. Check the path.")
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"Cannot read '{path}' as a .npy array ({err}).") from err
        if array.ndim != 2:
            raise DataError(f"Node features '{path}' must be a 2-D array (nodes, features), got shape {array.shape}.")
        return array.astype(np.float32)
    rows = _read_numeric_csv(path, "node-feature")
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise DataError(
                f"Node features '{path}' are ragged: data row 1 has {width} values but row {i + 1} "
                f"has {len(row)}. Every node needs the same number of features."
            )
    try:
        return np.array(rows, dtype=np.float32)
    except ValueError as err:
        raise DataError(f"Node features '{path}' must be numbers ({err}).") from err


def _read_labels(path: Path, num_nodes: int) -> np.ndarray:
    if path.suffix == ".npy":
        if not path.is_file():
            raise DataError(f"The label file '{path}' does not exist. Check the path.")
        labels = np.load(path, allow_pickle=False).reshape(-1)
    else:
        rows = _read_numeric_csv(path, "label")
        if any(len(row) != 1 for row in rows):
            raise DataError(f"Label file '{path}' must hold one integer per line (one line per node).")
        labels = np.array([row[0] for row in rows])
    try:
        labels = labels.astype(np.float64)
        if not np.all(labels == np.round(labels)):
            raise ValueError("non-integer value")
        labels = labels.astype(np.int64)
    except ValueError as err:
        raise DataError(f"Labels in '{path}' must be integers (-1 for unlabelled) ({err}).") from err
    if labels.shape[0] != num_nodes:
        raise DataError(
            f"Label file '{path}' has {labels.shape[0]} labels but the feature file has {num_nodes} "
            f"nodes; give one label per node (-1 for unlabelled)."
        )
    if labels.min() < -1:
        raise DataError(f"Labels in '{path}' must be >= 0, or -1 for unlabelled nodes.")
    return labels


SPLIT_WORDS = ("train", "val", "test", "-")


def _read_split(path: Path, num_nodes: int) -> dict[str, Tensor]:
    """``{"train_mask", "val_mask", "test_mask"}`` from a file of one split word per node."""
    if not path.is_file():
        raise DataError(f"The split file '{path}' does not exist. Check the path.")
    words = [line.strip().lower() for line in path.read_text().splitlines() if line.strip()]
    if words and words[0] in ("split", "set", "fold"):  # header
        words = words[1:]
    unknown = sorted(set(words) - set(SPLIT_WORDS))
    if unknown:
        raise DataError(
            f"Split file '{path}' holds {unknown[:3]}; each line must be one of "
            f"{', '.join(SPLIT_WORDS)} ('-': the node is in no split)."
        )
    if len(words) != num_nodes:
        raise DataError(
            f"Split file '{path}' has {len(words)} lines but the feature file has {num_nodes} nodes; "
            f"give one split word per node, in node order."
        )
    array = np.array(words)
    if not (array == "train").any() or not (array == "val").any() or not (array == "test").any():
        raise DataError(f"Split file '{path}' must name at least one train, one val and one test node.")
    return {f"{word}_mask": torch.from_numpy(array == word) for word in ("train", "val", "test")}


def read_edge_list_graph(
    edges: str | Path,
    features: str | Path,
    labels: str | Path | None = None,
    undirected: bool = True,
    name: str | None = None,
    split: str | Path | None = None,
) -> Graph:
    """A graph from an edge-list CSV, a node-feature file, optional labels and an optional split
    (which needs the labels).

    Node ids are rows of the feature file, 0..N-1. With ``undirected`` (default) every edge is
    stored in both directions; duplicate edges and self-loops are dropped (a duplicate's weights
    are not summed: the first one read is kept, since PyG's GNN layers add self-loops themselves).
    """
    edges, features = Path(edges), Path(features)
    x = _read_matrix(features)
    n = x.shape[0]
    (src_dst, weight) = _read_edges(edges)
    bad = (src_dst < 0) | (src_dst >= n)
    if bad.any():
        column = int(np.nonzero(bad.any(axis=0))[0][0])
        raise DataError(
            f"Edge list '{edges}' row {column + 1} refers to node {int(src_dst[:, column][bad[:, column]][0])}, "
            f"but the feature file '{features}' has {n} nodes (ids 0..{n - 1}). Renumber the nodes "
            f"to match the feature rows."
        )
    if weight is None:
        edge_index = coalesce_edges(src_dst, n, undirected)
        edge_weight = None
    else:
        if undirected:
            src_dst = np.concatenate([src_dst, src_dst[::-1]], axis=1)
            weight = np.concatenate([weight, weight])
        keep = src_dst[0] != src_dst[1]
        keys = src_dst[0, keep] * n + src_dst[1, keep]
        keys, first = np.unique(keys, return_index=True)
        edge_index = np.stack([keys // n, keys % n])
        edge_weight = torch.from_numpy(weight[keep][first])
    y = None if labels is None else torch.from_numpy(_read_labels(Path(labels), n))
    if split is not None and y is None:
        raise DataError(f"The split file '{split}' needs labels too: give a label file (one integer per node).")
    masks = {} if split is None else _read_split(Path(split), n)
    return Graph(
        x=torch.from_numpy(x),
        edge_index=torch.from_numpy(edge_index.astype(np.int64)),
        edge_weight=edge_weight,
        y=y,
        name=name or edges.stem,
        **masks,
    )


def open_graph_source(spec: str) -> Graph:
    """A built-in Planetoid name (``cora``, ``citeseer``) or a folder.

    A folder is either a Planetoid raw folder (it holds ``ind.*.graph``) or holds ``edges.csv``,
    ``features.csv`` or ``features.npy``, and optionally ``labels.csv``/``labels.txt``/``labels.npy``
    and ``split.txt`` (one of train / val / test / - per node).
    """
    key = spec.lower()
    if key in PLANETOID_NAMES:
        raw = data_root() / "planetoid" / PLANETOID_NAMES[key] / "raw"
        if not raw.is_dir():
            raise DataError(
                f"Built-in graph '{spec}' expects its Planetoid raw files in '{raw}', which does not "
                f"exist. Set CONTRASTKIT_DATA to the folder holding planetoid/{PLANETOID_NAMES[key]}/raw."
            )
        return read_planetoid(raw, key)
    folder = Path(spec)
    if not folder.exists():
        raise ConfigError(
            f"Graph data '{spec}' is neither a built-in name ({', '.join(PLANETOID_NAMES)}) nor an "
            f"existing folder. Give a folder with edges.csv and features.csv/.npy (labels optional)."
        )
    graph_files = sorted(folder.glob("ind.*.graph"))
    if graph_files:
        return read_planetoid(folder, graph_files[0].name.split(".")[1])
    features = next((folder / f for f in ("features.npy", "features.csv") if (folder / f).is_file()), None)
    if features is None or not (folder / "edges.csv").is_file():
        raise DataError(
            f"Graph folder '{folder}' must hold edges.csv (src,dst[,weight]) and features.csv or "
            f"features.npy (one row per node); it has: {', '.join(sorted(p.name for p in folder.iterdir())) or 'nothing'}."
        )
    labels = next(
        (folder / f for f in ("labels.npy", "labels.csv", "labels.txt") if (folder / f).is_file()), None
    )
    split = folder / "split.txt" if (folder / "split.txt").is_file() else None
    return read_edge_list_graph(folder / "edges.csv", features, labels, name=folder.name, split=split)
