"""Temperature scaling (Guo et al., 2017): one scalar T fitted on validation logits so probabilities mean what they
say."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    log_t = torch.zeros(1, requires_grad=True)
    x, y = torch.from_numpy(logits).float(), torch.from_numpy(labels).long()
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))
