"""Pipeline training that survives a stage's device: checkpoints, re-planning, restore.

Every `checkpoint.every` steps each stage sends its weights and optimizer state to
the `checkpoint.to` device and keeps a copy itself (the bytes it sent: memory on
both); the checkpoint counts only once every piece has arrived. Before the first,
the checkpoint device holds the initial model (the job was launched from it).

When a stage's device leaves, the step under way is lost, as are the steps since the
checkpoint: the pipeline is re-planned over the stage devices left (balanced cuts,
`plan.training.pipeline_stages`, in the world without the departed devices), and
`plan.replan.weights_to_move` says which blocks each device of the new plan lacks
and from where: a survivor that held them (its copy) or the checkpoint device. Those
moves (weights and optimizer state) are transfers; then every block is rolled back
to the checkpoint and training resumes at the step after it. With no checkpoint, or
the checkpoint device gone, the loss ends the run (`sim.training.execute`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from simdl.errors import DeviceGone
from simdl.nn.core import ITEMSIZE
from simdl.plan.plan import Plan, Replica, Stage
from simdl.plan.replan import weights_to_move, without
from simdl.plan.training import pipeline_stages
from simdl.sim.churn import Gen


class Recovery:
    """A pipeline run's checkpoints and its recovery from a lost stage device."""

    def __init__(self, run: Any):
        self.run, self.job, self.sim = run, run.job, run.sim
        spec = self.job.plan.params.get("checkpoint")
        self.every: int | None = spec["every"] if spec else None
        self.to: str | None = spec["to"] if spec else None
        self.step = -1  # the step the saved state is from (-1: the initial model)
        self.saved: dict[str, np.ndarray] = {}
        self.saved_opt: dict[str, np.ndarray] = {}
        if self.to is not None:
            chain = self.job.chain
            self.sim.allocate(self.to, self._bytes(Stage((self.to,), 0, len(chain))),
                              "checkpoint")
            if self.job.real:
                self.saved = {n: p.copy() for n, p in run.chain.params().items()}
            self._hold_copies(run.stages, 1)

    def _bytes(self, st: Stage) -> float:
        """A stage's weights and optimizer state."""
        slots = self.run.opts[0].slots
        chain = self.job.chain
        return chain.param_bytes(st.start, st.stop) + chain.n_params(st.start, st.stop) \
            * ITEMSIZE * slots

    def _hold_copies(self, stages: tuple[Stage, ...], sign: int) -> None:
        for s, st in enumerate(stages):
            if st.device not in self.sim.gone and st.device != self.to:
                self.sim.allocate(st.device, sign * self._bytes(st), f"checkpoint copy s{s}")

    # -- checkpoints -----------------------------------------------------------------
    def checkpoint(self, i: int) -> Gen:
        """After step i, when one is due: every stage's piece sent to the checkpoint
        device (the step waits); the numbers saved are those at the send."""
        if self.every is None or (i + 1) % self.every or self.job.done.triggered:
            return  # none due (none after the last step)
        run, job, sim = self.run, self.job, self.sim
        t0 = sim.now
        params = {n: p.copy() for n, p in run.chain.params().items()} if job.real else {}
        opt: dict[str, np.ndarray] = {}
        for o in run.opts:
            opt.update(o.state_dict() if job.real else {})
        sends = [job.net.send(st.device, self.to, self._bytes(st), "checkpoint", i)
                 for st in run.stages]
        yield sim.env.all_of(sends)
        self.step, self.saved, self.saved_opt = i, params, opt
        extra = job.metrics.extra
        extra["checkpoints"] = extra.get("checkpoints", 0) + 1
        extra["checkpoint_s"] = extra.get("checkpoint_s", 0.0) + sim.now - t0
        extra["checkpoint_bytes"] = extra.get("checkpoint_bytes", 0.0) + sum(
            self._bytes(st) for st in run.stages if st.device != self.to)

    # -- recovery --------------------------------------------------------------------
    def recover(self, i: int, gone: DeviceGone) -> Gen:
        """Step i (or the checkpoint after it) was lost with `gone`: re-plan, move the
        weights the new stages lack, roll back to the checkpoint. Value: the step to
        go on from. Raises `gone` when nothing can be restored."""
        run, job, sim = self.run, self.job, self.sim
        extra = job.metrics.extra
        while True:
            devices = [st.device for st in run.stages]
            left = [d for d in devices if d not in sim.gone]
            if self.to is None or self.to in sim.gone or len(left) == len(devices) or not left:
                raise gone  # no checkpoint, or the loss was not a stage's: the run ends
            world = without(job.world, list(sim.gone))
            stages = pipeline_stages(world, left, run.m)
            old = Plan("pipeline", (Replica(run.stages),), self.to, run.m)
            new = Plan("pipeline", (Replica(stages),), self.to, run.m)
            slots = run.opts[0].slots
            moves = [job.net.send(m.src, m.dst, m.nbytes + job.chain.n_params(m.block, m.block + 1)
                              * ITEMSIZE * slots, "restore", i)
                     for m in weights_to_move(old, new, world)]
            try:
                yield sim.env.all_of(moves)
            except DeviceGone as again:  # another device left meanwhile: plan again
                gone = again
                continue
            break
        for s, st in enumerate(run.stages):  # the old layout's memory, where it still is
            if st.device not in sim.gone:
                sim.free(st.device, job.chain.param_bytes(st.start, st.stop), f"weights s{s}")
                sim.free(st.device, run.state_bytes(st), f"grads and optimizer s{s}")
        self._hold_copies(run.stages, -1)
        job.plan = replace(job.plan, stages=stages, workers=tuple(left))
        run.lay_out(stages)
        self._hold_copies(stages, 1)
        if job.real:
            for n, p in run.chain.params().items():
                np.copyto(p, self.saved[n])
            for o, names in zip(run.opts, run.names):
                state = {k: v for k, v in self.saved_opt.items()
                         if k.partition(":")[2] in names or k == "step"}
                o.load_state_dict(state)
        extra["replans"] = extra.get("replans", 0) + 1
        extra["steps_lost"] = extra.get("steps_lost", 0) + i - self.step
        extra["recovery_s"] = extra.get("recovery_s", 0.0) + sim.now - gone.at
        extra["plan_after_loss"] = " | ".join(
            f"blocks {st.start}-{st.stop - 1} on {st.device}" for st in stages)
        return self.step + 1
