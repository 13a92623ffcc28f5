"""The text task runner (modalities/text/benchmark_tasks.py, task_files.py, task_data.py, task_metrics.py)
against second derivations: the shipped STS-B and SciFact task files give evaluate_text_task's numbers;
one STS set in every layout gives one score; pair-classification AP against scikit-learn and the best
thresholds against a brute-force search; V-measure against scikit-learn; reranking MAP / MRR against a
naive loop; task-file errors that name the file and the key."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.cluster import MiniBatchKMeans
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, v_measure_score

from contrastkit.cli import main
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.text.benchmark_tasks import evaluate_tasks
from contrastkit.modalities.text.evaluation import sts_spearman
from contrastkit.modalities.text.sources import RetrievalSet, SentencePairs, in_dev_carve, read_beir
from contrastkit.modalities.text.task_files import read_task_file, read_task_folder
from contrastkit.modalities.text.task_metrics import (
    average_precision,
    best_threshold_accuracy,
    best_threshold_f1,
    kmeans_v_measure,
    pair_classification_metrics,
    reciprocal_rank,
    reranking_metrics,
)
from tests.conftest import REPO, data_path, requires_minilm, requires_transformers
from tests.text_method_fakes import SENTENCES, BagOfWordsEncoder

SHIPPED = REPO / "benchmarks" / "text_tasks"


def write_task(folder, name, **task) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(task))


def unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from contrastkit.modalities.text.encoders import small_random_encoder

    folder = tmp_path_factory.mktemp("model")
    small_random_encoder(hidden_size=32, layers=1, heads=2, max_length=32, seed=0).save(folder)
    return folder


# ------------------------------------------------------------------ the project's own task files


def write_beir(folder, retrieval_set: RetrievalSet, split_file: str) -> None:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": d, "title": t, "text": x}) + "\n"
        for d, t, x in zip(retrieval_set.doc_ids, retrieval_set.titles, retrieval_set.texts)))
    (folder / "queries.jsonl").write_text("".join(
        json.dumps({"_id": q, "text": x}) + "\n" for q, x in zip(retrieval_set.query_ids, retrieval_set.queries)))
    (folder / "qrels" / split_file).write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{g}\n" for q, docs in retrieval_set.qrels.items() for d, g in docs.items()))


@requires_transformers
@requires_minilm
def test_shipped_stsb_and_scifact_tasks_give_evaluate_text_task_figures(saved_model, tmp_path, monkeypatch):
    from contrastkit.modalities.text.evaluation import evaluate_text_task, subsample_retrieval_set

    # A small data root in the real layouts: STS-B dev's first 200 pairs, SciFact's dev-carve claims (40 of
    # them, in a train qrels file as in the real folder) against 300 abstracts.
    root = tmp_path / "data"
    (root / "stsb").mkdir(parents=True)
    lines = (data_path("stsb") / "sts-dev.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (root / "stsb" / "sts-dev.csv").write_text("".join(lines[:200]), encoding="utf-8")
    dev = subsample_retrieval_set(read_beir(data_path("scifact"), "dev"), n_queries=40, n_documents=300)
    write_beir(root / "scifact", dev, "train.tsv")
    monkeypatch.setenv("CONTRASTKIT_DATA", str(root))

    table = evaluate_tasks(str(saved_model), SHIPPED, names=["stsb", "scifact"], cache_dir=False, verbose=False)
    sts = evaluate_text_task("sts", str(saved_model), root / "stsb" / "sts-dev.csv")
    retrieval = evaluate_text_task("retrieval", str(saved_model), root / "scifact", split="dev", cache_dir=False)
    assert table["stsb"].score == sts["spearman"] and table["stsb"].size == "200 pairs"
    assert retrieval["queries"] == 40
    for name in ("ndcg@10", "recall@100", "mrr@10"):
        assert table["scifact"].metrics[name] == pytest.approx(100 * retrieval[name], abs=1e-9)


@pytest.mark.slow
@requires_transformers
@requires_minilm
def test_shipped_tasks_give_the_published_minilm_dev_figures_on_the_full_data():
    from contrastkit.modalities.text.evaluation import evaluate_text_task

    table = evaluate_tasks("minilm", SHIPPED, names=["stsb", "scifact"], verbose=False)
    sts = evaluate_text_task("sts", "minilm", data_path("stsb") / "sts-dev.csv")
    retrieval = evaluate_text_task("retrieval", "minilm", data_path("scifact"), split="dev")
    assert table["stsb"].score == pytest.approx(sts["spearman"], abs=1e-9)
    assert table["scifact"].score == pytest.approx(100 * retrieval["ndcg@10"], abs=1e-9)


def test_shipped_task_folder_reads_and_names_no_machine_path():
    specs = read_task_folder(SHIPPED)
    assert [(s.name, s.type) for s in specs] == [
        ("stsb", "sts"), ("scifact", "retrieval"), ("mrpc", "pair-classification"),
        ("wordnet-supersenses", "clustering"), ("scifact-reranking", "reranking")]
    for file in SHIPPED.glob("*.yaml"):
        text = file.read_text()
        assert not any(p in text for p in ("/work", "/tmp", "/home", "~/")), file


def test_shipped_mrpc_task_reads_the_headerless_bom_file_and_carves_dev_from_train():
    from contrastkit.modalities.text.task_data import read_pair_classification_task

    path = data_path("mrpc") / "msr_paraphrase_train.txt"
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8-sig").splitlines()]
    expected = [r for r in rows if in_dev_carve(f"{r[1]}\t{r[2]}")]  # modulus 3, remainder 0: the same rule
    pairs = read_pair_classification_task(read_task_file(SHIPPED / "mrpc.yaml"), "dev")
    assert pairs.first == [r[3] for r in expected] and pairs.labels == [int(r[0]) for r in expected]
    assert 0.3 < len(pairs) / len(rows) < 0.37


# ------------------------------------------------------------------------------------- STS layouts


def test_sts_file_in_each_common_layout_gives_the_same_score(tmp_path):
    first, second = SENTENCES[:6], SENTENCES[2:8]
    scores = [4.5, 1.0, 3.25, 0.0, 2.0, 5.0]
    rows = list(zip(first, second, scores))
    folder = tmp_path / "tasks"
    folder.mkdir()

    def write_csv(name, header, delimiter=","):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter=delimiter)
            writer.writerow(header)
            writer.writerows(rows)

    write_csv("plain.csv", ["sentence1", "sentence2", "score"])
    write_csv("aliases.tsv", ["text1", "text2", "label"], delimiter="\t")
    write_csv("renamed.csv", ["left", "right", "gold"])
    (tmp_path / "aliases.jsonl").write_text("".join(
        json.dumps({"Sentence_A": a, "sentence-b": b, "similarity": s}) + "\n" for a, b, s in rows))
    (tmp_path / "stsb-layout.csv").write_text("".join(
        f"main-captions\tMSRvid\t2012test\t{i:04d}\t{s}\t{a}\t{b}\n" for i, (a, b, s) in enumerate(rows)))
    for name in ("plain.csv", "aliases.tsv", "aliases.jsonl", "stsb-layout.csv"):
        write_task(folder, name.replace(".", "-"), type="sts", data=f"../{name}")
    write_task(folder, "renamed", type="sts", data={"dev": "../renamed.csv"}, columns=["left", "right", "gold"])
    write_task(folder, "by-role", type="sts", data="../renamed.csv",
               columns={"sentence1": "left", "sentence2": "right", "score": "gold"})

    encoder = BagOfWordsEncoder(dim=8)
    table = evaluate_tasks(encoder, folder, cache_dir=False, verbose=False)
    expected = sts_spearman(encoder, SentencePairs(first, second, np.array(scores)))
    assert len(table.rows) == 6
    assert {row.name: row.score for row in table.rows} == {row.name: expected for row in table.rows}


# --------------------------------------------------------------------------- pair classification


def test_pair_classification_metrics_match_sklearn_and_a_brute_force_threshold_search():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(2, 60))
        scores = np.round(rng.normal(size=n), 1)  # rounded: ties
        labels = rng.integers(0, 2, n)
        if labels.sum() == 0:
            labels[0] = 1
        assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
        thresholds = [*np.unique(scores), np.inf]
        accuracy, t = best_threshold_accuracy(scores, labels)
        assert accuracy == pytest.approx(max(accuracy_score(labels, scores >= u) for u in thresholds), abs=1e-12)
        assert accuracy_score(labels, scores >= t) == pytest.approx(accuracy, abs=1e-12)
        f1, precision, recall, t = best_threshold_f1(scores, labels)
        assert f1 == pytest.approx(max(f1_score(labels, scores >= u, zero_division=0) for u in thresholds), abs=1e-12)
        assert f1 == pytest.approx(f1_score(labels, scores >= t), abs=1e-12)
        assert (precision, recall) == pytest.approx((np.mean(labels[scores >= t]), np.mean(scores[labels == 1] >= t)))


def test_pair_classification_matches_mteb_on_its_own_example():
    # MTEB's test of PairClassificationEvaluator: accuracy 0.9 (its threshold 7.96, the midpoint of
    # 7.88 and 8.04; here the lowest score predicted positive, 8.04).
    scores = [6.12, 5.39, 5.28, 5.94, 6.34, 6.47, 7.88, 6.62, 8.04, 5.9]
    labels = [0, 0, 0, 0, 1, 0, 0, 0, 1, 0]
    assert best_threshold_accuracy(scores, labels) == pytest.approx((0.9, 8.04))


def test_pair_classification_task_from_a_headerless_bom_file(tmp_path):
    pairs = [(int(i % 3 != 0), f"id{i}", f"jd{i}", SENTENCES[i % 8], SENTENCES[(i * 3 + 1) % 8]) for i in range(40)]
    text = "\ufeff" + "".join("\t".join(map(str, row)) + "\n" for row in pairs)
    (tmp_path / "pairs.txt").write_text(text, encoding="utf-8")
    write_task(tmp_path / "tasks", "pairs", type="pair-classification",
               data={"dev": {"path": "../pairs.txt", "format": "tsv", "header": ["label", "a", "b", "sentence1", "sentence2"],
                             "carve": {"key": ["a", "b"]}}})
    encoder = BagOfWordsEncoder(dim=8)
    row = evaluate_tasks(encoder, tmp_path / "tasks", cache_dir=False, verbose=False)["pairs"]
    kept = [p for p in pairs if in_dev_carve(f"{p[1]}\t{p[2]}")]
    a, b = unit(encoder.encode([p[3] for p in kept])), unit(encoder.encode([p[4] for p in kept]))
    expected = pair_classification_metrics((a * b).sum(1), [p[0] for p in kept])
    assert row.size.startswith(f"{len(kept)} pairs") and 0 < len(kept) < 40
    assert row.metrics["ap"] == pytest.approx(100 * expected["ap"])
    assert row.metrics["f1_threshold"] == pytest.approx(expected["f1_threshold"])


# -------------------------------------------------------------------------------------- clustering


def test_clustering_task_is_minibatch_kmeans_v_measure_of_the_embeddings(tmp_path):
    texts = [f"{w} {w} {i}" for i, w in enumerate(["cat", "dog", "fish"] * 10)]
    labels = [t.split()[0] for t in texts]
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"definition": t, "topic": y}) + "\n"
                                                  for t, y in zip(texts, labels)))
    write_task(tmp_path / "tasks", "animals", type="clustering", data="../texts.jsonl")
    encoder = BagOfWordsEncoder(dim=8)
    row = evaluate_tasks(encoder, tmp_path / "tasks", cache_dir=False, verbose=False)["animals"]
    x = encoder.encode(texts).numpy()
    expected = [v_measure_score(labels, MiniBatchKMeans(3, batch_size=500, n_init=1, random_state=s).fit_predict(x))
                for s in range(5)]
    assert row.score == pytest.approx(100 * np.mean(expected)) and row.size == "30 texts, 3 labels"
    assert kmeans_v_measure(x, labels)["v_measure"] == pytest.approx(np.mean(expected))


# --------------------------------------------------------------------------------------- reranking


def naive_reranking(relevance, scores, k=10):
    average_precisions, reciprocal_ranks = [], []
    for relevant, score in zip(relevance, scores):
        if sum(relevant) in (0, len(relevant)):
            continue
        ranked = [relevant[i] for i in sorted(range(len(score)), key=lambda i: -score[i])]
        hits, precisions = 0, []
        for rank, is_relevant in enumerate(ranked, start=1):
            if is_relevant:
                hits += 1
                precisions.append(hits / rank)
        average_precisions.append(sum(precisions) / hits)
        first = next((rank for rank, r in enumerate(ranked[:k], start=1) if r), None)
        reciprocal_ranks.append(1 / first if first else 0.0)
    return np.mean(average_precisions), np.mean(reciprocal_ranks), len(average_precisions)


def test_reranking_map_and_mrr_match_a_naive_loop():
    rng = np.random.default_rng(2)
    relevance, scores = [], []
    for _ in range(50):
        n = int(rng.integers(1, 30))
        relevance.append(list(rng.random(n) < 0.2))
        scores.append(list(rng.normal(size=n)))  # continuous: no ties
    result = reranking_metrics(relevance, scores)
    mean_ap, mrr, counted = naive_reranking(relevance, scores)
    assert result == pytest.approx({"map": mean_ap, "mrr@10": mrr, "queries": counted})
    assert reciprocal_rank([1, 0, 0], [0.5, 0.5, 0.9]) == pytest.approx(1 / 3)  # ties: irrelevant first


RERANK_QUERIES = ["the cat sat", "gene expression mice", "heavy rainfall north"]
RERANK_POSITIVES = [[SENTENCES[0]], [SENTENCES[5], SENTENCES[2]], [SENTENCES[7]]]
RERANK_NEGATIVES = [[SENTENCES[1], SENTENCES[4]], [SENTENCES[3]], [SENTENCES[6], SENTENCES[0], SENTENCES[2]]]


def write_reranking_by_ids(tmp_path) -> None:
    """A BEIR folder of SENTENCES (ids d0..d7) and a candidate file of its ids, as the shipped SciFact task."""
    doc_id = {text: f"d{i}" for i, text in enumerate(SENTENCES)}
    write_beir(tmp_path / "beir", RetrievalSet(list(doc_id.values()), [""] * 8, SENTENCES, ["q0", "q1", "q2"],
                                               RERANK_QUERIES, {}), "test.tsv")
    (tmp_path / "ids.jsonl").write_text("".join(
        json.dumps({"query": f"q{i}", "positive": [doc_id[d] for d in p], "negative": [doc_id[d] for d in n]}) + "\n"
        for i, (p, n) in enumerate(zip(RERANK_POSITIVES, RERANK_NEGATIVES))))
    write_task(tmp_path / "tasks", "ids", type="reranking", data="../ids.jsonl", corpus="../beir", metric="mrr@10")


def test_reranking_task_jsonl_lists_and_csv_rows_and_corpus_ids_agree(tmp_path):
    queries, positives, negatives = RERANK_QUERIES, RERANK_POSITIVES, RERANK_NEGATIVES
    (tmp_path / "lists.jsonl").write_text("".join(json.dumps({"query": q, "positive": p, "negative": n}) + "\n"
                                                  for q, p, n in zip(queries, positives, negatives)))
    with open(tmp_path / "rows.csv", "w", newline="") as handle:  # one candidate a row, rows of a query merged
        writer = csv.writer(handle)
        writer.writerow(["question", "relevant", "irrelevant"])
        for q, p, n in zip(queries, positives, negatives):
            writer.writerows([q, d, ""] for d in p)
            writer.writerows([q, "", d] for d in n)
    write_reranking_by_ids(tmp_path)
    folder = tmp_path / "tasks"
    write_task(folder, "lists", type="reranking", data="../lists.jsonl")
    write_task(folder, "rows", type="reranking", data="../rows.csv")
    encoder = BagOfWordsEncoder(dim=8)
    table = evaluate_tasks(encoder, folder, cache_dir=False, verbose=False)
    q = unit(encoder.encode(queries))
    scores = [unit(encoder.encode([*p, *n])) @ q[i] for i, (p, n) in enumerate(zip(positives, negatives))]
    relevance = [[1] * len(p) + [0] * len(n) for p, n in zip(positives, negatives)]
    mean_ap, mrr, _ = naive_reranking(relevance, scores)
    for name in ("lists", "rows", "ids"):
        assert table[name].metrics == pytest.approx({"map": 100 * mean_ap, "mrr@10": 100 * mrr}), name
    assert table["ids"].score == table["ids"].metrics["mrr@10"]


@requires_transformers
@requires_minilm
def test_reranking_candidates_of_a_corpus_come_from_its_embedding_cache(saved_model, tmp_path):
    from contrastkit.modalities.text.evaluation import DOCUMENT_SEPARATOR
    from contrastkit.modalities.text.task_data import DOCUMENT_SEPARATOR as TASK_SEPARATOR

    assert TASK_SEPARATOR == DOCUMENT_SEPARATOR  # the candidates' texts are the cached corpus's documents
    write_reranking_by_ids(tmp_path)
    uncached = evaluate_tasks(str(saved_model), tmp_path / "tasks", cache_dir=False, verbose=False)["ids"]
    cached = evaluate_tasks(str(saved_model), tmp_path / "tasks", cache_dir=tmp_path / "cache", verbose=False)["ids"]
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1  # the whole corpus, embedded once
    assert cached.metrics == pytest.approx(uncached.metrics, abs=1e-6)


# ------------------------------------------------------------------------------ errors, command line


@pytest.mark.parametrize("task, fragment", [
    ({"data": "x.csv"}, "has no 'type' key"),
    ({"type": "sts"}, "has no 'data' key"),
    ({"type": "sts", "data": "x.csv", "colums": ["a"]}, "Unknown key 'colums'"),
    ({"type": "sts-b", "data": "x.csv"}, "Did you mean: sts?"),
    ({"type": "clustering", "data": "x.csv", "metric": "nmi"}, "Unknown metric 'nmi'"),
    ({"type": "retrieval", "data": "beir", "columns": ["a"]}, "columns do not apply"),
    ({"type": "sts", "data": {"dev": {"format": "tsv"}}}, "has no 'path' key"),
    ({"type": "sts", "data": "$HOME/x.csv"}, "only $CONTRASTKIT_DATA is expanded"),
])
def test_task_file_errors_name_the_file_and_the_key(task, fragment, tmp_path):
    write_task(tmp_path, "broken", **task)
    with pytest.raises(ConfigError) as error:
        read_task_file(tmp_path / "broken.json")
    assert fragment in str(error.value) and "broken.json" in str(error.value)


def test_missing_data_and_columns_are_data_errors_before_anything_is_encoded(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRASTKIT_DATA", str(tmp_path / "nowhere"))
    write_task(tmp_path / "a", "gone", type="sts", data="$CONTRASTKIT_DATA/stsb/sts-dev.csv")
    with pytest.raises(DataError, match="set it to the folder"):
        evaluate_tasks(object(), tmp_path / "a", verbose=False)
    (tmp_path / "t.csv").write_text("text,gold\nx,a\ny,b\n")
    write_task(tmp_path / "b", "nolabel", type="clustering", data="../t.csv")
    with pytest.raises(DataError, match="no column for 'label'"):
        evaluate_tasks(BagOfWordsEncoder(), tmp_path / "b", verbose=False)
    with pytest.raises(ConfigError, match="Did you mean: nolabel"):
        evaluate_tasks(BagOfWordsEncoder(), tmp_path / "b", names=["nolabels"], verbose=False)


@requires_transformers
@requires_minilm
def test_cli_scores_test_only_when_asked_warns_and_writes_the_table(saved_model, tmp_path, capsys):
    (tmp_path / "dev.csv").write_text("sentence1,sentence2,score\n" + "".join(
        f"{a},{b},{i % 5}\n" for i, (a, b) in enumerate(zip(SENTENCES, SENTENCES[1:]))))
    folder = tmp_path / "tasks"
    write_task(folder, "both", type="sts", data={"dev": "../dev.csv", "test": "../dev.csv"})
    write_task(folder, "devonly", type="sts", data="../dev.csv")
    args = ["benchmark", "--model", str(saved_model), "--tasks", str(folder), "--no-cache"]
    assert main([*args, "--out", str(tmp_path / "dev.json")]) == 0
    captured = capsys.readouterr()
    assert "test split" not in captured.err and "| both | sts | dev |" in captured.out
    assert [t["name"] for t in json.loads((tmp_path / "dev.json").read_text())["tasks"]] == ["both", "devonly"]

    assert main([*args, "--split", "test", "--out", str(tmp_path / "test.csv")]) == 0
    captured = capsys.readouterr()
    assert "scoring the test split" in captured.err and "skipped devonly" in captured.err
    assert "| both | sts | test |" in captured.out and "devonly" not in (tmp_path / "test.csv").read_text()

    assert main([*args, "--out", str(tmp_path / "table.txt")]) == 2
    assert "--out writes the table as .md, .csv, .json" in capsys.readouterr().err.replace("\n", " ")
