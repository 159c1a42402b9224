"""Training that has diverged, told from each step's loss and gradient norm, including divergence a finite loss hides:
zero gradients (saturated outputs), a loss far above its start, or a loss stuck at ln V (uniform predictions)."""

from __future__ import annotations

import math
from typing import NamedTuple

FAR_ABOVE = 0.5     # a loss above start + FAR_ABOVE * ln V has diverged (half a uniform guess's loss worse than start)
AT_UNIFORM = 0.01   # |loss - ln V| < AT_UNIFORM * ln V: the model predicts about uniformly
STUCK_STEPS = 3     # ... for this many steps in a row, having started below 0.9 ln V


class Diverged(FloatingPointError):
    """Training stopped on a divergence; the message names the last good checkpoint and how to go on."""


class Divergence(NamedTuple):
    step: int     # the first step whose loss shows it: the parameters after step - 1 are bad
    reason: str


class DivergenceWatch:
    """Checks one step at a time; `start_loss` (the run's first loss) carries over a resume through the checkpoint.

    >>> watch = DivergenceWatch(vocab_size=100)
    >>> watch.check(1, 2.0, grad_norm=1.5, tokens=64) is None
    True
    >>> watch.check(2, 4.61, grad_norm=0.0, tokens=64).reason
    'the gradient is exactly zero (loss 4.6100, ln V = 4.6052): the outputs have saturated'
    """

    def __init__(self, vocab_size: int, start_loss: float | None = None):
        self.ln_vocab = math.log(vocab_size)
        self.start_loss = start_loss
        self.uniform_since = None

    def check(self, step: int, loss: float, grad_norm: float, tokens: float) -> Divergence | None:
        """The divergence step `step`'s numbers show, or None."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return Divergence(step, f"loss is {loss}, gradient norm {grad_norm}")
        if grad_norm == 0.0 and tokens > 0:
            return Divergence(step, f"the gradient is exactly zero (loss {loss:.4f}, ln V = {self.ln_vocab:.4f}): "
                                    "the outputs have saturated")
        if self.start_loss is None:
            self.start_loss = loss
        if loss > self.start_loss + FAR_ABOVE * self.ln_vocab:
            return Divergence(step, f"loss {loss:.4f} is far above its start {self.start_loss:.4f} "
                                    f"(more than {FAR_ABOVE} ln V = {FAR_ABOVE * self.ln_vocab:.2f} higher)")
        uniform = abs(loss - self.ln_vocab) < AT_UNIFORM * self.ln_vocab and self.start_loss < 0.9 * self.ln_vocab
        self.uniform_since = (self.uniform_since or step) if uniform else None
        if self.uniform_since is not None and step - self.uniform_since + 1 >= STUCK_STEPS:
            return Divergence(self.uniform_since, f"loss has sat at ln V = {self.ln_vocab:.4f} (uniform predictions) "
                                                  f"since step {self.uniform_since}, from {self.start_loss:.4f} at "
                                                  "the start")
        return None
