"""`python -m docgen [--check] [--docs-dir DIR]`: see the package docstring."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import docgen
from docgen import config_table, contract

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"


def generated_files(docs_dir: Path = DOCS_DIR) -> dict[Path, str]:
    """Every generated file under `docs_dir` and the content it must have."""
    return {**contract.generated_files(docs_dir), **config_table.generated_files(docs_dir)}


def stale_files(docs_dir: Path, files: dict[Path, str]) -> list[Path]:
    """Files that differ from what the code generates, and files that should not exist."""
    stale = [path for path, text in files.items()
             if not path.exists() or path.read_text() != text]
    return stale + contract.leftover_files(docs_dir, files)


def write(docs_dir: Path, files: dict[Path, str]) -> None:
    for path in contract.leftover_files(docs_dir, files):
        path.unlink()
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m docgen", description=docgen.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    parser.add_argument("--docs-dir", type=Path, default=DOCS_DIR)
    args = parser.parse_args(argv)
    if missing := config_table.missing_descriptions():
        print(f"settings fields without a description: {', '.join(missing)}", file=sys.stderr)
        return 1
    try:
        files = generated_files(args.docs_dir)
    except config_table.MissingMarkersError as exc:
        print(exc, file=sys.stderr)
        return 1
    if not args.check:
        write(args.docs_dir, files)
        return 0
    stale = stale_files(args.docs_dir, files)
    for path in stale:
        print(f"{path} is out of date: run python -m docgen", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
