"""The memory plan: the fastest remat policy and number of micro-batches whose compiled train step fits the device.

Candidates are compiled in the order of preference (`candidate_groups`) and XLA's memory analysis of each is held
against the per-device budget (the device's limit less `HEADROOM`); the first that fits is taken, with its compiled
step. Candidates that the numbers measured so far already rule out are never compiled (`plan_memory`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils

GIB = 2 ** 30
# What a run config says to have the plan choose: model.remat='auto', data.grad_accum=0.
AUTO_REMAT = "auto"
AUTO_GRAD_ACCUM = 0
# Fastest first, which is also most memory first: none keeps every activation for the backward pass;
# dots_saveable keeps every matmul output (attention scores too); dots_with_no_batch_dims_saveable keeps the
# weight matmuls' outputs only; full keeps each layer's input and recomputes the layer.
REMAT_FASTEST_FIRST = ("none", "dots_saveable", "dots_with_no_batch_dims_saveable", "full")
# The share of the device's limit kept free: what the step's buffer assignment does not see (the next batch copied
# in while a step runs, allocator fragmentation, other programs' buffers still alive).
HEADROOM = 0.10
CGROUP_MEMORY_MAX = "/sys/fs/cgroup/memory.max"  # a container's memory limit (cgroup v2), 'max' when unlimited
# Micro-batches of at least this many tokens per device keep the matmuls compute-bound (a weight matmul's FLOPs per
# weight byte grow with its rows), so splitting a batch down to this size costs little while any remat policy
# recomputes part of the forward pass; below it, a smaller micro-batch costs more than recomputation.
MIN_MICRO_BATCH_TOKENS = 4096


class StepMemory(NamedTuple):
    """One compiled step's memory per device, in bytes: `fixed` = arguments + outputs not aliased to donated inputs
    (the same at any number of micro-batches), `temp` = XLA's temporaries (activations, gradients, ...)."""

    fixed: int
    temp: int

    @property
    def total(self) -> int:
        return self.fixed + self.temp


def step_memory(compiled) -> StepMemory | None:
    """XLA's buffer sizes of a compiled step (`jax.stages.Compiled`); None where the backend reports none."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    fixed = analysis.argument_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
    return StepMemory(int(fixed), int(analysis.temp_size_in_bytes))


def micro_batch_options(batch_rows: int, row_multiple: int) -> tuple[int, ...]:
    """The numbers of micro-batches (`grad_accum`) that split `batch_rows` into equal micro-batches whose rows are a
    multiple of `row_multiple` (the batch devices and processes), fewest first.

    >>> micro_batch_options(32, 4)
    (1, 2, 4, 8)
    """
    return tuple(a for a in range(1, batch_rows + 1)
                 if batch_rows % a == 0 and (batch_rows // a) % row_multiple == 0)


def candidate_groups(remats: Sequence[str], accums: Sequence[int], tokens_per_device: int
                     ) -> list[list[tuple[str, int]]]:
    """(remat, grad_accum) candidates in the order of preference, the expected fastest first, in groups.

    `remats` fastest first (REMAT_FASTEST_FIRST order), `accums` fewest first, `tokens_per_device` the tokens of
    the whole batch on one device. The first group: micro-batches of at least MIN_MICRO_BATCH_TOKENS tokens per
    device (always the largest micro-batch), each remat policy at its fewest micro-batches. Then one group per
    smaller micro-batch, the largest first, each with the fastest policy. The last candidate of a group needs the
    least memory of it (the plan compiles it to rule the whole group out at once).

    >>> candidate_groups(["none", "full"], [1, 2, 4], tokens_per_device=8192)
    [[('none', 1), ('none', 2), ('full', 1), ('full', 2)], [('none', 4), ('full', 4)]]
    """
    large = [a for i, a in enumerate(accums) if i == 0 or tokens_per_device / a >= MIN_MICRO_BATCH_TOKENS]
    small = [a for a in accums if a not in large]
    return [[(r, a) for r in remats for a in large]] + [[(r, a) for r in remats] for a in small]


class MemoryPlanError(ValueError):
    """No candidate's compiled step fits the memory budget."""


