"""Packaging: `contrastkit --version`; `python -m build` makes a wheel and an sdist; the wheel,
installed into a new virtual environment, runs `contrastkit fit --help` and one epoch of the demo
(issue 27).

The new environment gets its dependencies one of two ways:

- by default, from this project's environment: a ``.pth`` line puts its site-packages (torch 2.13.0
  CPU and the rest, as the Makefile installed them) after the new environment's own, and the wheel
  is installed with ``--no-deps``. The environment is still new: contrastkit is imported from the
  wheel's files (checked), never from ``src/`` (the editable install's finder is not loaded: a
  ``.pth`` line adds a folder without running the ``.pth`` files inside it), and every requirement
  the wheel declares is checked to be met there. A fully fresh install takes about 6 minutes on
  this project's 2-core machine (2 min 10 s for torch, 2 min 30 s for the rest, before the demo).
- with ``CONTRASTKIT_FRESH_VENV=1`` (set by ``.ci/run``, so CI always does it), a fresh install as
  the Makefile does it: torch pinned first (``pip install torch==2.13.0``, the CPU wheel from the
  local package index), then the wheel and its dependencies.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from contrastkit import __version__
from contrastkit.cli import main
from tests.conftest import DATA_ROOT, REPO, module_available

TORCH_PIN = "torch==2.13.0"  # the Makefile's pin
FRESH = os.environ.get("CONTRASTKIT_FRESH_VENV") == "1"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_status:
        main(["--version"])
    assert exit_status.value.code == 0
    assert capsys.readouterr().out.strip() == f"contrastkit {__version__}"


def test_the_version_is_written_once():
    """pyproject.toml reads the version from contrastkit.__version__ (no second copy to drift)."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "contrastkit.__version__"}


def run(command: list, cwd: Path, timeout: int, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env}
    result = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, env=environment)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
@pytest.mark.skipif(not module_available("build"), reason="needs the 'build' package (contrastkit[test])")
def test_the_wheel_installs_and_runs_the_demo(tmp_path):
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", dist, REPO], cwd=tmp_path, timeout=600)
    wheels, sdists = list(dist.glob("contrastkit-*.whl")), list(dist.glob("contrastkit-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(dist.iterdir())
    assert wheels[0].name.startswith(f"contrastkit-{__version__}-py3-none-any")

    environment = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(environment)
    python = environment / "bin" / "python"
    if FRESH:
        run([python, "-m", "pip", "install", "-q", TORCH_PIN], cwd=tmp_path, timeout=1200)
        run([python, "-m", "pip", "install", "-q", wheels[0]], cwd=tmp_path, timeout=1200)
    else:
        site_packages = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            cwd=tmp_path, timeout=60).stdout.strip()
        Path(site_packages, "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        run([python, "-m", "pip", "install", "-q", "--no-deps", wheels[0]], cwd=tmp_path, timeout=600)
        check_requirements = (
            "import importlib.metadata as m, re\n"
            "from packaging.requirements import Requirement\n"
            "for line in m.requires('contrastkit'):\n"
            "    r = Requirement(line)\n"
            "    if r.marker is not None: continue  # an extra's requirement\n"
            "    installed = m.version(r.name)\n"
            "    assert r.specifier.contains(installed, prereleases=True), (r, installed)\n"
        )
        run([python, "-c", check_requirements], cwd=tmp_path, timeout=120)

    located = run([python, "-c", "import contrastkit, torch; print(contrastkit.__file__); print(torch.__version__)"],
                  cwd=tmp_path, timeout=120).stdout.split()
    assert Path(located[0]).is_relative_to(environment) and not Path(located[0]).is_relative_to(REPO), located
    assert located[1].startswith("2.13.0"), located

    script = environment / "bin" / "contrastkit"
    assert run([script, "--version"], cwd=tmp_path, timeout=120).stdout.strip() == f"contrastkit {__version__}"
    assert "methods:" in run([script, "fit", "--help"], cwd=tmp_path, timeout=120).stdout
    run([script, "fit", "--max-epochs", "1", "--out", tmp_path / "demo"], cwd=tmp_path, timeout=900,
        CONTRASTKIT_DATA=str(DATA_ROOT))
    for name in ("config.yaml", "metrics.csv", "summary.json", "checkpoints/last.ckpt"):
        assert (tmp_path / "demo" / name).is_file(), name
