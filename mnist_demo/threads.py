"""How many CPU threads the demo trains with (``--threads``), and why: measured in docs/benchmarks.md.

The model is small (19k parameters, batch 128): a second OpenMP thread gains little on an idle
machine, and on a machine whose cores are busy OpenMP's spinning threads wait on each other and
an epoch takes several times longer. ``auto`` therefore uses more than one thread only when the
cores it would use are idle by the 1-minute load average.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

AUTO_MAX = 2  # more threads than this do not pay for a 19k-parameter model (docs/benchmarks.md)
LOAD_SLACK = 0.5  # an idle machine's load average is rarely 0: below half a core of other work counts as idle


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS)
        return max(1, os.cpu_count() or 1)


def _positive(text: str | None) -> int | None:
    try:
        value = int(text) if text is not None else 0
    except ValueError:
        return None
    return value if value >= 1 else None


def choose_threads(option: str = "auto", env: Mapping[str, str] | None = None, cores: int | None = None,
                   load: float | None = None) -> tuple[int, str]:
    """Threads for this process and the reason shown in the run's header: an explicit ``--threads N``
    wins, then ``OMP_NUM_THREADS`` (torchrun sets 1 for several ranks on a machine); ``auto`` shares the
    cores among this machine's ranks (``LOCAL_WORLD_SIZE``) and uses one thread when the load average
    plus this process's threads would exceed the cores, since spinning OpenMP threads on busy cores
    make training several times slower."""
    explicit = _positive(option)
    if explicit is not None:
        return explicit, "--threads"
    if option != "auto":
        raise ValueError(f"--threads {option!r}: give auto or a positive number")
    env = os.environ if env is None else env
    from_env = _positive(env.get("OMP_NUM_THREADS"))
    if from_env is not None:
        return from_env, "OMP_NUM_THREADS"
    cores = available_cores() if cores is None else max(1, cores)
    ranks = _positive(env.get("LOCAL_WORLD_SIZE")) or _positive(env.get("WORLD_SIZE")) or 1
    share = min(AUTO_MAX, max(1, cores // ranks))
    if share == 1:
        return 1, f"auto: {cores} core(s) for {ranks} process(es)"
    load = os.getloadavg()[0] if load is None else load
    if load + share * ranks > cores + LOAD_SLACK:
        return 1, f"auto: load average {load:.1f} on {cores} cores"
    return share, f"auto: {cores} idle cores"
