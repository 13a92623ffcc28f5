"""Every catalogue objective that LightlySSL 1.6 also implements, beside LightlySSL's loss on the same inputs.

Both get the same float64 inputs (seeds, batch sizes, dimensions, and the parameters each exposes,
mapped between the two APIs); a row gives the largest |difference| of the values and of the gradients
with respect to every input over its cases: "equal to 1e-6" or "differs". Where the definitions
differ (a constant, a normalisation, a default, a memory's initial state), a "differs" row names the
cause with the line of each library (found in the installed sources at run time) and the next row
aligns that one thing and is equal, so that the note is checked, not asserted. Stateful losses (TiCo,
MoCo's memory bank) go through the same calls from the same state, compared after every call. Every
row says what it expects; the exit status is 1 when a row does not come out so (e.g. a pair claimed
equal that is not). Last, the losses of each library with no counterpart in the other are listed.

It runs in the anchor environment, the venv that the setting ``$CONTRASTKIT_ANCHOR_ENV`` names,
built by ``make anchors`` (benchmarks/README.md), where contrastkit is installed editable from this
working tree. One torch thread, about 10 s on a shared 2-core machine. From the repository root::

    "$CONTRASTKIT_ANCHOR_ENV/bin/python" benchmarks/lightly_losses.py
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import pkgutil
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    import lightly
    import lightly.loss as lightly_loss
    from lightly.models import utils as lightly_utils
    from lightly.models.modules import memory_bank as lightly_memory_bank
except ImportError as error:  # depends on the environment
    sys.exit(f"LightlySSL does not import ({error}); run this in the anchor environment: "
             '"$CONTRASTKIT_ANCHOR_ENV/bin/python" benchmarks/lightly_losses.py (benchmarks/README.md).')

from contrastkit.nn import queue as contrastkit_queue
from contrastkit.objectives import OBJECTIVES
from contrastkit.objectives import (barlow_twins, dcl, dino, infonce, mmcr, mochi, msn, predictive, query_key, swav,
                                   tico, vicreg)

TOLERANCE = 1e-6
DTYPE = torch.float64
SEEDS = (0, 1, 2)
EQUAL, DIFFERS, PENDING = "equal", "differs", "pending"


@dataclass
class Row:
    """One line of the table: the largest differences over every case of one pairing."""

    ours: str
    lightly: str
    mapping: str
    expect: str  # EQUAL or DIFFERS (what the note claims); PENDING when nothing could be run
    note: str = ""
    inputs: str = "-"
    value: float = 0.0
    grad: float = 0.0
    state: float | None = None  # largest difference of the stateful piece, where there is one
    cases: int = 0

    def add(self, value: float, grad: float, state: float | None = None) -> None:
        self.value, self.grad, self.cases = max(self.value, value), max(self.grad, grad), self.cases + 1
        self.state = self.state if state is None else max(self.state or 0.0, state)

    @property
    def outcome(self) -> str:
        small = max(self.value, self.grad, self.state or 0.0) <= TOLERANCE
        return PENDING if self.expect == PENDING else EQUAL if small else DIFFERS

    @property
    def verdict(self) -> str:
        text = {PENDING: "not run", EQUAL: f"equal to {TOLERANCE:g}", DIFFERS: "differs"}[self.outcome]
        if self.outcome != self.expect:
            return text + f" (UNEXPECTED: the note says {self.expect})"
        return text + (" (expected, see note)" if self.outcome == DIFFERS else "")


def differences(ours: Callable[..., Tensor], theirs: Callable[..., Tensor],
                inputs: Sequence[Tensor]) -> tuple[float, float]:
    """Largest |value difference| and |gradient difference| (over every input) of one call of each."""
    values, grads = [], []
    for loss_fn in (ours, theirs):
        leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
        values.append(loss_fn(*leaves).reshape(()))  # a scalar (LightlySSL's VICRegLLoss returns shape (1,))
        grads.append([torch.zeros_like(x) if g is None else g
                      for x, g in zip(leaves, torch.autograd.grad(values[-1], leaves, allow_unused=True))])
    return (values[0] - values[1]).abs().item(), max((a - b).abs().max().item() for a, b in zip(*grads))


def grid(**axes: Iterable) -> tuple[list[dict], str]:
    """Every combination of the axes, and its description for the "inputs tried" column."""
    axes = {name: list(values) for name, values in axes.items()}
    cases = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    short = [[v[0] if isinstance(v, tuple) and isinstance(v[0], str) else str(v) for v in vs] for vs in axes.values()]
    described = ", ".join(f"{name} {{{', '.join(values)}}}" for name, values in zip(axes, short))  # settings: label
    return cases, f"{described}: {len(cases)} cases"


def two_views(seed: int, n: int, d: int, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """(n, d) Gaussian rows and a correlated second view (correlation 0.8), so positives are closer."""
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, d, generator=g, dtype=DTYPE)
    return scale * z_a, scale * (0.8 * z_a + 0.6 * torch.randn(n, d, generator=g, dtype=DTYPE))


def multi_views(case: dict) -> tuple[Tensor, ...]:
    """Two (N, k, d) stacks of views (MMCR's online and momentum outputs), correlated per sample."""
    g = torch.Generator().manual_seed(case["seed"])
    centre = torch.randn(case["N"], 1, case["d"], generator=g, dtype=DTYPE)
    return tuple(centre + 0.5 * torch.randn(case["N"], case["k"], case["d"], generator=g, dtype=DTYPE) for _ in "ab")


def located_views(case: dict) -> list[Tensor]:
    """VICRegL's inputs for two views: embeddings (N, 8), maps (N, h, h, 8), grids (N, h, h, 2). Each grid
    is a lattice scaled and shifted by a random crop of a 32 x 32 image, different per sample and view,
    so that no distances tie (ties go to the lower index in ours, unspecified in LightlySSL's topk)."""
    g = torch.Generator().manual_seed(case["seed"])
    n = case["N"]
    grids = []
    for side in case["maps"]:
        centres = (torch.arange(side, dtype=DTYPE) + 0.5) / side
        lattice = torch.stack(torch.broadcast_tensors(centres[:, None], centres[None, :]), dim=-1)
        scale = 12 + 20 * torch.rand(n, 1, 1, 2, generator=g, dtype=DTYPE)
        grids.append(lattice * scale + (32 - scale) * torch.rand(n, 1, 1, 2, generator=g, dtype=DTYPE))
    source = torch.randn(n, 32, 32, 8, generator=g, dtype=DTYPE)  # features of the source image
    maps = [source[torch.arange(n)[:, None, None], grid[..., 0].long(), grid[..., 1].long()]
            + 0.5 * torch.randn(*grid.shape[:3], 8, generator=g, dtype=DTYPE) for grid in grids]
    return [*two_views(case["seed"], n, 8), *maps, *grids]


def view_pair(case: dict) -> tuple[Tensor, Tensor]:
    return two_views(case["seed"], case["N"], case["d"], case.get("scale", 1.0))


def cite(module: object, needle: str) -> str:
    """``package/path.py:line`` of the first line of ``module``'s source that contains ``needle``."""
    path = inspect.getsourcefile(module)  # type: ignore[arg-type]
    root = module.__name__.split(".")[0]  # type: ignore[attr-defined]
    shown = root + path.replace("\\", "/").rsplit("/" + root, 1)[-1]
    with open(path, encoding="utf-8") as source:
        for number, line in enumerate(source, 1):
            if needle in line:
                return f"{shown}:{number}"
    return shown


def default(callable_: Callable, name: str) -> object:
    return inspect.signature(callable_).parameters[name].default


def pair(ours: Callable, theirs: Callable, names: tuple[str, str], mapping: str, note: str, settings: list[tuple],
         inputs: Callable[[dict], Sequence[Tensor]], expect: str = EQUAL, **axes: Iterable) -> Row:
    """Compare ``ours(**kwargs)`` with ``theirs(**kwargs)`` (classes or factories of loss callables)
    for every seed x axes x setting; ``settings``: (label, our kwargs, LightlySSL kwargs)."""
    cases, described = grid(seed=SEEDS, **axes, setting=settings)
    row = Row(*names, mapping, expect, note, described)
    for case in cases:
        losses = [loss(**kwargs) for loss, kwargs in zip((ours, theirs), case["setting"][1:])]
        row.add(*differences(*(f.to(DTYPE) if isinstance(f, nn.Module) else f for f in losses), inputs(case)))
    return row


def ours_name(cls: type, registered: str, detail: str = "") -> str:
    return f"{cls.__module__.removeprefix('contrastkit.objectives.')}.{cls.__name__} (`{registered}`{detail})"


def compare_ntxent() -> list[Row]:
    names = (ours_name(infonce.InfoNCE, "ntxent"), "NTXentLoss")
    settings = [(f"tau={t}", {"temperature": t}, {"temperature": t}) for t in (0.07, 0.2, 0.5)]
    settings += [(f"tau={t},chunk=3", {"temperature": t, "chunk_size": 3}, {"temperature": t}) for t in (0.07, 0.5)]
    ours_t, theirs_t = default(infonce.InfoNCE, "temperature"), default(lightly_loss.NTXentLoss, "temperature")
    return [
        pair(infonce.InfoNCE, lightly_loss.NTXentLoss, names, "temperature -> temperature; chunk_size (ours only)",
             f"mean over the 2N anchors in both ({cite(lightly_loss.ntx_ent_loss, 'labels.repeat(2)')})",
             settings, view_pair, N=(2, 8, 32), d=(4, 32)),
        pair(infonce.InfoNCE, lightly_loss.NTXentLoss, names, "both built with no arguments",
             f"different default temperature: ours {ours_t} ({cite(infonce, 'def __init__')}), LightlySSL "
             f"{theirs_t} ({cite(lightly_loss.ntx_ent_loss, 'temperature: float =')}); equal when passed (row above)",
             [("defaults", {}, {})], view_pair, DIFFERS, N=(8,), d=(32,)),
    ]


def compare_dcl() -> list[Row]:
    settings = [("defaults", {}, {})] + [(f"tau={t}", {"temperature": t}, {"temperature": t}) for t in (0.07, 0.5)]
    settings += [("tau=0.2,chunk=3", {"temperature": 0.2, "chunk_size": 3}, {"temperature": 0.2})]
    weighted = [("defaults", {}, {})] + [(f"tau={t},sigma={s}", {"temperature": t, "sigma": s},
                                          {"temperature": t, "sigma": s}) for t, s in ((0.07, 0.2), (0.5, 1.0))]
    return [
        pair(dcl.DCL, lightly_loss.DCLLoss, (ours_name(dcl.DCL, "dcl"), "DCLLoss"),
             "temperature -> temperature; chunk_size (ours only)",
             "LightlySSL returns 0.5 (loss0 + loss1), the mean of the two directions "
             f"({cite(lightly_loss.dcl_loss, 'return 0.5 * (loss0 + loss1)')}), = our mean over the 2N anchors",
             settings, view_pair, N=(2, 8, 32), d=(4, 32)),
        pair(dcl.DCLW, lightly_loss.DCLWLoss, (ours_name(dcl.DCLW, "dclw"), "DCLWLoss"),
             "temperature, sigma -> temperature, sigma", "vMF weights detached in both "
             f"({cite(lightly_loss.dcl_loss, 'out0.detach(), out1.detach()')}, {cite(dcl, 'u_a.detach()')})",
             weighted, view_pair, N=(2, 8, 32), d=(4, 32)),
    ]


def compare_redundancy_reduction() -> list[Row]:
    barlow = [("defaults", {}, {})] + [(f"lambda={w}", {"redundancy_weight": w}, {"lambda_param": w})
                                       for w in (0.05, 1.0)]
    other = {"invariance_weight": 1.0, "variance_weight": 2.0, "covariance_weight": 3.0, "eps": 1e-3}
    settings = [("defaults", {}, {}),
                ("1,2,3,eps=1e-3", other, {"lambda_param": 1.0, "mu_param": 2.0, "nu_param": 3.0, "eps": 1e-3})]
    return [pair(barlow_twins.BarlowTwins, lightly_loss.BarlowTwinsLoss,
                 (ours_name(barlow_twins.BarlowTwins, "barlow_twins"), "BarlowTwinsLoss"),
                 "redundancy_weight -> lambda_param; eps 1e-5 (ours) = F.batch_norm's fixed eps",
                 "both standardise with divisor N (BatchNorm in training mode)", barlow, view_pair,
                 N=(4, 16, 64), d=(8, 64)),
            pair(vicreg.VICReg, lightly_loss.VICRegLoss, (ours_name(vicreg.VICReg, "vicreg"), "VICRegLoss"),
                 "invariance/variance/covariance_weight, eps -> lambda/mu/nu_param, eps",
                 "input scales 0.3 and 3: the stds below and mostly above the hinge at 1", settings, view_pair,
                 N=(4, 16, 64), d=(8, 64), scale=(0.3, 3.0))]


def compare_cosine() -> list[Row]:
    ncs = lightly_loss.NegativeCosineSimilarity
    mse_name = ours_name(predictive.NormalizedMSE, "normalized_mse")
    axes = {"N": (2, 8, 32), "d": (4, 32)}
    return [
        pair(predictive.NegativeCosine, ncs, (ours_name(predictive.NegativeCosine, "negative_cosine"), ncs.__name__),
             "none (LightlySSL's dim=1, eps=1e-8 = F.cosine_similarity's defaults, used by ours)", "-",
             [("defaults", {}, {})], view_pair, **axes),
        pair(predictive.NormalizedMSE, ncs, (mse_name, ncs.__name__), "none",
             "LightlySSL has no normalised-MSE loss; its BYOL uses NegativeCosineSimilarity, which is "
             f"(ours - 2) / 2 ({cite(predictive, 'normalized_mse(p, z)  =')})",
             [("defaults", {}, {})], view_pair, DIFFERS, **axes),
        pair(predictive.NormalizedMSE, lambda: (lambda p, z: 2.0 + 2.0 * ncs()(p, z)),
             (mse_name, "2 + 2 NegativeCosineSimilarity"), "none", "aligned: mean(2 - 2 cos) = 2 + 2 (-mean cos)",
             [("defaults", {}, {})], view_pair, **axes),
    ]


def compare_mmcr() -> list[Row]:
    def normalised(**kwargs: float) -> Callable[[Tensor, Tensor], Tensor]:
        loss = lightly_loss.MMCRLoss(**kwargs)
        return lambda a, b: loss(F.normalize(a, dim=-1), F.normalize(b, dim=-1))

    names, aligned_names = (ours_name(mmcr.MMCRLoss, "mmcr"), "MMCRLoss"), (ours_name(mmcr.MMCRLoss, "mmcr"),
                                                                            "MMCRLoss on F.normalize(views)")
    mapping = "local_weight -> lmda; (online, momentum), (N, k, d) each, views stacked in the same order"
    settings = [(f"lambda={w}", {"local_weight": w}, {"lmda": w}) for w in (0.0, 5e-3, 0.1)]
    axes = {"N": (4, 16, 64), "k": (1, 2), "d": (8, 32)}
    ours_l, theirs_l = default(mmcr.MMCRLoss, "local_weight"), default(lightly_loss.MMCRLoss, "lmda")
    return [
        pair(mmcr.MMCRLoss, lightly_loss.MMCRLoss, names, mapping,
             "LightlySSL does not L2-normalise the views "
             f"({cite(lightly_loss.mmcr_loss, 'z = torch.cat([online, momentum], dim=1)')}); ours does "
             f"({cite(mmcr, 'return normalize(views).mean(dim=1)')}), as the paper",
             settings, multi_views, DIFFERS, **axes),
        pair(mmcr.MMCRLoss, normalised, aligned_names, mapping, "aligned: views L2-normalised before LightlySSL's loss",
             settings, multi_views, **axes),
        pair(mmcr.MMCRLoss, normalised, aligned_names, "both built with no arguments",
             f"different default lambda: ours {ours_l} (the paper's CIFAR-10), LightlySSL {theirs_l} (ImageNet; "
             f"{cite(lightly_loss.mmcr_loss, 'lmda: float =')}); equal when passed (row above)",
             [("defaults", {}, {})], multi_views, DIFFERS, N=(16,), k=(2,), d=(32,)),
    ]


def compare_vicregl() -> list[Row]:
    """``VICRegL`` vs ``VICRegLLoss`` on two global views. objectives/vicregl.py was written along with
    this script: if it does not import, the row reads "not run" and does not affect the exit status."""
    try:
        vicregl = importlib.import_module("contrastkit.objectives.vicregl")
    except ImportError as error:
        return [Row("vicregl.VICRegL (`vicregl`)", "VICRegLLoss", "-", PENDING,
                    f"contrastkit.objectives.vicregl does not import ({error}): nothing compared")]

    def ours(**kwargs: object) -> Callable[..., Tensor]:
        loss = vicregl.VICRegL(**kwargs)
        return lambda za, zb, ma, mb, ga, gb: loss(za, zb, maps_a=ma, maps_b=mb, grid_a=ga, grid_b=gb)

    def theirs(**kwargs: object) -> Callable[..., Tensor]:  # two global views, no local views
        loss = lightly_loss.VICRegLLoss(**kwargs)
        return lambda za, zb, ma, mb, ga, gb: loss([(za, ma), (zb, mb)], [ga, gb])

    mapping = ("invariance/variance/covariance_weight, alpha, num_matches, eps -> lambda/mu/nu_param, alpha, "
               "num_matches, eps; (z, maps, grid) of views a, b -> global_view_features, global_view_grids")
    shared = {"alpha": 0.9, "num_matches": (6, 3), "eps": 1e-3}
    l2_note = ("LightlySSL keeps num_matches pairs in feature space too "
               f"({cite(lightly_loss.vicregl_loss, 'num_matches=self.num_matches[0]')}); ours keeps every cell "
               "unless l2_all_matches=False (the authors' code)")
    order_note = (f"LightlySSL's kept pairs are sorted by distance ({cite(lightly_utils, 'topk_values.topk(')}); "
                  "ours stay in position order unless match_order='distance' (the authors' code), which changes "
                  "the per-position batch statistics")
    variants = [({}, DIFFERS, f"{l2_note}; {order_note}"),
                ({"l2_all_matches": False}, DIFFERS, order_note),
                ({"match_order": "distance"}, DIFFERS, l2_note),
                ({"l2_all_matches": False, "match_order": "distance"}, EQUAL, "aligned: both options set")]
    rows = []
    for options, expect, note in variants:
        settings = [("defaults", options, {}),
                    ("1,2,3,alpha=0.9,matches=(6,3),eps=1e-3",
                     {"invariance_weight": 1.0, "variance_weight": 2.0, "covariance_weight": 3.0, **shared, **options},
                     {"lambda_param": 1.0, "mu_param": 2.0, "nu_param": 3.0, **shared})]
        shown = ", " + ", ".join(f"{k}={v!r}" for k, v in options.items()) if options else ""
        rows.append(pair(ours, theirs, (ours_name(vicregl.VICRegL, "vicregl", shown), "VICRegLLoss"), mapping, note,
                         settings, located_views, expect, N=(4, 16), maps=((4, 4), (4, 3))))
        rows[-1].inputs += " (maps h x h of views a, b; d = D = 8)"
    return rows


TICO_CALLS = (True, True, False, True, True)  # training mode of each call (False: eval, no update)


def compare_tico() -> list[Row]:
    settings = [("defaults", {}, {}),
                ("beta=0.5,rho=1", {"covariance_momentum": 0.5, "covariance_weight": 1.0}, {"beta": 0.5, "rho": 1.0})]
    cases, described = grid(seed=SEEDS, N=(4, 16), d=(8, 32), dim=("given", "None"), setting=settings)
    described += f" x {len(TICO_CALLS)} calls (train, train, eval, train, train)"
    mapping = ("covariance_momentum, covariance_weight -> beta, rho; ours .train()/.eval() -> "
               "update_covariance_matrix=True/False")
    name = ours_name(tico.TiCo, "tico")
    rows = [Row(name, "TiCoLoss", mapping, DIFFERS,
                f"LightlySSL adds the constant 1 ({cite(lightly_loss.tico_loss, 'transformative_invariance_loss =')})"
                f", ours does not ({cite(tico, 'invariance = -(u_a * u_b)')}): values differ by 1, gradients and "
                "the running covariance C are equal", described),
            Row(name, "TiCoLoss - 1", mapping, EQUAL,
                "aligned: LightlySSL's value minus 1; C compared after every call", described)]
    for case, (row, offset) in itertools.product(cases, zip(rows, (0.0, 1.0))):
        _, ours_kwargs, theirs_kwargs = case["setting"]
        ours = tico.TiCo(**ours_kwargs, dim=case["d"] if case["dim"] == "given" else None).to(DTYPE)
        theirs = lightly_loss.TiCoLoss(**theirs_kwargs)
        value = grad = state = 0.0
        for call, training in enumerate(TICO_CALLS):
            ours.train(training)
            dv, dg = differences(ours, lambda a, b: theirs(a, b, update_covariance_matrix=training) - offset,
                                 two_views(100 * case["seed"] + call, case["N"], case["d"]))
            value, grad = max(value, dv), max(grad, dg)
            state = max(state, (ours.covariance - theirs.C).abs().max().item())
        row.add(value, grad, state)
    return rows


MOCO_CALLS = 6


def lightly_bank_loss(seed: int, size: int, d: int, temperature: float, renormalise: bool = True) -> nn.Module:
    """NTXentLoss with a (size, d) memory bank in float64; ``renormalise``: see FLOAT32_BANK."""
    torch.manual_seed(seed)  # the initial bank comes from the global generator
    loss = lightly_loss.NTXentLoss(temperature=temperature, memory_bank_size=(size, d)).to(DTYPE)
    if renormalise:
        loss.memory_bank.bank.copy_(F.normalize(loss.memory_bank.bank, dim=1))
    return loss


FLOAT32_BANK = ("LightlySSL normalises its initial bank in float32 at construction "
                f"({cite(lightly_memory_bank, 'self.bank = torch.nn.functional.normalize')}), ours normalises the "
                f"negatives in float64 ({cite(mochi, 'queue = normalize(queue.detach())')}): the bank is "
                "renormalised in float64 here; left as built, max value diff {value}, grad diff {grad}")


def moco_sequence(seed: int, size: int, batch: int, d: int, temperature: float, prefill: bool,
                  renormalise: bool = True) -> tuple[float, float, float | None]:
    theirs = lightly_bank_loss(seed, size, d, temperature, renormalise)
    ours = mochi.MoCHi(temperature=temperature, num_mixed=0, num_query_mixed=0)
    queue = contrastkit_queue.MemoryQueue(size, d).to(DTYPE)
    if prefill:
        queue.enqueue(theirs.memory_bank.bank.clone())
    value = grad = state = 0.0
    for call in range(MOCO_CALLS):
        negatives = queue.keys().clone()
        # as methods/moco.py: the loss, then the raw keys enqueued (the loss normalises them)
        dv, dg = differences(lambda q, k: (ours(q, k, keys=negatives), queue.enqueue(k))[0], theirs,
                             two_views(100 * seed + call, batch, d))
        value, grad = max(value, dv), max(grad, dg)
        if prefill:  # LightlySSL stores normalised keys, at the same positions as our ring buffer
            state = max(state, (F.normalize(queue.rows, dim=1) - theirs.memory_bank.bank).abs().max().item())
    return value, grad, state if prefill else None


def compare_moco() -> list[Row]:
    """``mochi`` without mixing (MoCo's InfoNCE) and a MemoryQueue vs NTXentLoss with a memory bank."""
    mapping = ("temperature -> temperature; num_mixed=0, num_query_mixed=0; keys=MemoryQueue(K, d).keys(), "
               "then enqueue(k) -> memory_bank_size=(K, d)")
    names = (ours_name(mochi.MoCHi, "mochi", ", no mixing"), "NTXentLoss(memory_bank_size)")
    empty = cite(contrastkit_queue, 'register_buffer("filled"')
    rows = [Row(*names, mapping, DIFFERS, "initial state: LightlySSL's bank starts with K random unit vectors "
                f"({cite(lightly_memory_bank, 'self.bank = torch.randn(size)')}), our queue starts empty ({empty})"),
            Row(*names, mapping, EQUAL, "aligned: our queue first filled with LightlySSL's initial bank; K a "
                "multiple of B; bank compared after every call; " + FLOAT32_BANK),
            Row(*names, mapping, DIFFERS, "queue filled as above, K not a multiple of B: at the wrap LightlySSL drops "
                f"the rows that do not fit ({cite(lightly_memory_bank, 'self.bank[ptr:] = batch[: self.size[0]')}), "
                f"ours writes them over the oldest ({cite(contrastkit_queue, 'positions = (start')})")]
    layouts = [((16, 4), (32, 8)), ((16, 4), (32, 8)), ((10, 4), (20, 8))]
    as_built = Row("", "", "", EQUAL)
    for index, (row, layout) in enumerate(zip(rows, layouts)):
        cases, row.inputs = grid(seed=SEEDS, **{"(K,B)": layout}, d=(8, 32), tau=(0.07, 0.2, 0.5))
        row.inputs += f" x {MOCO_CALLS} calls"
        for case in cases:
            arguments = (case["seed"], *case["(K,B)"], case["d"], case["tau"])
            row.add(*moco_sequence(*arguments, prefill=index > 0))
            if index == 1:
                as_built.add(*moco_sequence(*arguments, prefill=True, renormalise=False))
    rows[1].note = rows[1].note.format(value=number(as_built.value), grad=number(as_built.grad))
    return rows


def compare_query_key() -> list[Row]:
    """``query_key_infonce`` with a queue vs NTXentLoss with a memory bank: one call from the same bank."""
    mapping = "temperature -> temperature; extra_negatives = LightlySSL's bank before the call"
    rows = [Row(ours_name(query_key.QueryKeyInfoNCE, "query_key_infonce"), "NTXentLoss(memory_bank_size)", mapping,
                DIFFERS, "ours also has the B - 1 other keys of the batch as negatives "
                f"({cite(query_key, 'logits = u @ v.T / temperature  # (B, B)')}); LightlySSL's memory-bank mode "
                f"has the bank only ({cite(lightly_loss.ntx_ent_loss, 'logits = torch.cat([sim_pos, sim_neg]')})"),
            Row("query_key.query_key_infonce (function)", "NTXentLoss(memory_bank_size)", mapping +
                "; negative_weights = 0", EQUAL, "aligned: in-batch negatives removed by negative_weights = 0 (the "
                "module does not take them); bank renormalised in float64 as for mochi")]
    cases, described = grid(seed=SEEDS, N=(4, 16), d=(8, 32), K=(16, 64), tau=(0.05, 0.2, 0.5))
    for case, (index, row) in itertools.product(cases, enumerate(rows)):
        n, t = case["N"], case["tau"]
        theirs = lightly_bank_loss(case["seed"], case["K"], case["d"], t)
        bank, zeros = theirs.memory_bank.bank.clone(), torch.zeros(n, n, dtype=DTYPE)
        module = query_key.QueryKeyInfoNCE(temperature=t)
        ours = [lambda q, k: module(q, k, extra_negatives=bank),
                lambda q, k: query_key.query_key_infonce(q, k, t, bank, zeros)][index]
        row.add(*differences(ours, theirs, two_views(case["seed"], n, case["d"])))
        row.inputs = described
    return rows


def crop_scores(case: dict) -> list[Tensor]:
    """SwAV's inputs: cosine scores (N, V, K) of V crops against K prototypes (unit rows in 6 dimensions,
    crops of a sample correlated), and the (L, 2, K) scores of a queue of L past samples' two global crops."""
    g = torch.Generator().manual_seed(case["seed"])
    n, views, k = case["N"], case["V"], case["K"]
    prototypes = F.normalize(torch.randn(k, 6, generator=g, dtype=DTYPE), dim=1)
    centre = torch.randn(n, 1, 6, generator=g, dtype=DTYPE)
    crops = F.normalize(centre + 0.7 * torch.randn(n, views, 6, generator=g, dtype=DTYPE), dim=-1)
    queue = F.normalize(torch.randn(case["L"], 2, 6, generator=g, dtype=DTYPE), dim=-1)
    return [crops @ prototypes.T] + ([queue @ prototypes.T] if case["L"] else [])


def compare_swav() -> list[Row]:
    """``swav`` (scores (N, V, K), the 2 global crops first) vs ``SwaVLoss`` (lists of (N, K) per crop)."""
    def ours(**kwargs: object) -> Callable[..., Tensor]:
        loss = swav.SwAVLoss(**kwargs)
        return lambda scores, *queue: loss(scores, queue_scores=queue[0] if queue else None)

    def theirs(**kwargs: object) -> Callable[..., Tensor]:
        loss = lightly_loss.SwaVLoss(**kwargs)
        return lambda scores, *queue: loss([scores[:, 0], scores[:, 1]], list(scores[:, 2:].unbind(1)),
                                           [queue[0][:, 0], queue[0][:, 1]] if queue else None)

    settings = [("defaults", {}, {}),
                ("tau=0.2,eps=0.1,iters=5", {"temperature": 0.2, "epsilon": 0.1, "sinkhorn_iterations": 5},
                 {"temperature": 0.2, "sinkhorn_epsilon": 0.1, "sinkhorn_iterations": 5})]
    mapping = ("temperature, epsilon, sinkhorn_iterations -> temperature, sinkhorn_epsilon, sinkhorn_iterations; "
               "scores[:, :2] -> high_resolution_outputs, scores[:, 2:] -> low_resolution_outputs; queue_scores[:, i] "
               "-> queue_outputs[i]")
    note = (f"codes of the global crops only, every other crop predicts them, averaged per code "
            f"({cite(lightly_loss.swav_loss, 'loss += subloss / (n_crops - 1)')}, {cite(swav, 'others = [v for v')})"
            "; the queue joins the batch before Sinkhorn in both (LightlySSL's after the batch, ours before it: the "
            "codes do not depend on the order)")
    return [pair(ours, theirs, (ours_name(swav.SwAVLoss, "swav"), "SwaVLoss"), mapping, note, settings, crop_scores,
                 N=(4, 16), V=(2, 4, 8), K=(8, 32), L=(0, 8))]


def compare_dino() -> list[Row]:
    """``dino`` vs ``DINOLoss`` over several calls from the same centre, compared after every call."""
    settings = [("defaults", {}, {}, {}),
                ("tau_s=0.2,tau_t=0.07,m=0.5", {"student_temperature": 0.2, "teacher_temperature": 0.07,
                                                 "center_momentum": 0.5},
                 {"student_temp": 0.2, "teacher_temp": 0.07, "warmup_teacher_temp": 0.07, "center_momentum": 0.5}, {}),
                ("per-call tau_t=0.05", {}, {}, {"teacher_temperature": 0.05})]
    cases, described = grid(seed=SEEDS, N=(4, 16), V=(2, 3, 8), K=(8, 64), setting=settings)
    calls = (True, True, False, True)  # training mode of each call (eval: the centre stays)
    described += f" x {len(calls)} calls (train, train, eval, train); teacher: the 2 global crops"
    mapping = ("student_temperature, teacher_temperature, center_momentum -> student_temp, teacher_temp (and "
               "warmup_teacher_temp), center_momentum; student (N, V, K), teacher (N, 2, K) -> lists of (N, K) per crop; "
               "per-call teacher_temperature -> teacher_temp; ours .eval() -> LightlySSL's loss without its centre "
               "update (restored after the call)")
    row = Row(ours_name(dino.DINOLoss, "dino"), "DINOLoss", mapping, EQUAL,
              f"pairs of a teacher crop with every other student crop, averaged over the pairs and samples "
              f"({cite(lightly_loss.dino_loss, 'loss.fill_diagonal_(0)')}, {cite(dino, 'others = [v for v')}); "
              "centre compared after every call; LightlySSL holds a temperature as a float32 tensor "
              f"({cite(lightly_loss.dino_loss, 'teacher_temperature = torch.tensor(teacher_temp)')}): value "
              "differences of ~1e-8", described)
    for case in cases:
        _, ours_kwargs, theirs_kwargs, call_kwargs = case["setting"]
        n, views, k = case["N"], case["V"], case["K"]
        ours = dino.DINOLoss(output_dim=k, **ours_kwargs).to(DTYPE)
        theirs = lightly_loss.DINOLoss(output_dim=k, **theirs_kwargs).to(DTYPE)
        tau = call_kwargs.get("teacher_temperature")
        value = grad = state = 0.0
        for call, training in enumerate(calls):
            g = torch.Generator().manual_seed(100 * case["seed"] + call)
            student = 2 * torch.randn(n, views, k, generator=g, dtype=DTYPE)
            teacher = student[:, :2] + torch.randn(n, 2, k, generator=g, dtype=DTYPE)
            ours.train(training)
            saved = theirs.center.clone()

            def lightly_call(s: Tensor, t: Tensor) -> Tensor:
                # LightlySSL's examples compute the teacher under no_grad; its loss does not detach it
                result = theirs(list(t.detach().unbind(1)), list(s.unbind(1)), teacher_temp=tau)
                if not training:
                    theirs.center.data = saved.clone()
                return result

            dv, dg = differences(lambda s, t: ours(s, t, teacher_temperature=tau), lightly_call, [student, teacher])
            value, grad = max(value, dv), max(grad, dg)
            state = max(state, (ours.center - theirs.center.flatten()).abs().max().item())
        row.add(value, grad, state)
    return [row]


def compare_msn() -> list[Row]:
    """``msn`` (anchors (N, M, d), targets (N, d), prototypes) vs ``MSNLoss`` (anchors (M N, d), view-major)."""
    def ours(**kwargs: object) -> Callable[..., Tensor]:
        loss = msn.MSNLoss(**kwargs)
        return lambda anchors, targets, prototypes: loss(anchors, targets, prototypes=prototypes)

    def theirs(sharpen: float = 0.25, **kwargs: object) -> Callable[..., Tensor]:
        loss = lightly_loss.MSNLoss(**kwargs)
        return lambda anchors, targets, prototypes: loss(anchors.transpose(0, 1).reshape(-1, anchors.shape[-1]),
                                                         targets, prototypes, target_sharpen_temperature=sharpen)

    def inputs(case: dict) -> list[Tensor]:
        g = torch.Generator().manual_seed(case["seed"])
        n, views, d = case["N"], case["M"], case["d"]
        targets = torch.randn(n, d, generator=g, dtype=DTYPE)
        anchors = targets.unsqueeze(1) + 0.7 * torch.randn(n, views, d, generator=g, dtype=DTYPE)
        return [anchors, targets, torch.randn(case["K"], d, generator=g, dtype=DTYPE)]

    settings = [("defaults", {}, {}),
                ("tau=0.2,T=0.5,lambda=3,iters=0", {"temperature": 0.2, "sharpen_temperature": 0.5,
                                                     "regularization_weight": 3.0, "sinkhorn_iterations": 0},
                 {"temperature": 0.2, "sharpen": 0.5, "regularization_weight": 3.0, "sinkhorn_iterations": 0}),
                ("lambda=0", {"regularization_weight": 0.0}, {"regularization_weight": 0.0})]
    mapping = ("temperature, sharpen_temperature, regularization_weight, sinkhorn_iterations -> temperature, "
               "target_sharpen_temperature (a forward argument), regularization_weight, sinkhorn_iterations; anchors "
               "(N, M, d) -> (M N, d) view-major")
    note = (f"both add log K to the mean-entropy term ({cite(lightly_loss.msn_loss, 'loss += math.log(float(len')}); "
            "ours sharpens as softmax(s / (tau T)), LightlySSL as softmax(s / tau) ** (1 / T) renormalised (equal)")
    return [pair(ours, theirs, (ours_name(msn.MSNLoss, "msn"), "MSNLoss"), mapping, note, settings, inputs,
                 N=(4, 16), M=(1, 3), d=(8,), K=(8, 32))]


PAIRS = {  # catalogue name -> (LightlySSL classes it is compared with, comparison or None if done elsewhere)
    "ntxent": (("NTXentLoss",), compare_ntxent),
    "infonce": (("NTXentLoss",), None),  # another name of "ntxent"
    "dcl": (("DCLLoss",), compare_dcl),
    "dclw": (("DCLWLoss",), None),  # in compare_dcl
    "barlow_twins": (("BarlowTwinsLoss",), compare_redundancy_reduction),
    "vicreg": (("VICRegLoss",), None),  # in compare_redundancy_reduction
    "vicregl": (("VICRegLLoss",), compare_vicregl),
    "tico": (("TiCoLoss",), compare_tico),
    "mmcr": (("MMCRLoss",), compare_mmcr),
    "negative_cosine": (("NegativeCosineSimilarity",), compare_cosine),
    "normalized_mse": (("NegativeCosineSimilarity",), None),  # in compare_cosine
    "mochi": (("NTXentLoss",), compare_moco),
    "query_key_infonce": (("NTXentLoss",), compare_query_key),
    "swav": (("SwaVLoss",), compare_swav),
    "dino": (("DINOLoss",), compare_dino),
    "msn": (("MSNLoss",), compare_msn),
}


def lightly_classes() -> list[str]:
    """Every nn.Module class defined in a module of the lightly.loss package."""
    found = set()
    for info in pkgutil.walk_packages(lightly_loss.__path__, "lightly.loss."):
        module = importlib.import_module(info.name)
        found.update(name for name, cls in vars(module).items()
                     if inspect.isclass(cls) and issubclass(cls, nn.Module) and cls.__module__ == module.__name__)
    return sorted(found)


def number(value: float | None) -> str:
    return "-" if value is None else ("0" if value == 0 else f"{value:.1e}")


def main() -> int:
    torch.set_num_threads(1)
    # lightly/loss/dcl_loss.py builds DCLW's weights with torch.tensor(tensor), which warns: harmless here.
    warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
    started = time.perf_counter()
    rows = [row for _, compare in PAIRS.values() if compare is not None for row in compare()]
    seconds = time.perf_counter() - started

    print(f"# contrastkit objectives beside LightlySSL {lightly.__version__} "
          f"(torch {torch.__version__}, Python {platform.python_version()}, {DTYPE}, tolerance {TOLERANCE:g})\n")
    print("| ours (module.Class) | LightlySSL | parameter mapping | inputs tried | max \\|value diff\\| "
          "| max \\|grad diff\\| | verdict | note |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        note = row.note + (f"; max state diff {number(row.state)}" if row.state is not None else "")
        value, grad = (number(row.value), number(row.grad)) if row.cases else ("-", "-")
        cells = [row.ours, row.lightly, row.mapping, row.inputs, value, grad, row.verdict, note]
        print("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")

    matched = {cls for classes, _ in PAIRS.values() for cls in classes}
    print(f"\nLightlySSL {lightly.__version__} losses with no catalogue counterpart: "
          + ", ".join(c for c in lightly_classes() if c not in matched))
    print("Catalogue objectives with no LightlySSL counterpart: "
          + ", ".join(name for name in OBJECTIVES.names() if name not in PAIRS))

    unexpected = [row for row in rows if row.outcome not in (row.expect, PENDING)]
    print(f"\n{sum(row.cases for row in rows)} cases in {seconds:.1f} s; {len(unexpected)} row(s) not as expected.")
    for row in unexpected:
        print(f"UNEXPECTED: {row.ours} vs {row.lightly} ({row.mapping}): the note says {row.expect}, got "
              f"{row.outcome} (value {number(row.value)}, grad {number(row.grad)}, state {number(row.state)})")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
