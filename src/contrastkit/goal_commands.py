"""The commands from embeddings to a user's goal: ``select`` (which samples to label), ``index`` and
``search`` (a persistent search index over one's own collection), and the ``evaluate`` tasks ``ood``
(out-of-distribution AUROC) and ``semi-supervised`` (a few labels and the unlabelled rest).

:mod:`contrastkit.cli` builds the parser and dispatches here; the work is in
:mod:`contrastkit.evaluation` (selection, search_index, anomaly, semi_supervised).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from contrastkit.core.errors import ConfigError, DataError

SEMI_SUPERVISED_NEIGHBOURS = 50  # evaluate --k for --task semi-supervised (the kNN graph's k)
TRUST_HELP = ("read a checkpoint that carries code (a pickle holding more than tensors and plain values): this RUNS "
              "that code, so use it only for a file whose maker you trust; without it such a file is refused")


def add_goal_commands(commands) -> None:
    """select, index and search: from embeddings to what the user wants to do with them."""
    select = commands.add_parser("select", help="choose which samples to label from their embeddings "
                                 "(typicality, k-center or random)")
    select.add_argument("--embeddings", help=".npy file of the pool's embeddings (N, d)")
    select.add_argument("--run", help="a run folder: its embeddings.npy (only its training part where split.json "
                                      "names one; indices are rows of embeddings.npy)")
    select.add_argument("--budget", type=int, required=True, help="how many samples to choose")
    select.add_argument("--strategy", choices=("typicality", "k-center", "random"), default="typicality",
                        help="typicality (TypiClust; default, for a few labels per class), k-center (core-set), "
                             "random")
    select.add_argument("--seed", type=int, default=0)
    select.add_argument("--no-normalize", action="store_true",
                        help="use the embeddings as given (default: L2-normalise each row first)")
    select.add_argument("--out", required=True, help="text file: the chosen indices, one per line, in the "
                                                     "order chosen")

    index = commands.add_parser("index", help="embed a collection with a run's encoder (images, text) into a "
                                "persistent faiss search index")
    index.add_argument("--run", help="image run folder, checkpoint or export; text run or model folder, or minilm "
                                     "(with --update: default the index's own run)")
    index.add_argument("--data", help="the collection: image folder / IDX / .npz; text lines, .jsonl corpus or "
                                      "BEIR folder")
    index.add_argument("--embeddings", help="instead of --run and --data: an .npy of embeddings (any modality)")
    index.add_argument("--ids", help="with --embeddings: a text file of their ids, one per line (default: row "
                                     "numbers)")
    index.add_argument("--out", required=True, help="the index folder (index.faiss, ids.json, index.json)")
    index.add_argument("--update", action="store_true", help="add the samples of --data that the index in --out "
                       "does not hold yet, embedding only those")
    index.add_argument("--kind", choices=("flat", "hnsw"), default="flat",
                       help="flat: exact search (default); hnsw: approximate, for large collections")
    index.add_argument("--quantize", choices=("int8", "binary"), default=None,
                       help="store the rows in fewer bytes (flat only): int8 codes calibrated per dimension (4x "
                            "smaller), or sign bits searched by Hamming distance (32x smaller); default float32")
    index.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)

    search = commands.add_parser("search", help="the nearest samples of an index to a query")
    search.add_argument("--index", required=True, help="a folder written by 'contrastkit index'")
    search.add_argument("--query", required=True, help="an image file, a text string, or an .npy of query "
                                                       "embeddings")
    search.add_argument("--k", type=int, default=10, help="results per query (default 10)")
    search.add_argument("--out", help="also write the results as JSON to this file")
    search.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)


def run_ood_evaluation(args: argparse.Namespace) -> int:
    from contrastkit.evaluation.anomaly import OOD_NEIGHBOURS, ood_evaluation

    given = (("--reference", args.reference), ("--embeddings", args.embeddings),
             ("--ood-embeddings", args.ood_embeddings))
    missing = [option for option, value in given if value is None]
    if missing:
        raise ConfigError(f"evaluate --task ood needs {', '.join(missing)}: .npy embeddings of in-distribution "
                          "training samples (--reference), of held-out in-distribution samples (--embeddings) "
                          "and of out-of-distribution samples (--ood-embeddings), all from one encoder.")
    try:
        shrinkage = args.shrinkage if args.shrinkage == "ledoit-wolf" else float(args.shrinkage)
    except ValueError:
        raise ConfigError(f"--shrinkage must be a number in [0, 1] or ledoit-wolf, got '{args.shrinkage}'.") from None
    labels = load_array(args.reference_labels, "--reference-labels") if args.reference_labels else None
    results = ood_evaluation(load_array(args.reference, "--reference"), load_array(args.embeddings, "--embeddings"),
                             load_array(args.ood_embeddings, "--ood-embeddings"), reference_labels=labels,
                             k=args.k or OOD_NEIGHBOURS, shrinkage=shrinkage, normalize=not args.no_normalize)
    print(json.dumps(results, indent=2))
    return 0


def run_semi_supervised_evaluation(args: argparse.Namespace) -> int:
    import numpy as np

    from contrastkit.evaluation.run_embeddings import read_run_embeddings
    from contrastkit.evaluation.semi_supervised import few_label_split, semi_supervised_evaluation

    pool = test = None
    if args.run is not None and args.embeddings is None and args.labels is None:
        run = read_run_embeddings(args.run, labels=True, split=True)
        embeddings, labels, pool, test = run.embeddings, run.labels, run.train, run.holdout
    elif args.run is None and args.embeddings is not None and args.labels is not None:
        embeddings, labels = load_array(args.embeddings, "--embeddings"), load_array(args.labels, "--labels")
    else:
        raise ConfigError("evaluate --task semi-supervised needs either --run (a run folder with embeddings.npy, "
                          "labels.npy and split.json) or --embeddings with --labels.")
    if labels.dtype.kind in "USO":  # class names (a tabular run's labels.npy): the evaluation needs indices
        labels = np.unique(labels, return_inverse=True)[1]
    try:
        labelled = None if args.labelled is None else [int(row) for row in Path(args.labelled).read_text().split()]
    except (OSError, ValueError):
        raise DataError(f"--labelled: '{args.labelled}' must be a text file of row numbers, one per line "
                        f"(as 'contrastkit select' writes).") from None
    labelled, unlabelled, test = few_label_split(labels, labelled, pool, test, args.labels_per_class,
                                                 args.test_fraction, args.seed)
    results = semi_supervised_evaluation(embeddings, labels, labelled, unlabelled, test,
                                         k=args.k or SEMI_SUPERVISED_NEIGHBOURS, alpha=args.alpha,
                                         threshold=args.threshold, rounds=args.rounds, seed=args.seed)
    print(json.dumps(results, indent=2))
    return 0


def run_select(args: argparse.Namespace) -> int:
    from contrastkit.evaluation.run_embeddings import read_run_embeddings
    from contrastkit.evaluation.selection import select

    if (args.embeddings is None) == (args.run is None):
        raise ConfigError("contrastkit select needs exactly one of --embeddings (an .npy file) and --run (a run "
                          "folder with embeddings.npy).")
    run = None
    if args.run is not None:
        run = read_run_embeddings(args.run)
        embeddings = run.embeddings
        if run.train is not None:  # choose among the training part: the held-out part stays unseen
            embeddings = embeddings[run.train]
            print(f"Choosing among the training part of {args.run}: {len(run.train)} of the {len(run.embeddings)} "
                  f"rows of embeddings.npy")
    else:
        embeddings = load_array(args.embeddings, "--embeddings")
    chosen = select(embeddings, args.budget, args.strategy, seed=args.seed, normalize=not args.no_normalize)
    if run is not None and run.train is not None:
        chosen = run.train[chosen]  # row numbers of embeddings.npy, as labels.npy and --labelled count them
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{int(i)}\n" for i in chosen))
    print(f"Wrote {len(chosen)} indices chosen by {args.strategy} (seed {args.seed}) to {out}")
    if run is not None and run.data_rows is not None:  # an image run: name the data's samples
        data_rows = out.with_name(out.stem + ".data-rows.txt")
        data_rows.write_text("".join(f"{int(run.data_rows[i])}\n" for i in chosen))
        print(f"and the same samples as rows of the run's --data (its rows.npy) to {data_rows}")
    return 0


def run_index(args: argparse.Namespace) -> int:
    from contrastkit.evaluation.search_index import SearchIndex, index_collection, run_reference

    if args.embeddings is not None:
        if args.run is not None or args.data is not None or args.update:
            raise ConfigError("--embeddings indexes given embeddings: leave out --run, --data and --update.")
        embeddings = load_array(args.embeddings, "--embeddings")
        ids = (Path(args.ids).read_text().splitlines() if args.ids
               else [str(row) for row in range(len(embeddings))])
        if (Path(args.out) / "index.json").exists():
            raise ConfigError(f"'{args.out}' already holds a search index; nothing is overwritten.")
        index = SearchIndex(embeddings.shape[1], args.kind, {"data": [str(args.embeddings)]}, args.quantize)
        index.add(embeddings, ids)
        index.save(args.out)
        print(f"Indexed {len(index)} embeddings of dimension {index.dim} in {args.out}")
        return 0
    from contrastkit.evaluation.run_encoders import run_encoder

    if args.data is None:
        raise ConfigError("contrastkit index needs --data (the collection to embed) with --run, or --embeddings.")
    run = args.run
    if run is None:
        if not args.update:
            raise ConfigError("contrastkit index needs --run: the run whose encoder embeds --data.")
        run = SearchIndex.load(args.out).metadata.get("run")
        if run is None:
            raise ConfigError(f"The index in '{args.out}' holds given embeddings and no run; embed the new samples "
                              f"yourself and build it again with --embeddings.")
    encoder = run_encoder(run, trust_checkpoint=args.trust_checkpoint)
    index, embedded = index_collection(encoder, args.data, args.out, run=run_reference(run), update=args.update,
                                       kind=args.kind, quantize=args.quantize)
    print(f"Embedded {embedded} new {encoder.modality} samples; the index in {args.out} holds {len(index)}")
    return 0


def run_search(args: argparse.Namespace) -> int:
    import numpy as np

    from contrastkit.evaluation.search_index import SearchIndex

    index = SearchIndex.load(args.index)
    if args.query.endswith(".npy") and Path(args.query).is_file():
        queries = np.atleast_2d(load_array(args.query, "--query"))
    else:
        from contrastkit.evaluation.run_encoders import run_encoder

        if index.metadata.get("run") is None:
            raise ConfigError(f"The index in '{args.index}' was built from given embeddings: search it with an "
                              f".npy of query embeddings.")
        encoder = run_encoder(index.metadata["run"], trust_checkpoint=args.trust_checkpoint)
        query = encoder.read_query(args.query)
        queries = encoder.embed(query, [0])
    scores, ids = index.search(queries, args.k)
    results = [[{"id": sample_id, "score": float(score)} for sample_id, score in zip(row_ids, row_scores)]
               for row_ids, row_scores in zip(ids, scores)]
    for number, row in enumerate(results):
        prefix = f"{number}\t" if len(results) > 1 else ""
        for rank, hit in enumerate(row, start=1):
            print(f"{prefix}{rank}\t{hit['id']}\t{hit['score']:.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


def load_array(path: str, option: str):
    """The .npy file ``path`` given as ``option`` (numpy, like the rest, imported only when a command runs)."""
    from contrastkit.evaluation.run_embeddings import read_array

    return read_array(Path(path), option, "Pass a .npy file (contrastkit embed writes one).")
