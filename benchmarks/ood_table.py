"""Out-of-distribution AUROC on embeddings of three modalities, one evaluation for all
(``contrastkit.evaluation.anomaly.ood_evaluation``: distance to the k-th nearest reference row,
k = 10; Mahalanobis, single Gaussian and class-conditional with a shared covariance, Ledoit-Wolf
shrinkage), each on L2-normalised rows (the default; Sun et al.'s kNN) and on the rows as given.
Every score is fitted on an in-distribution reference set and tells out-of-distribution rows
(positives) from held-out in-distribution rows that the reference does not hold.

- image: CIFAR-10 (in) vs MNIST (out). The SimCLR run's own split: reference = its training part
  (8,000), in = its held-out part (2,000, never in pretraining); out = 2,000 MNIST test digits
  (seeded sample) resized to 32x32 and repeated to RGB, as ``contrastkit embed`` converts them.
  Features: the trained encoder (the run's ``embeddings.npy`` for CIFAR), the same architecture
  untrained (seeded init, seed 0), raw pixels in [0, 1]. Class-conditional: CIFAR labels.
- text: SciFact abstracts (in) vs CPython docstrings (out). Reference = 2,000 SciFact corpus
  documents (title + abstract), in = 500 others, out = 500 docstrings (seeded samples); 128 tokens.
  Features: all-MiniLM-L6-v2; the same architecture untrained (seeded init); TF-IDF reduced to
  256 dimensions by truncated SVD fitted on the reference (the raw-features baseline).
- tabular: NSL-KDD normal traffic (in) vs attacks (out). Reference = the 13,449 normal rows of
  KDDTrain+_20Percent; in = the 9,711 normal rows of KDDTest+; out = its 12,833 attacks. Features:
  the 72 encoded columns (raw), a SCARF encoder (4 x 256, 15 epochs, fitted on the reference) and
  the same encoder untrained. No classes (single Gaussian only).

    python benchmarks/ood_table.py --part image text tabular
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from contrastkit.core.paths import data_root
from contrastkit.evaluation.anomaly import ood_evaluation

SCORES = ("auroc_knn", "auroc_mahalanobis", "auroc_mahalanobis_class_conditional")


def image_rows(run: Path, seed: int):
    from contrastkit.core.seeding import seeded
    from contrastkit.modalities.image.methods import build_method
    from contrastkit.modalities.image.sources import open_image_source
    from contrastkit.modalities.image.training.callbacks import embed_images
    from contrastkit.modalities.image.training.restore import load_method
    from contrastkit.modalities.image.training.run_data import split_rows

    method, config, data = load_method(run / "checkpoints" / "last.ckpt")
    cifar = open_image_source(config.data, image_size=data.image_size, channels=data.channels)
    labels = cifar.labels.numpy()
    split_seed = config.seed if getattr(config, "split_seed", None) is None else config.split_seed
    train_rows, holdout_rows = split_rows(labels, np.arange(len(cifar)), config.holdout, split_seed)
    order = np.concatenate([train_rows, holdout_rows])
    if not np.array_equal(labels[order], np.load(run / "labels.npy")):
        raise SystemExit("the run's split could not be rebuilt: its labels.npy differs")
    n_train = len(train_rows)
    mnist = open_image_source("mnist-test", image_size=data.image_size, channels=data.channels)
    out_rows = np.sort(np.random.default_rng(seed).choice(len(mnist), size=len(holdout_rows), replace=False))
    out_images = mnist.images[out_rows]
    with seeded(seed):
        untrained = build_method(config.method, config, data).eval()
    trained = np.load(run / "embeddings.npy")
    device = torch.device("cpu")
    features = {
        "SimCLR (trained)": (trained, embed_images(method, out_images, device, 256).numpy()),
        "same encoder, untrained": (embed_images(untrained, cifar.images[order], device, 256).numpy(),
                                    embed_images(untrained, out_images, device, 256).numpy()),
        "raw pixels": (cifar.images[order].flatten(1).float().div(255).numpy(),
                       out_images.flatten(1).float().div(255).numpy()),
    }
    for name, (inside, outside) in features.items():
        yield name, inside[:n_train], labels[order][:n_train], inside[n_train:], outside


def text_rows(seed: int, reference_size: int = 2000, test_size: int = 500, max_length: int = 128):
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from transformers import AutoConfig, AutoModel

    from contrastkit.modalities.text.encoders import TextEncoder, load_text_encoder, minilm_folder
    from contrastkit.modalities.text.sources import read_corpus, read_jsonl

    rng = np.random.default_rng(seed)
    documents = read_corpus(data_root() / "scifact").documents()
    chosen = rng.permutation(len(documents))[:reference_size + test_size]
    reference = [documents[i] for i in chosen[:reference_size]]
    inside = [documents[i] for i in chosen[reference_size:]]
    docstrings = [r["docstring"] for r in read_jsonl(data_root() / "code-docstring" / "pairs.jsonl.gz")]
    outside = [docstrings[i] for i in rng.permutation(len(docstrings))[:test_size]]
    minilm = load_text_encoder("minilm")
    minilm.max_length = max_length
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        random_transformer = AutoModel.from_config(AutoConfig.from_pretrained(str(minilm_folder())))
    untrained = TextEncoder(random_transformer, minilm.tokenizer, pooling="mean", max_length=max_length)
    for name, encoder in (("all-MiniLM-L6-v2", minilm), ("same encoder, untrained", untrained)):
        reference_x, inside_x, outside_x = (encoder.encode(texts, batch_size=32).numpy()
                                            for texts in (reference, inside, outside))
        yield name, reference_x, None, inside_x, outside_x
    tfidf = TfidfVectorizer(sublinear_tf=True, min_df=2).fit(reference)
    svd = TruncatedSVD(256, random_state=seed).fit(tfidf.transform(reference))
    reference_x, inside_x, outside_x = (svd.transform(tfidf.transform(t)) for t in (reference, inside, outside))
    yield "TF-IDF + SVD-256", reference_x, None, inside_x, outside_x


def tabular_rows(seed: int, epochs: int = 15):
    from contrastkit.modalities.tabular.estimators import SCARF
    from contrastkit.modalities.tabular.sources import load_nsl_kdd, nsl_kdd_encoder

    train, test = load_nsl_kdd(data_root() / "nsl-kdd", "train20"), load_nsl_kdd(data_root() / "nsl-kdd", "test")
    normal = train.rows(train.label == "normal")
    columns = nsl_kdd_encoder(clip=10.0).fit(normal.table)
    x_reference, x_test = columns.transform(normal.table), columns.transform(test.table)
    is_normal = test.family == "normal"
    common = {"hidden_dims": 256, "depth": 4, "batch_size": 256, "feature_groups": columns.feature_groups(),
              "seed": seed}
    untrained = SCARF(x_reference.shape[1], **common)
    untrained_reference, untrained_test = untrained.encode(x_reference), untrained.encode(x_test)
    trained = SCARF(x_reference.shape[1], **common)
    trained.fit(x_reference, n_epochs=epochs)
    trained_reference, trained_test = trained.encode(x_reference), trained.encode(x_test)
    for name, reference, tested in (("SCARF (trained)", trained_reference, trained_test),
                                    ("same encoder, untrained", untrained_reference, untrained_test),
                                    ("encoded columns (raw)", x_reference, x_test)):
        yield name, reference, None, tested[is_normal], tested[~is_normal]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", nargs="+", choices=("image", "text", "tabular"), default=["image", "text", "tabular"])
    parser.add_argument("--run", type=Path, default=Path("runs/rank_image_methods/pilot-simclr-seed0-25-epochs"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}".rstrip())
    print("\nAUROC; each cell: L2-normalised rows / rows as given\n")
    print("| in vs out | features | reference / in / out | kNN (k=10) | Mahalanobis | "
          "Mahalanobis, class-conditional | seconds |")
    print("|---|---|---|---:|---:|---:|---:|")
    parts = {"image": ("CIFAR-10 vs MNIST", lambda: image_rows(args.run, args.seed)),
             "text": ("SciFact vs code docstrings", lambda: text_rows(args.seed)),
             "tabular": ("NSL-KDD normal vs attacks", lambda: tabular_rows(args.seed))}
    for part in args.part:
        title, rows = parts[part]
        started = time.time()
        for name, reference, labels, inside, outside in rows():
            results = [ood_evaluation(reference, inside, outside, reference_labels=labels, normalize=normalize)
                       for normalize in (True, False)]
            cells = [" / ".join(f"{r[score]:.4f}" for r in results) if score in results[0] else "-"
                     for score in SCORES]
            print(f"| {title} | {name} | {len(reference)} / {len(inside)} / {len(outside)} | {' | '.join(cells)} | "
                  f"{time.time() - started:.0f} |", flush=True)
            started = time.time()


if __name__ == "__main__":
    main()
