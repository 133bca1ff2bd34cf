"""One semi-supervised training step: the loss terms of METHOD.md, each a function of losses.py, and
their weighted total. Its own module so that the training loop and the plan (which times one
real step) share it without importing each other."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn as nn

from training.augment import make_views
from training.config import Config
from training.losses import (
    DistributionAlignment,
    contrastive_loss,
    dense_alignment_loss,
    pseudo_labels,
    supervised_loss,
    unlabeled_loss,
)


def total_loss(terms: dict[str, torch.Tensor], cfg: Config) -> torch.Tensor:
    """METHOD.md: 0.5 (L_sup_rgb + L_u_rgb + L_sup_tg + L_u_tg) + 1 L_align + 1 L_contrast."""
    cls_terms = [terms[k] for k in ("sup_rgb", "unsup_rgb", "sup_tg", "unsup_tg") if k in terms]
    # sum() of tensors is a tensor: the step always returns the classification terms
    total = cast(torch.Tensor, cfg.loss.weight_cls * sum(cls_terms))
    if "align" in terms:
        total = total + cfg.loss.weight_align * terms["align"]
    if "contrast" in terms:
        total = total + cfg.loss.weight_contrast * terms["contrast"]
    return total


def training_step(
    net: nn.Module,
    batch_l: dict,
    batch_u: dict,
    cfg: Config,
    *,
    use_unlabeled: bool,
    device: torch.device,
    dist_align: DistributionAlignment | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One semi-supervised step's loss terms (and monitoring stats), before weighting.

    Labeled weak, unlabeled weak and unlabeled strong clips go through each network in one
    batch, so DDP sees a single forward. During the supervised warm-up (`use_unlabeled` off)
    the strong clips still go through as in the authors' code (their BatchNorm statistics are
    part of training from the first step) unless `train.forward_strong_in_warmup` is off.
    `dist_align` (the run's, when `loss.dist_align` is on) aligns the pseudo-labels; its running
    mean follows every step, the warm-up's included."""
    bl, bu = len(batch_l["label"]), len(batch_u["label"])
    streams = ("rgb", "tg") if cfg.loss.streams == "both" else (cfg.loss.streams,)
    with_strong = use_unlabeled or cfg.train.forward_strong_in_warmup
    vl = make_views(batch_l["frames"].to(device, non_blocking=True), cfg.input, strong=False)
    vu = make_views(
        batch_u["frames"].to(device, non_blocking=True),
        cfg.input,
        strong=with_strong,
        num_ops=cfg.strong.num_ops,
        magnitude=cfg.strong.magnitude,
        preset=cfg.strong.preset,
    )
    inputs = {m: torch.cat([vl[m], vu[m]] + ([vu[m + "_strong"]] if with_strong else [])) for m in streams}
    amp = device.type == "cuda" and cfg.train.amp
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
        out = net(**inputs)

    labels = batch_l["label"].to(device)
    weak = slice(0, bl + bu)
    logits = {m: out[f"logits_{m}"].float() for m in streams}
    terms = {f"sup_{m}": supervised_loss(logits[m][:bl], labels) for m in streams}
    pl = pseudo_labels(
        logits["rgb"][bl : bl + bu] if "rgb" in logits else None,
        logits["tg"][bl : bl + bu] if "tg" in logits else None,
        fusion=cfg.loss.fusion,
        threshold=cfg.loss.threshold,
        dist_align=dist_align,
    )
    if use_unlabeled:
        for m in streams:
            terms[f"unsup_{m}"] = unlabeled_loss(logits[m][bl + bu :], *pl[m])
    if cfg.loss.align != "off":
        terms["align"] = dense_alignment_loss(
            [f[weak] for f in out["feats_rgb"]],
            [f[weak] for f in out["feats_tg"]],
            stages=tuple(cfg.loss.align_stages),
            kind=cfg.loss.align,
            stop_gradient=cfg.loss.stop_gradient,
        )
    if cfg.loss.contrast:
        terms["contrast"] = contrastive_loss(
            out["emb_rgb"][weak].float(), out["emb_tg"][weak].float(), temperature=cfg.loss.temperature
        )

    return terms, pseudo_label_stats(pl, batch_u["label"].to(device), streams)


def pseudo_label_stats(
    pl: dict[str, tuple[torch.Tensor, torch.Tensor]], truth: torch.Tensor, streams: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """Per stream, the confidence-mask rate and the accuracy of the pseudo-labels that pass the
    threshold, where the unlabeled clips' labels are known (NaN: none)."""
    # monitoring stats stay on the device (0-dim tensors): the loop copies them to the host once
    stats = {}
    for m in streams:
        pseudo, mask = pl[m]
        stats[f"mask_rate_{m}"] = mask.mean()
        confident = ((mask > 0) & (truth >= 0)).float()
        stats[f"pseudo_acc_{m}"] = ((pseudo == truth).float() * confident).sum() / confident.sum()
    return stats
