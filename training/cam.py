"""Class activation maps in closed form, so that the exported graph gives them without gradients or torch.

Every backbone here ends in a feature map A [N, K, h, w] that is global-average pooled into p [N, K] and fed to the
Head. Grad-CAM (Selvaraju et al. 2017) weighs A's channels by the gradient of the class score y_c with respect to
A, averaged over the positions: alpha_ck = (1/hw) sum_ij dy_c/dA_kij = (1/hw) dy_c/dp_k, because dp_k/dA_kij = 1/hw.
The heatmap is ReLU(sum_k alpha_ck A_k). dy_c/dp is closed form for the Head:
- linear head (y = W p + b): W[c], so Grad-CAM is CAM (Zhou et al. 2016);
- hidden layer (y = W2 ReLU(W1 p + b1) + b2): W1^T (W2[c] * [W1 p + b1 > 0]).
The map is kept on the scale of the score: before the ReLU, its sum over the positions is y_c - b_c (linear head),
the share of the class score each position carries.

The classes to map are chosen per image: a class index, or -r for the class the model ranks r-th (-1: the top
class), resolved in the graph against the logits, so one run answers "why the top three" as well as "why not ants".
"""
from __future__ import annotations

import torch
from torch import nn


def resolve_classes(requested: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """[N, M] class indices or -rank -> [N, M] class indices (ranks read from the logits, highest first)."""
    num_classes = logits.shape[1]
    order = torch.argsort(logits, dim=1, descending=True)
    by_rank = torch.gather(order, 1, (-requested - 1).clamp(0, num_classes - 1))
    return torch.where(requested < 0, by_rank, requested.clamp(0, num_classes - 1))


def score_gradients(head: nn.Module, pooled: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """d logit_c / d pooled for each chosen class: [N, M, K]. head is training.model.Head (eval mode: the dropout
    is the identity)."""
    linears = [m for m in head.net if isinstance(m, nn.Linear)]
    last = linears[-1].weight[classes]  # [N, M, H or K]
    if len(linears) == 1:
        return last
    hidden = linears[0]
    active = (hidden(pooled) > 0).to(last.dtype)  # where the hidden ReLU passes the gradient
    return torch.matmul(last * active.unsqueeze(1), hidden.weight)


def grad_cam(feature_map: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_k alpha_ck A_k), alpha = gradients / hw: [N, M, h, w]."""
    positions = feature_map.shape[2] * feature_map.shape[3]
    return torch.relu(torch.einsum("nmk,nkhw->nmhw", gradients, feature_map) / positions)
