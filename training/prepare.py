"""The paper's datasets as list files: official annotations -> classes.txt + lists/{train,val}.txt.

Each reader takes the dataset root as it is distributed, resolves every annotated video on
disk, and returns the lists with paths relative to that root. Videos named in the annotations
but absent on disk are skipped and reported (Kinetics downloads always miss some); a missing
annotation file is an error that names the path it was expected at.

    UCF-101 (split 1-3)   ROOT/UCF-101/<Class>/v_*.avi
                          ROOT/ucfTrainTestlist/{classInd,trainlist0N,testlist0N}.txt
                          labels follow classInd.txt; class folders and file names are
                          matched case-insensitively (the official lists disagree with the
                          archive's case, e.g. HandStandPushups / HandstandPushups).
    HMDB-51 (split 1-3)   ROOT/hmdb51/<class>/*.avi
                          ROOT/testTrainMulti_7030_splits/<class>_test_splitN.txt
                          lines `video.avi 1|2|0`: 1 train, 2 test (-> val), 0 unused.
                          The training list is every video that is not a test video (tags
                          1 and 0: 5,236 at split 1), the pool of the authors' code and of
                          VideoSSL's published lists; --hmdb51-train official keeps tag 1 only.
    Kinetics-400          ROOT/annotations/{train,validate}.csv
                          ROOT/{train,val}/<label>/<youtube_id>_<start:06d>_<end:06d>.{mp4,mkv,webm}
                          Label folders must use underscores for spaces (list files cannot
                          hold spaces); folders that still have spaces are an error that
                          says how to rename them. classes.txt keeps the original labels.
"""

from __future__ import annotations

import argparse
import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

SPLIT_NAMES = ("train", "val")
KINETICS_EXTENSIONS = (".mp4", ".mkv", ".webm")  # in order of preference when several exist


@dataclass
class SplitLists:
    """What a reader found: classes, (path, label) per split, and what it had to skip."""

    classes: list[str]
    train: list[tuple[str, int]] = field(default_factory=list)
    val: list[tuple[str, int]] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLIT_NAMES})
    rejected: list[str] = field(default_factory=list)  # on disk, but the path has whitespace
    unused: int = 0  # HMDB-51's tag `0` (neither train nor test in the official protocol)
    unused_in_train: bool = False  # ... and whether they went into the training list

    def add(self, split: str, path: str | None, label: int, expected: str) -> None:
        """Record one annotated video; `path` is None when it is not on disk."""
        if path is None:
            self.missing[split].append(expected)
        elif any(c.isspace() for c in path):
            # A list line is `path label` split on whitespace, so such a path cannot be listed.
            self.rejected.append(path)
        else:
            getattr(self, split).append((path, label))


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: expected {path}")
    return path


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: expected the folder {path}")
    return path


def _lines(path: Path) -> list[str]:
    """Non-empty stripped lines; tolerates CRLF endings and a UTF-8 byte-order mark."""
    return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


# ----------------------------------------------------------------------------- UCF-101
def read_ucf101(root: str | os.PathLike, split: int = 1) -> SplitLists:
    root = Path(root)
    lists_dir = _require_dir(root / "ucfTrainTestlist", "UCF-101 annotation folder")
    class_file = _require_file(lists_dir / "classInd.txt", "UCF-101 class index")
    train_file = _require_file(lists_dir / f"trainlist0{split}.txt", f"UCF-101 train list (split {split})")
    test_file = _require_file(lists_dir / f"testlist0{split}.txt", f"UCF-101 test list (split {split})")
    videos_dir = _require_dir(root / "UCF-101", "UCF-101 video folder")

    classes = []
    for n, line in enumerate(_lines(class_file), 1):
        index, name = line.split()
        if int(index) != n:
            raise ValueError(f"{class_file}: line {n} has index {index}; expected {n} (1-based, in order)")
        classes.append(name)
    label_of = {name.lower(): label for label, name in enumerate(classes)}

    # Case-insensitive index of the archive: lowercase folder -> (folder, {lowercase file: file}).
    on_disk = {
        d.name.lower(): (d.name, {f.name.lower(): f.name for f in d.iterdir()})
        for d in videos_dir.iterdir()
        if d.is_dir()
    }

    def resolve(entry: str) -> tuple[str | None, int]:
        folder, _, name = entry.replace("\\", "/").partition("/")
        if folder.lower() not in label_of:
            raise ValueError(f"UCF-101 list entry {entry!r}: class {folder!r} is not in {class_file}")
        actual_folder, files = on_disk.get(folder.lower(), (None, {}))
        actual_name = files.get(name.lower())
        path = f"UCF-101/{actual_folder}/{actual_name}" if actual_name else None
        return path, label_of[folder.lower()]

    lists = SplitLists(classes)
    for line in _lines(train_file):
        entry, label = line.split()
        path, folder_label = resolve(entry)
        if int(label) - 1 != folder_label:
            raise ValueError(f"{train_file}: {entry!r} has label {label} but its folder is class {folder_label + 1}")
        lists.add("train", path, folder_label, f"UCF-101/{entry}")
    for line in _lines(test_file):
        entry = line.split()[0]  # the test list has no label: it comes from the folder
        path, folder_label = resolve(entry)
        lists.add("val", path, folder_label, f"UCF-101/{entry}")
    return lists


