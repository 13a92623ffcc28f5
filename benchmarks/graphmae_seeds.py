"""GraphMAE on Cora, one pretraining seed at a time, accumulated in a committed store (issue 17).

    OMP_NUM_THREADS=1 python benchmarks/graphmae_seeds.py --seeds 2 3 4     # run and append, in order
    python benchmarks/graphmae_seeds.py --summarise                          # table over the stored seeds
    python benchmarks/graphmae_seeds.py --transcribe-docs                    # seeds 0 and 1 from the docs

Each seed is one run of the real CLI, the command of docs/benchmarks.md's GraphMAE row::

    contrastkit graph --method graphmae --data cora --seeds 1 --first-seed S --probe-seeds 20 \\
        --probe adam logreg --threads 1 --out FILE.json

(the paper's 1,500 epochs and every other default of ``contrastkit graph``). Its JSON report is
reduced to one line of the store, ``benchmarks/results/graphmae-cora.jsonl`` (JSON lines, appended as
each seed finishes, so a long run that is stopped keeps the seeds it finished):

* ``seed``, ``settings`` (method, data, feature normalisation, epochs, probe seeds, probes: the
  figures of lines with equal settings are pooled), ``threads``, ``code_commit``, ``src_changes``
  (files under ``src/`` that differ from that commit in the code the run imported), ``date``, ``command``;
* ``graphmae_probe_test``: GraphMAE's probe (Adam, epoch chosen on the validation nodes), test
  accuracy averaged over the probe seeds, with its ``_std_over_probe_seeds`` and the per-probe-seed
  list; ``graphmae_probe_val``, ``graphmae_probe_final_epoch_test``; ``logreg_test`` (scikit-learn,
  C chosen on the validation nodes); ``clustering`` (k-means ACC / NMI / ARI); all as fractions;
* ``train_seconds``, ``seconds_per_epoch``, ``wall_seconds`` (the whole command, probes included).

The run imports contrastkit from a clean export of ``--code-commit`` (default HEAD; ``git archive``
into a temporary folder, put first on PYTHONPATH), not from the working tree, which others may be
editing: so ``code_commit`` is exactly the code that ran and ``src_changes`` is empty (``--working-tree``
runs the tree as it is and records its changes instead).

A seed already in the store with the same settings is refused: skipped with a message before its run
(so a list may repeat stored seeds), an error if it appears while running (checked again before appending). Seeds 0 and 1 were run before the store existed: ``--transcribe-docs`` stores them
from docs/benchmarks.md, marked ``"source": "docs/benchmarks.md ..."``; the docs give only their
GraphMAE-probe means, so their other fields are null.

``--summarise`` prints, per settings group, each figure's mean ± std over pretraining seeds
(population std, as GraphMAE's script prints), min-max and n (the seeds that have the figure), and
the GraphMAE probe per code commit (the graph training loop moved onto the engine at f9d0b3e: same
algorithm, another random stream, so a seed's figure differs between the two).
Lines with other settings (e.g. a short ``--epochs`` check written with ``--store``) form their own group.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "benchmarks" / "results" / "graphmae-cora.jsonl"
PAPER_EPOCHS = 1500
PROBES = ["adam", "logreg"]

# Seeds 0 and 1 as docs/benchmarks.md (GraphMAE row of "Graphs: Cora") reports them; the row was
# written by commit 80f60ac, and no file under src/contrastkit/graphs has changed since.
DOCS_SEEDS = {0: 0.842, 1: 0.844}
DOCS_SOURCE = ("docs/benchmarks.md (commit 80f60ac), GraphMAE row: per-seed GraphMAE-probe means only; "
               "the pair's other figures are given as 2-seed aggregates (logreg 82.9 ± 0.3, ACC 67.6 ± 2.1, "
               "NMI 57.7 ± 1.2, ARI 52.4 ± 0.6, 1.25 s/epoch), not per seed")


def settings_of(epochs: int, probe_seeds: int, probes: list[str], features_norm: str = "row") -> dict[str, Any]:
    """What decides the figures (the CLI's defaults otherwise); threads are recorded apart."""
    return {"method": "graphmae", "data": "cora", "features_norm": features_norm, "epochs": epochs,
            "probe_seeds": probe_seeds, "probes": sorted(probes)}


def read_store(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stored(path: Path, seed: int, settings: dict[str, Any]) -> bool:
    return any(r["seed"] == seed and r["settings"] == settings for r in read_store(path))


def append(path: Path, record: dict[str, Any]) -> None:
    if stored(path, record["seed"], record["settings"]):
        raise SystemExit(f"seed {record['seed']} is already stored in {path} with these settings; not appended.")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def working_tree_changes() -> list[str]:
    """The files under src/ that differ from HEAD in the working tree (shared with other work)."""
    changes = git("diff", "--name-only", "HEAD", "--", "src").split() + \
        git("ls-files", "--others", "--exclude-standard", "--", "src").split()
    return sorted(changes)


def export_src(commit: str, folder: Path) -> Path:
    """``src/`` of ``commit`` written under ``folder`` (git archive): the code a run imports."""
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "src"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder / "src"


def record_from_report(report: dict[str, Any], threads: int, commit: str, changes: list[str],
                       command: str, wall: float) -> dict[str, Any]:
    (run,) = report["runs"]
    probes = sorted(p for p, key in (("adam", "probe"), ("logreg", "probe_logreg")) if key in run)
    record: dict[str, Any] = {
        "seed": run["seed"],
        "settings": settings_of(report["train"]["epochs"], report["probe_seeds"], probes, report["features_norm"]),
        "source": "run", "threads": threads, "code_commit": commit, "src_changes": changes,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": command,
    }
    if "probe" in run:
        tests = run["probe"]["test"]
        record.update(
            graphmae_probe_test=float(np.mean(tests)),
            graphmae_probe_test_std_over_probe_seeds=float(np.std(tests)),
            graphmae_probe_val=float(np.mean(run["probe"]["val"])),
            graphmae_probe_final_epoch_test=float(np.mean(run["probe"]["final_test"])),
            graphmae_probe_tests=tests,
        )
    if "probe_logreg" in run:
        record["logreg_test"] = run["probe_logreg"]["test"]
    if "clustering" in run:
        record["clustering"] = {k: run["clustering"][k] for k in ("acc", "nmi", "ari")}
    record.update(final_loss=run["final_loss"], train_seconds=run["train_seconds"],
                  seconds_per_epoch=run["seconds_per_epoch"], wall_seconds=wall)
    return record


def run_seed(seed: int, epochs: int, probe_seeds: int, threads: int, store: Path, code_commit: str | None) -> None:
    """One seed through the CLI, appended to ``store``; code from ``code_commit`` (None: the working tree)."""
    settings = settings_of(epochs, probe_seeds, PROBES)
    if stored(store, seed, settings):
        print(f"seed {seed} is already stored in {store} with these settings; not run.", flush=True)
        return
    argv = ["--method", "graphmae", "--data", "cora", "--seeds", "1", "--first-seed", str(seed),
            "--probe-seeds", str(probe_seeds), "--probe", *PROBES, "--threads", str(threads)]
    if epochs != PAPER_EPOCHS:
        argv += ["--epochs", str(epochs)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as folder:
        if code_commit is None:
            commit, changes = git("rev-parse", "--short=12", "HEAD"), working_tree_changes()
        else:
            commit, changes = git("rev-parse", "--short=12", code_commit), []
            src = export_src(commit, Path(folder))
            env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [os.environ.get("PYTHONPATH")])])
            imported = subprocess.run([sys.executable, "-c", "import contrastkit; print(contrastkit.__file__)"],
                                      cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.strip()
            if not Path(imported).is_relative_to(src):
                raise SystemExit(f"the export of {commit} is not what imports: contrastkit comes from {imported}")
        out = Path(folder) / "report.json"
        print(f"[{dt.datetime.now():%H:%M:%S}] seed {seed}: code {commit}"
              + (f" (working tree, changed: {', '.join(changes) or 'none'})" if code_commit is None else " (clean export)"),
              flush=True)
        start = time.perf_counter()
        print(f"[{dt.datetime.now():%H:%M:%S}] seed {seed}: contrastkit graph {' '.join(argv)}", flush=True)
        status = subprocess.run([sys.executable, "-m", "contrastkit.modalities.graph.cli", *argv, "--out", str(out)],
                                cwd=ROOT, env=env).returncode
        wall = time.perf_counter() - start
        if status != 0:
            raise SystemExit(f"seed {seed}: contrastkit graph exited with {status}")
        report = json.loads(out.read_text())
    record = record_from_report(report, threads, commit, changes, "contrastkit graph " + " ".join(argv), wall)
    if record["settings"] != settings:
        raise SystemExit(f"the report's settings {record['settings']} are not the requested {settings}")
    append(store, record)
    print(f"[{dt.datetime.now():%H:%M:%S}] seed {seed} stored in {store}: GraphMAE probe "
          f"{100 * record['graphmae_probe_test']:.2f}, logreg {100 * record['logreg_test']:.2f}, "
          f"{wall / 60:.1f} min", flush=True)


def transcribe_docs(store: Path) -> None:
    settings = settings_of(PAPER_EPOCHS, 20, PROBES)
    for seed, accuracy in DOCS_SEEDS.items():
        if stored(store, seed, settings):
            print(f"seed {seed} already stored; skipped")
            continue
        append(store, {
            "seed": seed, "settings": settings, "source": DOCS_SOURCE, "threads": 1, "code_commit": None,
            "src_changes": None, "date": None,
            "command": f"contrastkit graph --method graphmae --data cora --seeds 1 --first-seed {seed} "
                       "--probe-seeds 20 --probe adam logreg --threads 1",
            "graphmae_probe_test": accuracy, "graphmae_probe_test_std_over_probe_seeds": None,
            "graphmae_probe_val": None, "graphmae_probe_final_epoch_test": None, "graphmae_probe_tests": None,
            "logreg_test": None, "clustering": None, "final_loss": None, "train_seconds": None,
            "seconds_per_epoch": None, "wall_seconds": None,
        })
        print(f"seed {seed} transcribed from the docs")


FIGURES = [
    ("GraphMAE probe, test (mean over probe seeds)", lambda r: r.get("graphmae_probe_test"), 100, "%"),
    ("GraphMAE probe, validation", lambda r: r.get("graphmae_probe_val"), 100, "%"),
    ("GraphMAE probe, last probe epoch, test", lambda r: r.get("graphmae_probe_final_epoch_test"), 100, "%"),
    ("logreg probe, test", lambda r: r.get("logreg_test"), 100, "%"),
    ("k-means ACC", lambda r: (r.get("clustering") or {}).get("acc"), 100, "%"),
    ("k-means NMI", lambda r: (r.get("clustering") or {}).get("nmi"), 100, "%"),
    ("k-means ARI", lambda r: (r.get("clustering") or {}).get("ari"), 100, "%"),
    ("seconds per epoch", lambda r: r.get("seconds_per_epoch"), 1, " s"),
]


def summarise(store: Path) -> None:
    records = read_store(store)
    if not records:
        print(f"{store}: no seeds stored")
        return
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(json.dumps(r["settings"], sort_keys=True), []).append(r)
    for key, rows in groups.items():
        settings = json.loads(key)
        seeds = sorted(r["seed"] for r in rows)
        transcribed = sorted(r["seed"] for r in rows if r["source"] != "run")
        print(f"{settings['method']} on {settings['data']}: {settings['epochs']} epochs, "
              f"{settings['probe_seeds']} probe seeds, probes {' '.join(settings['probes'])}, "
              f"features {settings['features_norm']}")
        print(f"pretraining seeds ({len(seeds)}): {' '.join(map(str, seeds))}"
              + (f"  (transcribed from the docs: {' '.join(map(str, transcribed))})" if transcribed else ""))
        commits = sorted({r["code_commit"] for r in rows if r["code_commit"]})
        dirty = sorted({f for r in rows for f in (r.get("src_changes") or [])})
        print(f"code commits: {', '.join(commits) or '-'}" + (f"; src files changed at start: {', '.join(dirty)}"
                                                               if dirty else ""))
        print()
        print("| figure | mean ± std over pretraining seeds | min-max | n |")
        print("|---|---|---|---|")
        for name, get, scale, unit in FIGURES:
            values = np.array([get(r) for r in rows if get(r) is not None], dtype=float) * scale
            if values.size == 0:
                continue
            print(f"| {name} | {values.mean():.2f} ± {values.std():.2f}{unit} | "
                  f"{values.min():.2f}-{values.max():.2f}{unit} | {values.size} |")
        by_commit: dict[str, list[float]] = {}
        for r in rows:
            if r.get("graphmae_probe_test") is not None:
                by_commit.setdefault(r["code_commit"] or "docs", []).append(100 * r["graphmae_probe_test"])
        if len(by_commit) > 1:
            print("| GraphMAE probe, test, per code commit | " + "; ".join(
                f"{c}: {np.mean(v):.2f} ± {np.std(v):.2f}% (n {len(v)})" for c, v in by_commit.items()) + " | | |")
        pairs = [t for r in rows for t in (r.get("graphmae_probe_tests") or [])]
        if pairs:
            n_runs = sum(1 for r in rows if r.get("graphmae_probe_tests"))
            print(f"| GraphMAE probe, test, over all (pretraining, probe) pairs of the {n_runs} run seeds | "
                  f"{100 * np.mean(pairs):.2f} ± {100 * np.std(pairs):.2f}% | "
                  f"{100 * np.min(pairs):.2f}-{100 * np.max(pairs):.2f}% | {len(pairs)} |")
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", help="pretraining seeds to run, one after another")
    parser.add_argument("--summarise", action="store_true", help="print the table over the stored seeds")
    parser.add_argument("--transcribe-docs", action="store_true", help="store seeds 0 and 1 from the docs")
    parser.add_argument("--epochs", type=int, default=PAPER_EPOCHS, help="only for checks (use another --store)")
    parser.add_argument("--probe-seeds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--store", type=Path, default=STORE)
    parser.add_argument("--code-commit", default="HEAD", help="run the code of this commit (a clean export)")
    parser.add_argument("--working-tree", action="store_true",
                        help="run the working tree's code as it is (its changes under src/ are recorded)")
    args = parser.parse_args()
    if not (args.seeds or args.summarise or args.transcribe_docs):
        parser.error("give --seeds, --summarise or --transcribe-docs")
    if args.transcribe_docs:
        transcribe_docs(args.store)
    for seed in args.seeds or []:
        run_seed(seed, args.epochs, args.probe_seeds, args.threads, args.store,
                 None if args.working_tree else git("rev-parse", args.code_commit))
    if args.summarise:
        summarise(args.store)


if __name__ == "__main__":
    main()
