"""Reading catalog files, and the generated demo catalog."""

from __future__ import annotations

from pathlib import Path

from ltrr_server.catalog.items import Item, LineError, parse_item, parse_lines


def read_catalog(path: str | Path, strict: bool = False) -> tuple[list[Item], list[LineError]]:
    """Items of a JSONL file; bad lines come back as errors (``strict``: the first one raises)."""
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            items, errors = parse_lines(f)
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if strict and errors:
        raise ValueError(f"{path}: {errors[0]}")
    return items, errors


def demo_items(n: int, seed: int = 42) -> list[Item]:
    """The generated music catalog (``ltrr_server.demo.music``), as items."""
    from ltrr_server.demo.music import MusicWorld

    world = MusicWorld(n_items=n, seed=seed)
    strings: dict[str, str] = {}
    return [parse_item(d, i + 1, strings) for i, d in enumerate(world.catalog())]
