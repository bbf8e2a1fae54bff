"""The commands that act on stored data: `ingest FILE`, `deadletters list|replay` and
`customer export|erase ID` (a data subject's requests; erasure asks before it acts)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.common import console, err_console, positive_int, runtime_with_key
from wiring.heap import freeze_startup_heap

#: Rejected lines printed by `ingest` before it only counts the rest.
SHOWN_REJECTIONS = 50


class _BadLine:
    def __init__(self, error: str) -> None:
        self.error = error


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, _BadLine(f"line {number}: not valid JSON: {exc.msg}")


def cmd_ingest(args: argparse.Namespace) -> int:
    from ingest.service import IngestResult, ingest_batch

    path = Path(args.file)
    if not path.is_file():
        err_console.print(f"no such file: {path}")
        return 2
    runtime = runtime_with_key()
    if runtime is None:
        return 2
    freeze_startup_heap()  # a long file: full collections would walk the start-up heap
    with path.open(encoding="utf-8") as fh:
        total_lines = sum(1 for line in fh if line.strip())
    counts = {"accepted": 0, "duplicate": 0, "conflict": 0, "rejected": 0}
    rejected: list[str] = []
    batch: list[Any] = []
    numbers: list[int] = []

    def flush(progress: Progress, task: Any) -> None:
        results = ingest_batch(runtime.factory, batch, runtime.config)
        for number, result in zip(numbers, results, strict=True):
            record(number, result, progress, task)
        batch.clear()
        numbers.clear()

    def record(number: int, result: IngestResult, progress: Progress, task: Any) -> None:
        counts[result.status] += 1
        if result.status in ("rejected", "conflict"):
            rejected.append(f"line {number} ({result.event_id or 'no event_id'}): {result.error}")
        progress.advance(task)

    with Progress(
        TextColumn("ingesting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
    ) as progress:
        task = progress.add_task("ingest", total=total_lines)
        for number, item in _read_jsonl(path):
            if isinstance(item, _BadLine):
                record(number, IngestResult(None, "rejected", error=item.error), progress, task)
                continue
            batch.append(item)
            numbers.append(number)
            if len(batch) >= args.batch_size:
                flush(progress, task)
        if batch:
            flush(progress, task)
    for line in rejected[:SHOWN_REJECTIONS]:
        err_console.print(line, markup=False, highlight=False)
    if len(rejected) > SHOWN_REJECTIONS:
        err_console.print(f"... and {len(rejected) - SHOWN_REJECTIONS} more rejected lines")
    console.print(
        f"{counts['accepted']} accepted, {counts['duplicate']} duplicate, "
        f"{counts['rejected']} rejected"
        + (f", {counts['conflict']} conflict" if counts["conflict"] else "")
    )
    return 1 if rejected else 0


def cmd_deadletters(args: argparse.Namespace) -> int:
    from ingest.deadletters import list_dead_letters, replay_dead_letters
    from wiring.runtime import get_runtime

    runtime = get_runtime() if args.action == "list" else runtime_with_key()
    if runtime is None:
        return 2
    if args.action == "list":
        letters = list_dead_letters(runtime.factory, include_replayed=args.all, limit=args.limit)
        console.print(dead_letter_table(letters, full=args.full))
        console.print(f"{len(letters)} dead letters")
        return 0
    results = replay_dead_letters(runtime.factory, runtime.config, ids=args.ids or None)
    for letter_id, result in results:
        console.print(
            f"{letter_id}: {result.status}" + (f" ({result.error})" if result.error else ""),
            markup=False,
        )
    return 1 if any(r.status in ("rejected", "conflict") for _, r in results) else 0


def dead_letter_table(letters: Any, *, full: bool) -> Table:
    """One row per dead letter. By default each error is one line, cut to the terminal's
    width (an 80-column terminal, when not a terminal); ``full``: whole errors, wrapped."""
    table = Table(title_justify="left", pad_edge=False)
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("received (UTC)", no_wrap=True)
    table.add_column("event_id", overflow="fold", max_width=None if full else 24)
    table.add_column(
        "error", ratio=1, no_wrap=not full, overflow="fold" if full else "ellipsis", min_width=12
    )
    table.add_column("replayed", no_wrap=True)
    for letter in letters:
        error = letter.error if full else " ".join(letter.error.split())
        table.add_row(
            str(letter.id),
            letter.created_at.strftime("%Y-%m-%d %H:%M"),
            letter.event_id or "-",
            error,
            letter.replay_result or "",
        )
    return table


def cmd_customer(args: argparse.Namespace, ask: Callable[[str], str] = input) -> int:
    from ingest.subjects import erase_customer, export_customer

    runtime = runtime_with_key()
    if runtime is None:
        return 2
    if args.action == "erase" and not args.yes and not _confirmed(args.id, ask):
        return 1 if sys.stdin.isatty() else 2
    if args.action == "export":
        data = export_customer(runtime.factory, args.id)
        if data is None:
            err_console.print(f"no customer {args.id!r}", markup=False)
            return 1
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return 0
    result = erase_customer(runtime.factory, args.id, runtime.config)
    console.print(
        f"{args.id}: {result.status} {result.outcome or result.error or ''}", markup=False
    )
    return 0 if result.status != "rejected" else 1


def _confirmed(customer_id: str, ask: Callable[[str], str]) -> bool:
    """Ask on a terminal; without one, refuse (a script must say ``--yes``)."""
    if not sys.stdin.isatty():
        err_console.print(
            "customer erase: not erased. Erasure cannot be undone; run it from a terminal to "
            "confirm, or pass --yes.",
            markup=False,
        )
        return False
    try:
        answer = ask(
            f"Erase the personal data of customer {customer_id!r}? This cannot be undone. [y/N] "
        )
    except EOFError:
        answer = ""
    if answer.strip().lower() in ("y", "yes"):
        return True
    err_console.print("not erased", markup=False)
    return False


def add_parsers(sub: Any) -> None:
    """Register `ingest`, `deadletters` and `customer` on an ``add_subparsers()`` object."""
    ingest = sub.add_parser("ingest", help="ingest a JSON-lines file of shop events")
    ingest.add_argument("file", help="one event per line")
    ingest.add_argument(
        "--batch-size", type=positive_int, default=500, help="events applied per transaction"
    )
    ingest.set_defaults(func=cmd_ingest)

    dead = sub.add_parser("deadletters", help="events that could not be taken from the queue")
    dead_sub = dead.add_subparsers(dest="action", required=True)
    dead_list = dead_sub.add_parser("list", help="list dead letters, newest first")
    dead_list.add_argument("--all", action="store_true", help="include replayed ones")
    dead_list.add_argument("--limit", type=positive_int, default=100, help="at most this many")
    dead_list.add_argument(
        "--full",
        action="store_true",
        help="show whole errors (by default each is cut to one line)",
    )
    dead_list.set_defaults(func=cmd_deadletters)
    replay = dead_sub.add_parser("replay", help="apply dead letters again")
    replay.add_argument("ids", nargs="*", type=int, help="default: every unreplayed letter")
    replay.set_defaults(func=cmd_deadletters)

    customer = sub.add_parser("customer", help="data subject requests (GDPR)")
    customer_sub = customer.add_subparsers(dest="action", required=True)
    export = customer_sub.add_parser("export", help="print what we hold on a customer (JSON)")
    export.add_argument("id", help="the shop's customer id")
    export.set_defaults(func=cmd_customer)
    erase = customer_sub.add_parser(
        "erase", help="erase a customer's personal data (asks first; cannot be undone)"
    )
    erase.add_argument("id", help="the shop's customer id")
    erase.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    erase.set_defaults(func=cmd_customer)
