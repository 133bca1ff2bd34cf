"""R3D-18 student/teacher networks and the two-stream wrapper used in training.

The student (`R3D18` on RGB) is a plain module: export takes `TwoStreamNet.student` as is.
Architecture follows MMAction2's ResNet3d (depth 18), the backbone of the authors' code.
Networks are built from a config or an export manifest's architecture record by the factories
at the end (`two_stream_from_config`, `r3d18_from_config`, `r3d18_from_architecture`), so the
constructor's arguments are written out once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from training.config import STREAMS, Config, ModelConfig


class BasicBlock3d(nn.Module):
    """Two 3x3x3 convs with a residual connection; the first conv carries the stride."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        spatial_stride: int = 1,
        temporal_stride: int = 1,
        bn_eps: float = 1e-3,
    ):
        super().__init__()
        stride = (temporal_stride, spatial_stride, spatial_stride)
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(out_channels, eps=bn_eps)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(out_channels, eps=bn_eps)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != (1, 1, 1) or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm3d(out_channels, eps=bn_eps),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class R3D18(nn.Module):
    """3D ResNet-18 classifier (MMAction2 ResNet3d depth 18 + I3D-style head).

    Input (N, in_channels, T, H, W); with T=8, H=W=224 and full width the stage outputs are
    64x4x56², 128x2x28², 256x1x14², 512x1x7² (8, 4, 2, 1 frames without the temporal pool).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        width: int = 64,
        temporal_pool: bool = True,
        dropout: float = 0.5,
        bn_eps: float = 1e-3,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        w = width
        self.stage_channels = (w, 2 * w, 4 * w, 8 * w)
        self.feature_dim = 8 * w

        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, w, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(w, eps=bn_eps),
            nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        stages = []
        in_c = w
        for out_c, stride in zip(self.stage_channels, (1, 2, 2, 2), strict=True):
            stages.append(
                nn.Sequential(
                    BasicBlock3d(in_c, out_c, spatial_stride=stride, temporal_stride=stride, bn_eps=bn_eps),
                    BasicBlock3d(out_c, out_c, bn_eps=bn_eps),
                )
            )
            in_c = out_c
        self.stages = nn.ModuleList(stages)
        # MMAction2's "pool2": halves time after stage 1 (the authors' default; off = Table 4)
        self.temporal_pool = nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1)) if temporal_pool else None

        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.feature_dim, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # zero_init_residual makes each block start as the identity; the authors' config sets it
        # False (MMAction2 ResNet3d), so every BN starts at weight 1
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock3d):
                    nn.init.zeros_(m.bn2.weight)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def features(self, x: Tensor) -> list[Tensor]:
        """The four stage outputs, stage 1 taken after the temporal pool (as MMAction2 does)."""
        x = self.stem(x)  # (N, w, T, H/4, W/4)
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == 0 and self.temporal_pool is not None:
                x = self.temporal_pool(x)
            feats.append(x)
        return feats

    def pool(self, feat: Tensor) -> Tensor:
        return feat.mean(dim=(2, 3, 4))  # (N, C, T, H, W) -> (N, C)

    def classify(self, pooled: Tensor) -> Tensor:
        return self.fc(self.dropout(pooled))  # (N, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.pool(self.features(x)[-1]))


class ProjectionHead(nn.Module):
    """Three-layer MLP for the contrastive loss, as in the authors' code; output not normalized.

    Its linear layers start from normal(0, `init_std`) as the authors' ContrastHead does
    (init_std 0.01); `init_std=0` keeps PyTorch's default (Kaiming-uniform) init."""

    def __init__(self, dim: int, init_std: float = 0.01):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, dim, bias=False),
            nn.BatchNorm1d(dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False),
            nn.BatchNorm1d(dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False),
            nn.BatchNorm1d(dim, affine=False),
        )
        if init_std > 0:
            for m in self.net:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=init_std)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (N, dim) -> (N, dim)