@dataclasses.dataclass(frozen=True)
class Probe:
    """One compiled candidate and its memory (None where the backend reports none)."""

    remat: str
    grad_accum: int
    memory: StepMemory | None


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """What the plan chose and why: the candidate, its memory estimate, the budget and every compiled candidate."""

    remat: str
    grad_accum: int
    micro_batch_rows: int
    estimate_bytes: int | None     # the chosen step's XLA estimate per device
    limit_bytes: int | None        # the device's memory limit (None: unknown, e.g. CPU)
    budget_bytes: int | None       # the limit less HEADROOM
    probes: tuple[Probe, ...]      # the compiled candidates, in order
    chosen: str                    # 'fits', 'only candidate', 'no limit' or 'no estimate'
    seconds: float                 # spent planning (compiling, mostly)

    def line(self) -> str:
        """One line for the log, e.g. 'memory plan: remat=none, 2 micro-batches of 4 rows, est. 0.1 of 0.2 GiB per
        device (90% of 0.2); 3 compiles in 3 s' (the tiny preset, both 'auto', train.device_memory_gib=0.17)."""
        def gib(n):
            return f"{n / GIB:.1f}"
        plural = "es" if self.grad_accum > 1 else ""
        parts = [f"remat={self.remat}", f"{self.grad_accum} micro-batch{plural} of {self.micro_batch_rows} rows"]
        if self.estimate_bytes is None:
            parts.append("no memory estimate from this backend: the fastest candidate taken")
        elif self.budget_bytes is None:
            parts.append(f"est. {gib(self.estimate_bytes)} GiB per device, no memory limit known: the fastest "
                         "candidate taken")
        else:
            over = ": over the budget, it may run out of memory" if self.estimate_bytes > self.budget_bytes else ""
            parts.append(f"est. {gib(self.estimate_bytes)} of {gib(self.budget_bytes)} GiB per device "
                         f"({self.budget_bytes / self.limit_bytes:.0%} of {gib(self.limit_bytes)}){over}")
        count = len(self.probes)
        return f"memory plan: {', '.join(parts)}; {count} compile{'s' * (count != 1)} in {self.seconds:.0f} s"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the choice, sizes in bytes and the compiled candidates."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "probes"}
        fields["probes"] = [{"remat": p.remat, "grad_accum": p.grad_accum,
                             "estimate_bytes": None if p.memory is None else p.memory.total} for p in self.probes]
        return fields


def _ruled_out(remat: str, accum: int, probes: Sequence[Probe], remats: Sequence[str], budget: int) -> bool:
    """Whether a failed probe shows that (remat, accum) cannot fit either: a probe of a policy that keeps no more
    activations (at or after `remat` in `remats`) at at least as many micro-batches failed, or at fewer ones and even
    its optimistic extrapolation (temporaries shrinking in proportion to the micro-batch, which they do at most: some
    do not depend on it) is over the budget."""
    for probe in probes:
        if probe.memory is None or remats.index(probe.remat) < remats.index(remat):
            continue
        shrink = min(1.0, probe.grad_accum / accum)
        if probe.memory.fixed + probe.memory.temp * shrink > budget:
            return True
    return False


