"""Pipeline training's checkpoints and recovery in detail: when checkpoints fall, what
they and a restore move with momentum, and the time and plan a recovery reports. Each
test pins a piece that an operator-mutation sweep of sim/recovery.py found no test
could tell from a wrong version. The pool and pipeline are test_training_churn's
(stages on the phone, laptop and tablet; checkpoints and data on the pc)."""
from test_training_churn import _blocks, _kernel, _pipeline, _run


def _state(w, start, stop, slots):
    """A stage's weights and optimizer state: its parameters' bytes, (1 + slots) times."""
    return w.chain.param_bytes(start, stop) * (1 + slots)


def test_checkpoints_fall_after_every_kth_step_and_count_their_bytes_and_time():
    """Every 3 steps over 7 steps (momentum: one slot): after steps 2 and 5, not 6 (the
    last). Each sends every stage's weights and momentum to the pc; checkpoint_bytes
    adds them up, checkpoint_s the time from the sends to the last arrival."""
    w, plan = _pipeline(steps=7, every=3, momentum=0.9)
    job, sim = _run(plan, w, timing_only=True)
    log = sim.log.frame()
    ckpt = log[(log.kind == "transfer") & (log.label == "checkpoint")]
    assert sorted(set(ckpt.step)) == [2, 5]
    each = sum(_state(w, st.start, st.stop, 1) for st in plan.stages)
    extra = job.metrics.extra
    assert extra["checkpoints"] == 2 and extra["checkpoint_bytes"] == 2 * each
    assert set(ckpt.groupby("step").nbytes.sum()) == {each}
    spans = [g.t_end.max() - g.t_start.min() for _, g in ckpt.groupby("step")]
    assert extra["checkpoint_s"] == spans[0] + spans[1]


def test_a_restore_with_momentum_moves_each_lacked_blocks_weights_and_state():
    """The laptop leaves in step 3 (momentum SGD): each block a device of the new plan
    lacked arrives with its momentum (twice its weights' bytes); the recovery took from
    the leave to the last restore's arrival; the new plan is reported by its blocks."""
    w, plan = _pipeline(steps=4, every=2, momentum=0.9)
    _, probe = _run(plan, w, timing_only=True)
    k = _kernel(probe.log.frame(), "laptop", "fwd fc2 mb0", 3)
    leave = (k.t_start + k.t_end) / 2
    job, sim = _run(plan, w, leaves=[("laptop", leave)], timing_only=True)
    new = job.plan.stages
    lacked = _blocks(new) - _blocks(plan.stages)
    log = sim.log.frame()
    moved = log[(log.kind == "transfer") & (log.label == "restore")]
    assert len(lacked) > 0
    assert moved.nbytes.sum() == sum(_state(w, b, b + 1, 1) for _, b in lacked)
    extra = job.metrics.extra
    assert extra["recovery_s"] == moved.t_end.max() - leave
    assert extra["plan_after_loss"] == " | ".join(
        f"blocks {st.start}-{st.stop - 1} on {st.device}" for st in new)
    assert [st.device for st in new] == ["phone", "tablet"]
