"""Adam on the scales, as the authors' ``RescaleAdam``: one scalar per tensor."""

from __future__ import annotations

import torch


class ScaleAdam:
    """Adam over a vector of scales, with the details of GradInit's reference code.

    * Each scalar's gradient is clipped to ``[-clip, clip]`` (``clip = 0``: no clipping).
    * Objective steps and constraint steps keep separate first moments and separate step
      counts for their bias correction; the second moment is shared (CNN code) or kept
      per kind too (``separate_second_moment``, Transformer code). With a shared second
      moment its bias correction counts all steps.
    * After each step ``alpha`` is clamped to ``[low, high]`` elementwise.

    All state is float64 vectors, so the update of every scale is one batched operation.

    Example:
        >>> import torch
        >>> opt = ScaleAdam(torch.full((2,), 0.1), (0.9, 0.999), 1e-8, 0.0,
        ...                 torch.zeros(2), torch.full((2,), float("inf")), False)
        >>> [round(a, 6) for a in opt.step(torch.tensor([1.0, -1.0]), constraint=False).tolist()]
        [0.9, 1.1]
    """

    def __init__(
        self,
        lr: torch.Tensor,
        betas: tuple[float, float],
        eps: float,
        clip: float,
        low: torch.Tensor,
        high: torch.Tensor,
        separate_second_moment: bool,
    ):
        n = lr.numel()
        self.lr = lr.to(torch.float64)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.clip = clip
        self.low = low.to(torch.float64)
        self.high = high.to(torch.float64)
        self.separate_second_moment = separate_second_moment
        self.alpha = torch.ones(n, dtype=torch.float64)
        zeros = torch.zeros(n, dtype=torch.float64)
        self.exp_avg = {False: zeros.clone(), True: zeros.clone()}
        self.exp_avg_sq = {False: zeros.clone(), True: zeros.clone()}
        self.steps = {False: 0, True: 0}

    def step(self, grad: torch.Tensor, constraint: bool) -> torch.Tensor:
        """One update from the scale gradient ``grad``; returns the new scales."""
        grad = grad.to(torch.float64)
        if self.clip > 0:
            grad = grad.clamp(-self.clip, self.clip)
        self.steps[constraint] += 1
        m = self.exp_avg[constraint]
        m.mul_(self.beta1).add_(grad, alpha=1 - self.beta1)
        sq_key = constraint if self.separate_second_moment else False
        v = self.exp_avg_sq[sq_key]
        v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        t1 = self.steps[constraint]
        t2 = t1 if self.separate_second_moment else self.steps[False] + self.steps[True]
        denom = (v / (1 - self.beta2**t2)).sqrt_().add_(self.eps)
        self.alpha.sub_(m / denom * self.lr / (1 - self.beta1**t1))
        torch.maximum(self.alpha, self.low, out=self.alpha)
        torch.minimum(self.alpha, self.high, out=self.alpha)
        return self.alpha
