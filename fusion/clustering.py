"""Token clustering for HCMI's clip and phrase levels (docs/methods.md §4).

Every method maps tokens ``x`` ``[B, N, D]`` with ``mask`` ``[B, N]`` to cluster tokens
``[B, M, D]`` with a cluster mask ``[B, M]``; ``counts`` ``[B]`` is the number of clusters wanted
per row (at most M; rows with fewer real tokens get as many clusters as tokens).

- ``dpc-knn`` (default): density-peak clustering with k-nearest-neighbour density (TCFormer-style):
  density ``rho_i = exp(-mean of the k smallest squared distances)``, ``delta_i`` = distance to the
  nearest denser token, centres = the ``counts`` largest ``rho * delta``; each token joins its
  nearest centre; a cluster is the weighted mean of its tokens with learned weights ``exp(w . x)``.
  Padded tokens are never neighbours, centres or members; a centre left without members (its
  duplicate took them) is not a valid cluster.
- ``learned-query``: M learned queries attend (softmax over real tokens) to make M soft clusters.
- ``contiguous``: the real tokens split into ``counts`` consecutive segments, each averaged.
"""
from __future__ import annotations

import torch
from torch import nn

from fusion.layers import safe_mask

METHODS = ("dpc-knn", "learned-query", "contiguous")


def dpc_knn_assign(x: torch.Tensor, mask: torch.Tensor, counts: torch.Tensor, k: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster index ``[B, N]`` of every token (-1 for padding) and the centre mask ``[B, M]``.

    Centres are ordered by position, so cluster ids follow time. No gradient flows here.
    """
    with torch.no_grad():
        b, n, d = x.shape
        m = int(counts.max())
        xf = x.float()
        dist = torch.cdist(xf, xf) / d ** 0.5                                   # [B, N, N]
        pair = mask[:, :, None] & mask[:, None, :]
        big = dist.max().item() * 10 + 1.0
        dist = dist.masked_fill(~pair, big)
        n_real = mask.sum(1)
        eye = torch.eye(n, dtype=torch.bool, device=x.device)[None]
        nn_dist = dist.masked_fill(eye, big)
        kk = max(1, min(k, n - 1)) if n > 1 else 1
        knn = nn_dist.topk(kk, dim=-1, largest=False).values                    # [B, N, kk]
        valid_nn = knn < big
        sq = (knn ** 2 * valid_nn).sum(-1) / valid_nn.sum(-1).clamp(min=1)
        density = torch.exp(-sq)
        # deterministic tie-break: earlier tokens count as slightly denser
        density = density + 1e-6 * (n - torch.arange(n, device=x.device))[None] / n
        density = density.masked_fill(~mask, -1.0)
        denser = density[:, None, :] > density[:, :, None]                      # [B, i, j]: j denser than i
        delta = dist.masked_fill(~denser | ~pair, big).min(-1).values
        row_max = dist.masked_fill(~pair, 0).amax(-1)
        delta = torch.where(delta >= big, row_max, delta)
        score = (density * delta).masked_fill(~mask, -1.0)
        top = score.topk(min(m, n), dim=-1).indices                              # [B, m]
        ranks = torch.arange(top.shape[1], device=x.device)[None]
        centre_ok = ranks < torch.minimum(counts, n_real)[:, None]
        top = torch.where(centre_ok, top, torch.full_like(top, n))               # push unused to the end
        top, order = top.sort(-1)
        centre_ok = centre_ok.gather(1, order)
        centre_idx = top.clamp(max=n - 1)
        to_centre = dist.gather(2, centre_idx[:, None, :].expand(b, n, top.shape[1]))
        to_centre = to_centre.masked_fill(~centre_ok[:, None, :], big * 2)
        assign = to_centre.argmin(-1)
        assign = torch.where(mask, assign, torch.full_like(assign, -1))
        # duplicated tokens can leave a centre without members (its twin takes them): not a cluster
        centre_ok &= (assign[..., None] == torch.arange(top.shape[1], device=x.device)).any(1)
        if top.shape[1] < m:
            centre_ok = torch.cat([centre_ok, centre_ok.new_zeros(b, m - top.shape[1])], 1)
        return assign, centre_ok


def merge_clusters(x: torch.Tensor, assign: torch.Tensor, weights: torch.Tensor, m: int) -> torch.Tensor:
    """Weighted mean of tokens per cluster: ``x`` ``[B, N, D]``, ``assign`` ``[B, N]`` (-1 = none) -> ``[B, M, D]``."""
    member = (assign[..., None] == torch.arange(m, device=x.device)).to(x.dtype)  # [B, N, M]
    w = member * weights[..., None]
    return (w.transpose(1, 2) @ x) / w.sum(1)[..., None].clamp(min=1e-12)


class Clustering(nn.Module):
    """One of :data:`METHODS`; ``max_clusters`` is M."""

    def __init__(self, method: str, width: int, max_clusters: int, knn: int = 3, heads: int = 8):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"clustering {method!r}: expected one of {METHODS}")
        self.method, self.m, self.knn = method, max_clusters, knn
        if method == "dpc-knn":
            self.importance = nn.Linear(width, 1)
            nn.init.zeros_(self.importance.weight)
            nn.init.zeros_(self.importance.bias)
        elif method == "learned-query":
            self.queries = nn.Parameter(torch.randn(max_clusters, width) * 0.02)
            self.attn = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        counts = counts.clamp(min=1, max=self.m)
        if self.method == "dpc-knn":
            assign, cmask = dpc_knn_assign(x, mask, counts, self.knn)
            cmask = nn.functional.pad(cmask, (0, self.m - cmask.shape[1]))
            weights = torch.exp(self.importance(x).squeeze(-1).clamp(max=20)) * mask
            return merge_clusters(x, assign, weights, self.m), cmask
        if self.method == "learned-query":
            q = self.queries[None].expand(len(x), -1, -1)
            out, _ = self.attn(q, x, x, key_padding_mask=~safe_mask(mask), need_weights=False)
            cmask = torch.arange(self.m, device=x.device)[None] < counts[:, None]
            return out + q, cmask
        n_real = mask.sum(1)
        k = torch.minimum(counts, n_real.clamp(min=1))
        pos = torch.cumsum(mask.long(), 1) - 1                                    # ordinal of each real token
        assign = torch.div(pos * k[:, None], n_real.clamp(min=1)[:, None], rounding_mode="floor")
        assign = torch.where(mask, assign, torch.full_like(assign, -1))
        cmask = torch.arange(self.m, device=x.device)[None] < k[:, None]
        return merge_clusters(x, assign, mask.to(x.dtype), self.m), cmask
