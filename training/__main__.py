"""Entry points: `python -m training {train,evaluate,generate,prepare} ...`."""

import sys

COMMANDS = {
    "train": ("training.train", "semi-supervised training (resumes a run folder)"),
    "evaluate": ("training.evaluate", "30-view test of a run folder's checkpoint"),
    "generate": ("training.synthetic", "write the synthetic motion-video dataset"),
    "prepare": ("training.prepare", "UCF-101 / HMDB-51 / Kinetics-400 annotations -> list files"),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print("usage: python -m training {" + ",".join(COMMANDS) + "} [options]\n")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<9} {text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
