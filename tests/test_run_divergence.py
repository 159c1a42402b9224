"""Divergence, with and without NaN: the run stops, exports nothing, names the last checkpoint whose parameters are
good (not the one that produced the bad loss), and its advice works when followed: resuming from that checkpoint
with a lower learning rate, another schedule and clipping turned on trains on."""

import math
import os
import re

import pytest

from lowrank_jax.training import loop
from lowrank_jax.training.checkpoint import Checkpointer
from lowrank_jax.training.divergence import Diverged, DivergenceWatch
from run_setup import logged_losses, trained_run  # noqa: F401 (a fixture)

V = 49152  # the tiny model's vocabulary
LN_V = math.log(V)


@pytest.mark.parametrize("losses,grad_norms,expected", [
    ([2.0, float("nan")], [1.0, 1.0], (2, "loss is nan")),
    ([2.0, 3.0], [1.0, float("inf")], (2, "gradient norm inf")),
    ([LN_V, LN_V], [1.0, 0.0], (2, "the gradient is exactly zero")),
    ([2.0, 2.0 + 0.51 * LN_V], [1.0, 1.0], (2, "far above its start 2.0000")),
    ([7.0, LN_V, LN_V + 0.01, LN_V - 0.01], [1.0] * 4, (2, "has sat at ln V = 10.8027 (uniform predictions) since "
                                                         "step 2, from 7.0000")),
    ([LN_V, LN_V, LN_V, LN_V], [1.0] * 4, None),        # a random model starts there: not stuck
    ([2.0, 4.0, 1.5, 2.0 + 0.49 * LN_V], [1.0] * 4, None),
])
def test_divergence_watch(losses, grad_norms, expected):
    watch = DivergenceWatch(V)
    found = None
    for step, (loss, grad_norm) in enumerate(zip(losses, grad_norms), start=1):
        found = found or watch.check(step, loss, grad_norm, tokens=100.0)
    if expected is None:
        assert found is None
    else:
        assert found.step == expected[0] and expected[1] in found.reason, found


def test_divergent_lr_stops_exporting_nothing_and_resuming_as_advised_trains_on(trained_run, tmp_path):
    """lr 1e6 without clipping, warmed up over two steps: step 1's update is zero (lr 0), step 2's destroys the
    weights while the loss stays near ln V, and step 4's gradient is exactly zero. Checkpoint 3 produced that loss;
    checkpoint 2's weights reach 1e5: checkpoint 1 is the last good one. Following the advice, the run continues
    from it with a lower lr, another schedule (no warmup) and clipping."""
    workdir = tmp_path / "run"
    diverging = {"optimizer.learning_rate": 1e6, "optimizer.grad_clip": 0.0, "optimizer.warmup_ratio": 0.5,
                 "train.checkpoint_every": 1, "train.export_peft": True}
    with pytest.raises(Diverged) as error:
        loop.run(trained_run.config(workdir, **diverging))
    message = str(error.value)
    assert message.startswith("training diverged at step 4: the gradient is exactly zero (loss 10.80"), message
    assert f"Stopped; nothing exported; checkpoints 2, 3 moved to {workdir}/unused_checkpoints. " in message
    assert f"The last good checkpoint is step 1 ({workdir}/checkpoints/1); continue from it with a lower learning " \
           "rate: --config.resume=True --config.optimizer.learning_rate=100000 --config.optimizer.grad_clip=1.0" \
        in message
    assert not os.path.exists(workdir / "peft") and not os.path.exists(workdir / "report.json")
    assert Checkpointer(str(workdir)).steps() == [1]
    unused = workdir / "unused_checkpoints"
    assert (unused / "3" / "why.txt").read_text().startswith("diverged: its parameters gave step 4's the gradient")
    assert re.match(r"unusable: trainable\S+ holds values up to [\d.]+e\+05", (unused / "2" / "why.txt").read_text())

    advised = dict(re.findall(r"--config\.([\w.]+)=(\S+)", message))
    assert advised == {"resume": "True", "optimizer.learning_rate": "100000", "optimizer.grad_clip": "1.0"}
    resumed = loop.run(trained_run.config(workdir, **{  # lower than advised: what the tiny model trains with
        "resume": True, "optimizer.learning_rate": 5e-4, "optimizer.grad_clip": float(advised["optimizer.grad_clip"]),
        "train.checkpoint_every": 1, "train.export_peft": True}))
    losses = logged_losses(workdir)
    assert len(losses) == 4 and all(abs(loss - losses[0]) < 0.1 for loss in losses), losses
    assert os.path.exists(workdir / "peft" / "adapter_model.safetensors") and math.isfinite(resumed.report["val_loss"])