# ----------------------------------------------------------------------------- HMDB-51
HMDB51_TRAIN = ("all-but-test", "official")


def read_hmdb51(root: str | os.PathLike, split: int = 1, train: str = "all-but-test") -> SplitLists:
    """`train`: all-but-test = tags 1 and 0 (the authors' pool, VideoSSL's lists are drawn from
    it); official = tag 1 only (the 70/30 protocol's 3,570 training videos at split 1)."""
    if train not in HMDB51_TRAIN:
        raise ValueError(f"HMDB-51 training pool {train!r}: one of {', '.join(HMDB51_TRAIN)}")
    root = Path(root)
    splits_dir = _require_dir(root / "testTrainMulti_7030_splits", "HMDB-51 split folder")
    videos_dir = _require_dir(root / "hmdb51", "HMDB-51 video folder")
    suffix = f"_test_split{split}.txt"
    split_files = {p.name[: -len(suffix)]: p for p in splits_dir.glob(f"*{suffix}")}
    if not split_files:
        raise FileNotFoundError(f"HMDB-51 split files not found: expected {splits_dir}/<class>{suffix}")
    # A class folder without its split file would silently vanish from the lists.
    for folder in sorted(d.name for d in videos_dir.iterdir() if d.is_dir()):
        if folder not in split_files:
            raise FileNotFoundError(
                f"HMDB-51 split file of class {folder!r} not found: expected {splits_dir / (folder + suffix)}"
            )

    classes = sorted(split_files)
    lists = SplitLists(classes, unused_in_train=train == "all-but-test")
    for label, name in enumerate(classes):
        class_dir = videos_dir / name
        present = {f.name for f in class_dir.iterdir()} if class_dir.is_dir() else set()
        for line in _lines(split_files[name]):
            video, tag = line.split()
            if tag not in ("0", "1", "2"):
                raise ValueError(f"{split_files[name]}: {line!r}: the split tag must be 0, 1 or 2")
            if tag == "0":
                lists.unused += 1
                if not lists.unused_in_train:
                    continue
            path = f"hmdb51/{name}/{video}"
            lists.add("val" if tag == "2" else "train", path if video in present else None, label, path)
    return lists


# ----------------------------------------------------------------------------- Kinetics-400
def _read_kinetics_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        needed = {"label", "youtube_id", "time_start", "time_end"}
        if not needed <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: header must have the columns {sorted(needed)}, got {reader.fieldnames}")
        return list(reader)


def read_kinetics400(root: str | os.PathLike) -> SplitLists:
    root = Path(root)
    rows = {
        "train": _read_kinetics_csv(_require_file(root / "annotations/train.csv", "Kinetics-400 train annotations")),
        "val": _read_kinetics_csv(
            _require_file(root / "annotations/validate.csv", "Kinetics-400 validation annotations")
        ),
    }
    classes = sorted({row["label"] for row in rows["train"]})
    label_of = {name: label for label, name in enumerate(classes)}
    unknown = sorted({row["label"] for row in rows["val"]} - set(label_of))
    if unknown:
        raise ValueError(f"validate.csv has labels absent from train.csv: {unknown[:5]}")

    lists = SplitLists(classes)
    needs_rename = []
    for split, split_rows in rows.items():
        split_dir = _require_dir(root / split, f"Kinetics-400 {split} video folder")
        folders = {d.name for d in split_dir.iterdir() if d.is_dir()}
        files = {}  # folder -> {stem: file name}
        for name in classes:
            folder = name.replace(" ", "_")
            if folder in folders:
                stems: dict[str, str] = {}
                for f in sorted((split_dir / folder).iterdir(), key=lambda f: _extension_rank(f.suffix)):
                    if f.suffix in KINETICS_EXTENSIONS:
                        stems.setdefault(f.stem, f.name)  # the preferred extension wins
                files[folder] = stems
            elif name in folders:
                needs_rename.append(f"{split}/{name}")
        for row in split_rows:
            folder = row["label"].replace(" ", "_")
            stem = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
            found = files.get(folder, {}).get(stem)
            lists.add(
                split,
                f"{split}/{folder}/{found}" if found else None,
                label_of[row["label"]],
                f"{split}/{folder}/{stem}.mp4",
            )
    if needs_rename:
        raise ValueError(
            f"{len(needs_rename)} Kinetics-400 label folders have spaces in their names (e.g. {needs_rename[0]!r}); "
            "list files cannot hold spaces. Rename them with underscores, e.g.\n"
            f"  cd {root} && for d in train/*' '* val/*' '*; do mv \"$d\" \"${{d// /_}}\"; done"
        )
    return lists


