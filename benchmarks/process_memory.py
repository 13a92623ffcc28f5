"""Peak PSS and USS of a process tree (a benchmark run and its DataLoader workers), sampled from
outside it through ``/proc/<pid>/smaps_rollup`` (Linux 4.14 or later).

Why not RSS: a forked worker shares its parent's pages, and each process's RSS counts them in full,
so RSS added up over a parent and its workers counts shared pages more than once; PSS divides each
page among the processes that map it, so it adds up.
"""

from __future__ import annotations

import os


def pss_uss_kib(pid: int) -> tuple[int, int] | None:
    """(PSS, USS) of one process in KiB, from ``/proc/<pid>/smaps_rollup``; None once it has exited.

    PSS counts each resident page divided by the number of processes that map it, so PSS adds up
    over processes with no page counted twice. USS (``Private_Clean + Private_Dirty``) counts the
    pages no other process maps: what ending the process would free."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key in ("Pss", "Private_Clean", "Private_Dirty"):
                    fields[key] = int(value.split()[0])  # "   1234 kB"
    except (FileNotFoundError, ProcessLookupError):
        return None
    if len(fields) < 3:  # a zombie's rollup is empty
        return None
    return fields["Pss"], fields["Private_Clean"] + fields["Private_Dirty"]


def descendants(pid: int) -> list[int]:
    """The live processes below ``pid``, by the parent id in each ``/proc/<pid>/stat``."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as file:
                    stat = file.read()
            except OSError:  # it exited while we looked
                continue
            parent = int(stat.rpartition(")")[2].split()[1])  # after "pid (comm) state"; comm may hold ")"
            children.setdefault(parent, []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in children.get(parent, [])]
        found += frontier
    return found


class PeakMemory:
    """Peak PSS and USS, in KiB, of a process tree sampled from outside it: of the root (``main``),
    of its descendants added up at one instant (``children``), of both at one instant (``total``),
    and of each descendant (``pid N``). Peaks of sums at one instant, not sums of per-process peaks:
    DataLoader workers that are not persistent are new processes every epoch. A peak between two
    samples is missed, so each figure is a lower bound (a close one at 0.5 s against minutes)."""

    def __init__(self, root: int):
        self.root, self.samples = root, 0
        self.peaks: dict[str, tuple[int, int]] = {}

    def sample(self) -> None:
        now = {pid: m for pid in [self.root, *descendants(self.root)] if (m := pss_uss_kib(pid)) is not None}
        if self.root not in now:
            return
        self.samples += 1
        main = now.pop(self.root)
        children = (sum(m[0] for m in now.values()), sum(m[1] for m in now.values()))
        values = {"main": main, "children": children, "total": (main[0] + children[0], main[1] + children[1]),
                  **{f"pid {pid}": m for pid, m in now.items()}}
        for name, (pss, uss) in values.items():
            old = self.peaks.get(name, (0, 0))
            self.peaks[name] = (max(old[0], pss), max(old[1], uss))

    def report(self) -> dict:
        return {"memory_samples": self.samples,
                "peak_pss_uss_mib": {name: [kib / 1024 for kib in peaks] for name, peaks in self.peaks.items()}}