def plan_memory(compile_for: Callable[[str, int], Any], *, remats: Sequence[str], accums: Sequence[int],
                batch_rows: int, seq_len: int, batch_devices: int = 1, limit_bytes: int | None,
                headroom: float = HEADROOM, memory_of: Callable[[Any], StepMemory | None] = step_memory
                ) -> tuple[MemoryPlan, Any]:
    """Picks the first candidate of `candidate_groups` whose compiled step fits `limit_bytes` less `headroom`.

    Candidates go in order of preference, skipping those that a failed one rules out (`_ruled_out`). After the first
    failure in a group, a candidate that splits the failed policy's batch into more micro-batches is compiled next
    (not ruled out, so the failed size with its temporaries shrunk in proportion fits); any other candidate after a
    failure in its group is preceded by the group's least-memory one, and if that fails too, the rest of the group
    is skipped. So the common cases cost one compile (the fastest fits), two (the next split fits) or three.

    Args:
      compile_for: `(remat, grad_accum) -> compiled step`; called once per candidate tried.
      remats: the policies to consider, fastest first (one, when the config sets it).
      accums: the numbers of micro-batches to consider, fewest first (`micro_batch_options`; one when set).
      batch_rows, seq_len: the global batch (rows, tokens per row); batch_devices: the devices its rows split over.
      limit_bytes: the per-device memory limit; None (unknown, e.g. on CPU) takes the first candidate.
      memory_of: a compiled step's `StepMemory` (`step_memory`; tests pass their own).

    Returns:
      (MemoryPlan, the chosen candidate's compiled step). A single candidate (nothing to choose) is taken even when
      over the budget, and the plan says so.

    Raises:
      MemoryPlanError: nothing fits; the message lists what was compiled, with its estimate, and what to change.
    """
    start = time.perf_counter()
    groups = candidate_groups(remats, accums, batch_rows * seq_len // batch_devices)
    budget = None if limit_bytes is None else int(limit_bytes * (1 - headroom))
    probes: list[Probe] = []
    fitting = {}  # candidate -> (compiled step, memory) of a group's last candidate, compiled ahead of its turn

    def plan(candidate, memory, chosen):
        return MemoryPlan(*candidate, batch_rows // candidate[1], None if memory is None else memory.total,
                          limit_bytes, budget, tuple(probes), chosen, time.perf_counter() - start)

    def probe(candidate):
        compiled = compile_for(*candidate)
        probes.append(Probe(*candidate, memory_of(compiled)))
        return compiled, probes[-1].memory

    def ruled_out(candidate):
        return _ruled_out(*candidate, probes, remats, budget)

    if budget is None or len(groups) == 1 and len(groups[0]) == 1:
        compiled, memory = probe(groups[0][0])
        return plan(groups[0][0], memory, "no limit" if budget is None else "only candidate"), compiled
    for group in groups:
        for candidate in group:
            if candidate in fitting:
                compiled, memory = fitting[candidate]
                return plan(candidate, memory, "fits"), compiled
            if ruled_out(candidate):
                continue
            floor = group[-1]
            failed_here = [p for p in probes if (p.remat, p.grad_accum) in group]
            next_split = (len(failed_here) == 1 and failed_here[0].remat == candidate[0]
                          and failed_here[0].grad_accum < candidate[1])
            if (failed_here and not next_split and candidate != floor
                    and all((p.remat, p.grad_accum) != floor for p in probes)):
                compiled, memory = probe(floor)   # if even the floor fails, it rules out the whole group
                if memory is not None and memory.total <= budget:
                    fitting[floor] = compiled, memory
                if ruled_out(candidate):
                    continue
            compiled, memory = probe(candidate)
            if memory is None:
                return plan(candidate, memory, "no estimate"), compiled
            if memory.total <= budget:
                return plan(candidate, memory, "fits"), compiled
            del compiled  # its executable is freed before the next candidate compiles
    tried = "; ".join(f"remat={p.remat} at {p.grad_accum} micro-batch{'es' * (p.grad_accum > 1)}: "
                      f"{p.memory.total / GIB:.2f} GiB" for p in probes)
    skipped = sum(map(len, groups)) - len(probes)
    raise MemoryPlanError(
        f"memory plan: no train step fits {budget / GIB:.2f} GiB per device ({1 - headroom:.0%} of the limit "
        f"{limit_bytes / GIB:.2f} GiB). Compiled: {tried}"
        f"{f'; {skipped} more ruled out by these numbers' if skipped else ''}. Lower data.max_length or "
        "data.batch_size, set train.loss_chunk_tokens (the loss's logits in chunks), model.quantize='int8' or 'nf4', "
        "or spread the model over more devices (mesh.fsdp); train.device_memory_gib overrides a wrong device limit")


def host_memory_bytes() -> int:
    """This machine's memory in bytes, or its cgroup's limit where that is lower (containers, batch jobs)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open(CGROUP_MEMORY_MAX) as f:
            limit = f.read().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def device_memory_limit(devices: Sequence, override_gib: float = 0.0) -> int | None:
    """The per-device memory limit in bytes: `override_gib` when > 0; else the smallest `bytes_limit` that the
    devices report (GPUs, TPUs: JAX's allocator pool, on GPUs `XLA_PYTHON_CLIENT_MEM_FRACTION` of the memory);
    CPU devices, which report none, share the host's memory (`host_memory_bytes`) equally; None for devices that
    report nothing else. With several processes every process gets the same value (the smallest), so that all
    compile the same step."""
    if override_gib > 0:
        return int(override_gib * GIB)
    stats = [d.memory_stats() or {} for d in devices]
    if all("bytes_limit" in s for s in stats):
        limit = min(s["bytes_limit"] for s in stats)
    elif all(d.platform == "cpu" for d in devices):
        limit = host_memory_bytes() // len(devices)
    else:
        limit = 0
    if jax.process_count() > 1:
        everyone = np.asarray(multihost_utils.process_allgather(np.int64(limit)))
        limit = 0 if (everyone == 0).any() else int(everyone.min())
    return limit or None