def _extension_rank(suffix: str) -> int:
    return KINETICS_EXTENSIONS.index(suffix) if suffix in KINETICS_EXTENSIONS else len(KINETICS_EXTENSIONS)


# ----------------------------------------------------------------------------- output
def write_lists(out: str | os.PathLike, lists: SplitLists) -> list[Path]:
    """Write classes.txt and lists/{train,val}.txt under `out`; each file replaced atomically."""
    out = Path(out)
    contents = {
        out / "classes.txt": "".join(f"{name}\n" for name in lists.classes),
        out / "lists/train.txt": "".join(f"{path} {label}\n" for path, label in lists.train),
        out / "lists/val.txt": "".join(f"{path} {label}\n" for path, label in lists.val),
    }
    for path, text in contents.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(text)
        os.replace(partial, path)
    return list(contents)


DATASETS = ("ucf101", "hmdb51", "kinetics400")


def prepare(
    dataset: str,
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    split: int = 1,
    hmdb51_train: str = "all-but-test",
) -> SplitLists:
    """Read `dataset`'s annotations under `root` and write its list files into `out` (default root)."""
    if dataset == "ucf101":
        lists = read_ucf101(root, split)
    elif dataset == "hmdb51":
        lists = read_hmdb51(root, split, train=hmdb51_train)
    elif dataset == "kinetics400":
        lists = read_kinetics400(root)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    write_lists(root if out is None else out, lists)
    return lists


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training prepare",
        description="Write classes.txt and lists/{train,val}.txt from a dataset's official annotations. "
        "List paths are relative to --root.",
    )
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--root", required=True, help="the dataset root, as distributed (see training/prepare.py)")
    parser.add_argument("--out", help="where to write the list files (default: --root)")
    parser.add_argument("--split", type=int, default=1, choices=(1, 2, 3), help="UCF-101 / HMDB-51 official split")
    parser.add_argument(
        "--hmdb51-train",
        choices=HMDB51_TRAIN,
        default="all-but-test",
        help="HMDB-51 training list: every non-test video (the authors' pool, default) or the "
        "official protocol's tag-1 videos only",
    )
    parser.add_argument(
        "--show-missing", type=int, default=10, metavar="N", help="list up to N missing videos per split"
    )
    args = parser.parse_args(argv)
    try:
        lists = prepare(args.dataset, args.root, args.out, split=args.split, hmdb51_train=args.hmdb51_train)
    except (FileNotFoundError, ValueError) as exc:
        parser.exit(1, f"error: {exc}\n")
    out = Path(args.root if args.out is None else args.out)
    print(
        f"{args.dataset}: {len(lists.classes)} classes, {len(lists.train)} train and {len(lists.val)} val videos "
        f"-> {out / 'classes.txt'}, {out / 'lists'}/{{train,val}}.txt (paths relative to {args.root})"
    )
    if lists.rejected:
        print(
            f"  {len(lists.rejected)} videos skipped: their paths contain whitespace, which list files "
            f"cannot hold (rename them): {', '.join(lists.rejected[: args.show_missing])}"
        )
    if lists.unused and lists.unused_in_train:
        print(
            f"  {lists.unused} videos tagged 0 (neither train nor test officially) are in the training list, "
            "as in the authors' pool (--hmdb51-train official leaves them out)"
        )
    elif lists.unused:
        print(f"  {lists.unused} annotated videos belong to neither split (tag 0) and are left out")
    for split in SPLIT_NAMES:
        missing = lists.missing[split]
        if missing:
            print(f"  {split}: {len(missing)} annotated videos missing on disk, skipped:")
            for name in missing[: args.show_missing]:
                print(f"    {name}")
            if len(missing) > args.show_missing:
                print(f"    ... and {len(missing) - args.show_missing} more")
    return 0
