"""Small dataset trees in the paper datasets' published layouts, and lists in VideoSSL's format."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.videofiles import write_video


def tiny_video(path: Path, seed: int, frames: int = 20) -> Path:
    rng = np.random.default_rng(seed)
    return write_video(path, rng.integers(0, 255, (frames, 32, 40, 3), dtype=np.uint8))


def make_ucf101_tree(
    root: Path, classes: list[str], *, train_per_class: int, test_per_class: int = 1, videos: bool = True
) -> dict[str, list[str]]:
    """`root/UCF-101/<Class>/v_<Class>_gNN_c01.avi` and `root/ucfTrainTestlist/` (split 1), then
    `python -m training prepare ucf101` -> classes.txt, lists/{train,val}.txt. Returns the
    training and test entries as the official lists name them (`Class/v_Class_gNN_c01.avi`).
    videos=False writes empty placeholders (enough for list reading, not for decoding)."""
    from training.prepare import prepare

    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\r\n" for i, c in enumerate(classes)))
    entries: dict[str, list[str]] = {"train": [], "test": []}
    for ci, c in enumerate(classes):
        for g in range(1, train_per_class + test_per_class + 1):
            name = f"{c}/v_{c}_g{g:02d}_c01.avi"
            path = root / "UCF-101" / name
            if videos:
                tiny_video(path, seed=ci * 100 + g)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"")
            entries["train" if g <= train_per_class else "test"].append(name)
    (lists / "trainlist01.txt").write_text(
        "".join(f"{n} {classes.index(n.split('/')[0]) + 1}\r\n" for n in entries["train"])
    )
    (lists / "testlist01.txt").write_text("".join(n + "\r\n" for n in entries["test"]))
    prepare("ucf101", root)
    return entries


def write_videossl_list(path: Path, entries: list[str], classes: list[str], *, frames: int = 20) -> Path:
    """A labeled list as VideoSSL published it (the authors' `data/ucf101/videossl_splits/*`):
    `Class/v_Name num_frames label` per line, no extension, 0-based labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for entry in entries:
        stem = entry.rsplit(".", 1)[0]
        lines.append(f"{stem} {frames} {classes.index(entry.split('/')[0])}\n")
    path.write_text("".join(lines))
    return path
