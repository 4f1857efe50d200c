"""`longdoc classify FILE... [--url URL] [--json]`: classify text files through a running longdoc service.

Files go out concurrently (the service packs chunks of concurrent requests into shared batches), results
come back in the order given: a table at the end, or one JSON object per line as soon as it is ready.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from longdoc.client import DEFAULT_URL, APIError, AsyncClient, Classification, service_url

AGGREGATIONS = ["mean_logits", "max_logits", "mean_probs", "weighted_mean_logits"]


def add_parser(subparsers: Any) -> None:
    """Register `classify` on the `longdoc` command's subparsers."""
    parser = subparsers.add_parser(
        "classify",
        help="classify text files through a running service (table or JSON lines)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="UTF-8 text files; '-' reads standard input")
    parser.add_argument(
        "--url", type=_url_argument, default=None, help=f"service URL (default: $LONGDOC_URL, else {DEFAULT_URL})"
    )
    parser.add_argument("--api-key", default=None, help="API key (default: $LONGDOC_API_KEY)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per file instead of a table")
    parser.add_argument("--chunks", action="store_true", help="with --json: add per-chunk scores and top chunks")
    parser.add_argument("--aggregation", choices=AGGREGATIONS, default=None, help="override the service default")
    parser.add_argument("--concurrency", type=int, default=4, help="files in flight at once (default 4)")
    parser.add_argument("--timeout", type=_positive_seconds, default=600.0, help="seconds to wait for one answer")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on standard error")


def _url_argument(value: str) -> str:
    try:
        return service_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_seconds(value: str) -> float:
    seconds = float(value)
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value}")
    return seconds


def _read(name: str) -> str:
    """The file's text as it is (strict UTF-8, no newline translation), so --chunks offsets point into the
    file itself, the same whether it is named or piped in ('-')."""
    raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    return raw.decode("utf-8")


def _display(name: str) -> str:
    """A file name as printable UTF-8: an undecodable byte of a name shows as \\xNN instead of failing."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _error(exc: Exception) -> dict[str, str]:
    if isinstance(exc, APIError):
        return {"type": exc.error_type, "message": exc.message}
    if isinstance(exc, httpx.TimeoutException):
        return {"type": "timeout", "message": f"no answer from {_url(exc)} in time ({type(exc).__name__})"}
    if isinstance(exc, httpx.HTTPError):
        return {"type": "connection_error", "message": f"{_url(exc)}: {type(exc).__name__}: {exc}"}
    return {"type": "read_error", "message": str(exc)}


def _url(exc: httpx.HTTPError) -> str:
    """The URL tried, without any user:password in it (error lines end up in logs)."""
    try:
        url = exc.request.url
    except RuntimeError:  # an error raised before a request existed
        return "the service"
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}{url.path}"


def _json_line(name: str, outcome: Classification | Exception) -> str:
    if isinstance(outcome, Exception):
        return json.dumps({"file": _display(name), "error": _error(outcome)}, ensure_ascii=False)
    fields = {k: v for k, v in dataclasses.asdict(outcome).items() if v is not None}
    return json.dumps({"file": _display(name), **fields}, ensure_ascii=False)


def format_table(rows: list[tuple[str, Classification | Exception]]) -> str:
    """Aligned columns FILE LABEL SCORE CHUNKS TOKENS; a failed file shows its error instead."""
    header = ("FILE", "LABEL", "SCORE", "CHUNKS", "TOKENS")
    cells: list[tuple[str, ...]] = []
    for name, outcome in rows:
        if isinstance(outcome, Exception):
            error = _error(outcome)
            cells.append((_display(name), f"error {error['type']}: {error['message']}"))
        else:
            cells.append(
                (
                    _display(name),
                    outcome.label,
                    f"{outcome.score:.3f}",
                    str(outcome.num_chunks),
                    str(outcome.num_tokens),
                )
            )
    full = [c for c in cells if len(c) == len(header)]
    widths = [max(len(row[i]) for row in [header, *full]) for i in range(len(header))]
    widths[0] = max(widths[0], *(len(c[0]) for c in cells))

    def line(row: tuple[str, ...]) -> str:
        if len(row) != len(header):
            return f"{row[0].ljust(widths[0])}  {row[1]}"
        left = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        right = [row[i].rjust(widths[i]) for i in range(2, len(header))]
        return "  ".join(left + right)

    return "\n".join(line(row) for row in [header, *cells])


async def _classify_all(args: argparse.Namespace) -> list[tuple[str, Classification | Exception]]:
    limit = asyncio.Semaphore(max(1, args.concurrency))
    api_key = args.api_key or os.environ.get("LONGDOC_API_KEY")
    names: list[str] = list(args.files)
    show_progress = not args.no_progress and len(names) > 1
    async with AsyncClient(args.url, api_key=api_key, timeout=args.timeout) as client:
        with tqdm(total=len(names), unit="file", file=sys.stderr, disable=None if show_progress else True) as bar:

            async def one(name: str) -> Classification | Exception:
                async with limit:
                    try:
                        text = await asyncio.to_thread(_read, name)
                        return await client.classify(text, return_chunks=args.chunks, aggregation=args.aggregation)
                    except Exception as exc:
                        return exc
                    finally:
                        bar.update(1)

            tasks = [asyncio.ensure_future(one(name)) for name in names]
            rows = []
            for name, task in zip(names, tasks, strict=True):
                outcome = await task
                rows.append((name, outcome))
                if args.json:  # flushed: a reader of the pipe gets each line as it is ready
                    tqdm.write(_json_line(name, outcome), file=sys.stdout)
                    sys.stdout.flush()
    return rows


def run(args: argparse.Namespace) -> int:
    """0 when every file was classified, 1 when any failed (its error is in the output)."""
    if args.files.count("-") > 1:
        print("error: '-' (standard input) may be given once", file=sys.stderr)
        return 2
    try:
        service_url(args.url or os.environ.get("LONGDOC_URL") or DEFAULT_URL)
    except ValueError as exc:  # from $LONGDOC_URL: --url was checked as it was parsed
        print(f"error: $LONGDOC_URL: {exc}", file=sys.stderr)
        return 2
    try:
        rows = asyncio.run(_classify_all(args))
        if not args.json:
            print(format_table(rows))
        sys.stdout.flush()
    except BrokenPipeError:  # `longdoc classify ... | head`: the reader left; stop quietly, as `cat` would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit-time flush must not fail too
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:  # Ctrl-C: the lines printed so far stand; requests in flight are abandoned
        print("\ninterrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    return 1 if any(isinstance(outcome, Exception) for _, outcome in rows) else 0
