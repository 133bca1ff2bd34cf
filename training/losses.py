"""The loss terms of the method, one function each: plain tensors in, scalar tensor out.

Total (assembled by the training step): 0.5·(L_sup_rgb + L_u_rgb + L_sup_tg + L_u_tg)
+ L_align + L_contrast.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

FUSIONS = ("logits", "probs", "rgb", "tg", "self")
ALIGN_KINDS = ("cosine", "l1", "l2")


def _at_least_float32(t: Tensor) -> Tensor:
    # fp16/bf16 under autocast lose too much in norms and exponentials; float64 stays as is
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def supervised_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy on labeled clips."""
    return F.cross_entropy(_at_least_float32(logits), labels)


class DistributionAlignment:
    """Distribution alignment of pseudo-labels (ReMixMatch, Berthelot et al., ICLR 2020), an
    addition to the method (`loss.dist_align`, off in the paper's configs).

    The weak views' class probabilities p are replaced by normalise(p * target / running): target
    is the class distribution of the labeled videos, running the moving average of p over the
    unlabeled batches seen so far (starting at target). A network that calls most unlabeled clips
    one class has that class scaled down until its pseudo-labels are spread like the labels; the
    threshold and the argmax then act on the aligned p. One running mean per source of
    pseudo-labels: "fused" for the fusions both networks share, each stream's own under "self". Under
    torch.distributed each batch mean is averaged over the processes, so every process holds the
    same state, and the checkpoint's copy (`state_dict`) continues a resumed run exactly.
    """

    def __init__(self, target: Tensor, *, momentum: float = 0.99) -> None:
        target = target.detach().double()
        if target.ndim != 1 or len(target) < 2 or bool((target <= 0).any()):
            raise ValueError(f"distribution alignment needs a positive target over >= 2 classes, got {target}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"distribution alignment momentum must be in [0, 1), got {momentum}")
        self.target = target / target.sum()
        self.momentum = momentum
        self.running: dict[str, Tensor] = {}

    @classmethod
    def from_labels(cls, labels: list[int], num_classes: int, *, momentum: float = 0.99) -> DistributionAlignment:
        """The target from the labeled videos' classes; a class without any labeled video counts as
        half a video, so that it can still be predicted."""
        counts = torch.bincount(torch.tensor(labels, dtype=torch.long), minlength=num_classes).double()
        return cls(counts.clamp(min=0.5), momentum=momentum)

    @torch.no_grad()
    def __call__(self, source: str, probs: Tensor) -> Tensor:
        """Update `source`'s running mean with this batch and return the aligned probabilities."""
        batch_mean = probs.double().mean(dim=0)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_mean)
            batch_mean /= dist.get_world_size()
        running = self.running.get(source, self.target.to(probs.device))
        running = self.momentum * running + (1.0 - self.momentum) * batch_mean
        self.running[source] = running
        aligned = probs.double() * (self.target.to(probs.device) / running.clamp(min=1e-6))
        return (aligned / aligned.sum(dim=1, keepdim=True)).to(probs.dtype)

    def state_dict(self) -> dict[str, Tensor]:
        return {source: r.cpu() for source, r in self.running.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.running = {source: r.double().clone() for source, r in state.items()}


@torch.no_grad()
def pseudo_labels(
    logits_rgb: Tensor | None,
    logits_tg: Tensor | None,
    *,
    fusion: str = "logits",
    threshold: float = 0.3,
    dist_align: DistributionAlignment | None = None,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Hard pseudo-labels and confidence masks from the weak unlabeled views.

    fusion "logits" averages logits before the softmax (authors' code, default); "probs"
    averages the two softmaxes (paper Eq. 5); "rgb"/"tg" use one network's softmax for both;
    "self" gives each network its own. `dist_align`, when given, aligns the probabilities before
    the threshold (a fused one once, for both streams). Returns {stream: (labels (N,) long, mask (N,) float)}
    for each stream whose logits were given.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSIONS}")
    if logits_rgb is None and logits_tg is None:
        raise ValueError("pseudo_labels needs at least one of logits_rgb, logits_tg")
    if (logits_rgb is None or logits_tg is None) and fusion != "self":
        raise ValueError(f"fusion {fusion!r} needs both streams' logits; single-stream runs use 'self'")

    z_rgb = None if logits_rgb is None else _at_least_float32(logits_rgb.detach())  # (N, K)
    z_tg = None if logits_tg is None else _at_least_float32(logits_tg.detach())
    p_rgb = None if z_rgb is None else F.softmax(z_rgb, dim=1)
    p_tg = None if z_tg is None else F.softmax(z_tg, dim=1)
    if fusion == "self":
        probs = {k: p for k, p in (("rgb", p_rgb), ("tg", p_tg)) if p is not None}
    else:
        # every other fusion has both streams' logits (checked above)
        assert z_rgb is not None and z_tg is not None and p_rgb is not None and p_tg is not None
        if fusion == "logits":
            fused = F.softmax((z_rgb + z_tg) / 2, dim=1)
            probs = {"rgb": fused, "tg": fused}
        elif fusion == "probs":
            fused = (p_rgb + p_tg) / 2
            probs = {"rgb": fused, "tg": fused}
        elif fusion == "rgb":
            probs = {"rgb": p_rgb, "tg": p_rgb}
        else:  # tg
            probs = {"rgb": p_tg, "tg": p_tg}

    if dist_align is not None:
        if fusion == "self":
            probs = {stream: dist_align(stream, p) for stream, p in probs.items()}
        else:
            fused = dist_align("fused", probs["rgb"])
            probs = {"rgb": fused, "tg": fused}

    out = {}
    for stream, p in probs.items():
        conf, labels = p.max(dim=1)
        out[stream] = (labels, (conf >= threshold).float())
    return out


def unlabeled_loss(logits_strong: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """FixMatch's L_u = (1/B_u) Σ mask·CE: divided by the whole unlabeled batch, not the mask count."""
    ce = F.cross_entropy(_at_least_float32(logits_strong), labels, reduction="none")  # (B_u,)
    return (ce * mask.to(ce.dtype)).mean()


def dense_alignment_loss(
    feats_rgb: list[Tensor],
    feats_tg: list[Tensor],
    *,
    stages: tuple[int, ...] = (1, 2, 3, 4),
    kind: str = "cosine",
    stop_gradient: bool = True,
) -> Tensor:
    """Student-to-teacher feature alignment, summed over the chosen (1-based) stages.

    cosine: 1 − mean over (n, t, h, w) of the cosine similarity over channels; "l1"/"l2":
    mean absolute / squared difference. With stop_gradient the teacher (TG) features are
    detached, so only the student is pulled towards the teacher.
    """
    if kind not in ALIGN_KINDS:
        raise ValueError(f"unknown alignment kind {kind!r}; expected one of {ALIGN_KINDS}")
    if len(stages) == 0:
        raise ValueError("dense_alignment_loss needs at least one stage (set its weight to 0 to turn it off)")
    total: Tensor | None = None
    for s in stages:
        if not 1 <= s <= min(len(feats_rgb), len(feats_tg)):
            raise ValueError(f"stage {s} out of range 1..{min(len(feats_rgb), len(feats_tg))}")
        f_rgb = _at_least_float32(feats_rgb[s - 1])  # (N, C, T, H, W)
        f_tg = _at_least_float32(feats_tg[s - 1])
        if f_rgb.shape != f_tg.shape:
            raise ValueError(f"stage {s}: feature shapes differ {tuple(f_rgb.shape)} vs {tuple(f_tg.shape)}")
        if stop_gradient:
            f_tg = f_tg.detach()
        if kind == "cosine":
            term = 1 - F.cosine_similarity(f_rgb, f_tg, dim=1).mean()  # cos: (N, T, H, W)
        elif kind == "l1":
            term = (f_rgb - f_tg).abs().mean()
        else:
            term = (f_rgb - f_tg).pow(2).mean()
        total = term if total is None else total + term
    assert total is not None  # stages is not empty (checked above)
    return total


def _gather_with_grad(x: Tensor) -> Tensor:
    """(B, D) per process -> (world*B, D) in rank order, differentiable.

    torch.distributed.nn.functional.all_gather's backward sums each process's gradient
    slices (reduce-scatter on NCCL, scatter-based all-to-all on gloo), so a process's local
    embeddings receive the gradient of every process's loss. Needs equal B on all ranks.
    """
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def contrastive_loss(emb_rgb: Tensor, emb_tg: Tensor, *, temperature: float = 0.5) -> Tensor:
    """Symmetric cross-modal InfoNCE between L2-normalized RGB and TG embeddings (N, D).

    The positive of clip i is the other modality of the same clip; negatives are the other
    modality of every other clip in the global batch (gathered across processes). Each
    process returns the mean over its local clips, so DDP's gradient averaging yields the
    gradient of the full-batch loss.
    """
    q_rgb = F.normalize(_at_least_float32(emb_rgb), dim=1)  # (B, D)
    q_tg = F.normalize(_at_least_float32(emb_tg), dim=1)
    batch = q_rgb.shape[0]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        k_rgb, k_tg = _gather_with_grad(q_rgb), _gather_with_grad(q_tg)  # (world*B, D)
        offset = dist.get_rank() * batch
    else:
        k_rgb, k_tg = q_rgb, q_tg
        offset = 0
    targets = torch.arange(offset, offset + batch, device=q_rgb.device)
    loss_rgb_to_tg = F.cross_entropy(q_rgb @ k_tg.T / temperature, targets)  # logits (B, world*B)
    loss_tg_to_rgb = F.cross_entropy(q_tg @ k_rgb.T / temperature, targets)
    return (loss_rgb_to_tg + loss_tg_to_rgb) / 2