class TwoStreamNet(nn.Module):
    """Student (RGB) and teacher (temporal gradient) R3D-18s plus their projection heads.

    All training computation goes through `forward` so DistributedDataParallel sees every
    parameter used in a step. Only `student` is deployed.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        width: int = 64,
        temporal_pool: bool = True,
        dropout: float = 0.5,
        bn_eps: float = 1e-3,
        streams: str = "both",
        projection: bool = True,
        zero_init_residual: bool = False,
        head_init_std: float = 0.01,
    ):
        super().__init__()
        if streams not in STREAMS:
            raise ValueError(f"streams must be one of {STREAMS}, got {streams!r}")
        self.streams = streams

        def backbone() -> R3D18:
            return R3D18(
                num_classes,
                width=width,
                temporal_pool=temporal_pool,
                dropout=dropout,
                bn_eps=bn_eps,
                zero_init_residual=zero_init_residual,
            )

        self.student = backbone() if streams in ("both", "rgb") else None
        self.teacher = backbone() if streams in ("both", "tg") else None
        with_heads = projection and streams == "both"
        self.proj_rgb = ProjectionHead(8 * width, head_init_std) if with_heads else None
        self.proj_tg = ProjectionHead(8 * width, head_init_std) if with_heads else None

    def forward(self, rgb: Tensor | None = None, tg: Tensor | None = None) -> dict[str, Tensor | list[Tensor]]:
        out: dict[str, Tensor | list[Tensor]] = {}
        for name, x, net, head in (
            ("rgb", rgb, self.student, self.proj_rgb),
            ("tg", tg, self.teacher, self.proj_tg),
        ):
            if x is None:
                continue
            if net is None:
                # a silently ignored input would hide a config/loader mismatch
                raise ValueError(f"got a {name!r} input but this net has streams={self.streams!r}")
            feats = net.features(x)
            pooled = net.pool(feats[-1])  # (N, 8w)
            out[f"logits_{name}"] = net.classify(pooled)
            out[f"feats_{name}"] = feats
            if head is not None:
                out[f"emb_{name}"] = head(pooled)
        return out


# ----------------------------------------------------------------------------- factories
def backbone_arguments(model: ModelConfig) -> dict[str, Any]:
    """R3D18's keyword arguments from the config's model section (all but the class count)."""
    return {
        "width": model.width,
        "temporal_pool": model.temporal_pool,
        "dropout": model.dropout,
        "bn_eps": model.bn_eps,
        "zero_init_residual": model.zero_init_residual,
    }


def two_stream_from_config(
    cfg: Config, num_classes: int, *, streams: str | None = None, projection: bool | None = None
) -> TwoStreamNet:
    """The network `cfg` trains. `streams` and `projection` replace loss.streams and
    loss.contrast where a caller needs the student alone (no teacher, no heads)."""
    return TwoStreamNet(
        num_classes,
        **backbone_arguments(cfg.model),
        streams=cfg.loss.streams if streams is None else streams,
        projection=cfg.loss.contrast if projection is None else projection,
        head_init_std=cfg.model.head_init_std,
    )


def r3d18_from_config(cfg: Config, num_classes: int) -> R3D18:
    """A plain R3D-18 as `cfg` builds its student and teacher, e.g. to load one from a checkpoint."""
    return R3D18(num_classes, **backbone_arguments(cfg.model))


def r3d18_from_architecture(architecture: Mapping[str, Any]) -> R3D18:
    """A plain R3D-18 from an export manifest's architecture record: its "name" and R3D18's
    arguments (num_classes, width, temporal_pool, dropout, bn_eps, in_channels)."""
    args = {k: v for k, v in architecture.items() if k != "name"}
    return R3D18(args.pop("num_classes"), **args)


def count_parameters(module: nn.Module) -> int:
    """All parameters (trainable or not), as papers report model size."""
    return sum(p.numel() for p in module.parameters())
