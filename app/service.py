"""One classification request end to end: limits, tokenization off the loop, batching, aggregation."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import regex
import torch

from app.aggregate import Aggregation, activate, aggregate, contributions
from app.batcher import Batcher
from app.char_budget import CharacterBudget
from app.errors import BadRequest, DeadlineExceeded, Draining, InvalidInput, Overloaded, PayloadTooLarge
from app.metrics import Metrics
from app.model import Engine
from app.schemas import (
    ChunkResult,
    ClassifyBatchResult,
    ClassifyRequest,
    ClassifyResult,
    DecisiveChunk,
    LabelScore,
)
from app.segmenter import Segmented, Segmenter
from app.settings import ServingConfig, Settings

EXCERPT_CHARS = 280
BACKLOG_BUDGETS = 5  # characters admitted and not yet tokenized, in multiples of max_tokenizing_chars
SMALL_REQUEST_SHARE = 32  # a request of at most max_tokenizing_chars / 32 characters in all is small ...
SMALL_LANE_SHARE = 8  # ... and small requests tokenize in a lane of their own, max_tokenizing_chars / 8 wide
GRAPHEME = regex.compile(r"\X")


@dataclass
class RequestStats:
    """What the access log reports about a classification (never the text itself)."""

    chunks: int = 0
    tokens: int = 0


class ClassifierService:
    """Holds the engine, segmenter and batcher of one app; the API's only collaborator."""

    def __init__(
        self,
        engine: Engine,
        segmenter: Segmenter,
        batcher: Batcher,
        serving: ServingConfig,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self.engine = engine
        self.segmenter = segmenter
        self.batcher = batcher
        self.serving = serving
        self.settings = settings
        self.metrics = metrics
        self.tokenizing = CharacterBudget(settings.max_tokenizing_chars)
        # Small requests (an article: 62,500 characters by default) never wait for a large one's tokenization
        # (2 million characters take seconds): their own lane adds at most an eighth to the memory bound.
        self.tokenizing_small = CharacterBudget(max(1, settings.max_tokenizing_chars // SMALL_LANE_SHARE))
        self.small_request_chars = settings.max_tokenizing_chars // SMALL_REQUEST_SHARE
        self.tokenize_backlog = 0  # characters of admitted large requests not yet tokenized (waiting or running)
        self.warmed_up = False
        self.draining = False

    @property
    def tokenizing_chars(self) -> int:
        """Characters being tokenized now, both lanes."""
        return self.tokenizing.held + self.tokenizing_small.held

    @property
    def tokenizing_waiting(self) -> int:
        """Requests waiting for characters to tokenize, both lanes."""
        return self.tokenizing.waiting + self.tokenizing_small.waiting

    @property
    def ready(self) -> bool:
        return self.warmed_up and self.batcher.running and not self.draining and self.worker_problem() is None

    def worker_problem(self) -> str | None:
        """Why no request can be served any more, if so: the batcher task died, or one forward pass has
        run longer than request_timeout_s (a hung engine: every request in it has had its 504 already)."""
        if not self.batcher.running:
            return "the inference worker died"
        running_s = self.batcher.pass_running_s()
        if running_s > self.settings.request_timeout_s:
            return (
                f"a forward pass has been running for {running_s:.0f} s, over request_timeout_s "
                f"{self.settings.request_timeout_s:g}: the engine is hung"
            )
        return None

    async def warm_up(self) -> None:
        """One real forward pass through the batcher before the service reports healthy."""
        segmented = self.segmenter.segment("warm up")
        ticket = self.batcher.submit([c.input_ids for c in segmented.chunks])
        await ticket.results()
        self.warmed_up = True

    async def classify(
        self, request: ClassifyRequest, received_at: float, stats: RequestStats, names: Sequence[str] | None = None
    ) -> ClassifyResult | ClassifyBatchResult:
        """`names` say how errors call each text, as the client's body did (default `text` / `texts[i]`)."""
        texts = [request.text] if request.text is not None else list(request.texts or [])
        if names is None:
            names = ["text"] if request.text is not None else [f"texts[{index}]" for index in range(len(texts))]
        self._check_limits(texts, names)
        self._check_queue_room()  # before any work
        deadline = received_at + self.settings.request_timeout_s
        segmented = await self._segment(texts, request.max_chunks, deadline)
        for name, seg in zip(names, segmented, strict=True):
            if not seg.chunks:
                raise InvalidInput(f"{name} has no tokens for this model's tokenizer")
        flat = [chunk.input_ids for seg in segmented for chunk in seg.chunks]
        stats.chunks, stats.tokens = len(flat), sum(s.num_tokens for s in segmented)
        ticket = self.batcher.submit(flat)
        try:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                rows = await ticket.results()
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"request_timeout_s {self.settings.request_timeout_s:g} passed before all {len(flat)} "
                "chunks were classified"
            ) from exc
        finally:
            self.batcher.withdraw(ticket)  # no-op when all done; frees queued chunks on any early exit
        aggregation = request.aggregation or self.serving.aggregation
        results = []
        offset = 0
        for text, seg in zip(texts, segmented, strict=True):
            logits = torch.stack(rows[offset : offset + len(seg.chunks)])
            offset += len(seg.chunks)
            self.metrics.document_chunks.observe(len(seg.chunks))
            self.metrics.document_tokens.observe(seg.num_tokens)
            results.append(self._document_result(text, seg, logits, aggregation, request))
        if request.text is not None:
            return results[0]
        return ClassifyBatchResult(results=results, model=self.engine.name)

    def _check_limits(self, texts: Sequence[str], names: Sequence[str]) -> None:
        limit = self.settings.max_texts_per_request
        if len(texts) > limit:
            raise PayloadTooLarge(f"{len(texts)} texts exceed max_texts_per_request {limit}")
        for where, text in zip(names, texts, strict=True):
            if len(text) > self.settings.max_document_chars:
                raise PayloadTooLarge(
                    f"{where} has {len(text)} characters, over max_document_chars {self.settings.max_document_chars}"
                )
            if not text.strip():
                raise InvalidInput(f"{where} is empty or whitespace only")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise BadRequest(
                    f"{where} is not valid Unicode: lone surrogate U+{ord(text[exc.start]):04X} at character "
                    f"{exc.start} (a JSON \\u escape of half a surrogate pair); send valid UTF-8 text"
                ) from None

    def _check_queue_room(self) -> None:
        """Also the admission hook after a wait for the character budget: a stop meanwhile (an operator's
        second signal) answers 503 before tokenizing for nothing."""
        if self.batcher.closed:
            raise Draining("the service was stopped before this request finished; retry")
        if self.batcher.pending >= self.batcher.max_queue_chunks:
            raise Overloaded(
                f"queue full: {self.batcher.pending} chunks pending, max_queue_chunks {self.batcher.max_queue_chunks}",
                self.batcher.retry_after_s(),
            )

    def _check_tokenizer_room(self, chars: int) -> None:
        """The wait for the character budget is a queue too, and each waiter holds its body: bounded, so a
        burst of large texts gets 429s instead of piling up into 504s. A request arriving when nothing is
        admitted is always taken, whatever its size."""
        backlog, limit = self.tokenize_backlog, BACKLOG_BUDGETS * self.tokenizing.capacity
        if backlog and backlog + chars > limit:
            raise Overloaded(
                f"tokenizer busy: {backlog} characters of earlier requests are not yet tokenized; at most "
                f"{BACKLOG_BUDGETS} x max_tokenizing_chars = {limit} may be",
                max(1, math.ceil(self.tokenizing.seconds_for(backlog))),
                reason="tokenizer_busy",
            )

    async def _segment(self, texts: list[str], max_chunks: int | None, deadline: float) -> list[Segmented]:
        """Tokenization of a large text takes a while: it runs in a worker thread, never on the loop, and
        under the request's deadline (a thread cannot be stopped: it finishes and its result is dropped).

        Texts go to the tokenizer in groups of at most max_tokenizing_chars characters, each group once
        the shared character budget allows, and the chunk count is checked after each group: a request
        too large for the queue is refused once its first groups show it, before the rest is tokenized.
        A small request (all its texts together) goes through the small lane in one group instead, and
        does not count in the backlog of large ones.

        asyncio.timeout, not wait_for, here and below: Python 3.11's wait_for drops a cancellation that
        lands in the loop step where the work finishes (CPython gh-86296), and the request of a client that
        just left would go on to queue all its chunks."""
        segmented: list[Segmented] = []
        chunks = 0
        total = sum(map(len, texts))
        small = total <= self.small_request_chars
        budget = self.tokenizing_small if small else self.tokenizing
        backlog = 0 if small else total  # this request's characters counted in tokenize_backlog
        if backlog:
            self._check_tokenizer_room(backlog)
            self.tokenize_backlog += backlog
        try:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:  # before handing a thread work whose result would be dropped
                raise TimeoutError
            async with asyncio.timeout(remaining):
                for group in _groups_by_chars(texts, budget.capacity):
                    size = sum(map(len, group))
                    done = await budget.run_in_thread(
                        size, partial(self.segmenter.segment_many, group, max_chunks), admit=self._check_queue_room
                    )
                    segmented += done
                    if not small:
                        backlog -= size
                        self.tokenize_backlog -= size
                    chunks += sum(len(seg.chunks) for seg in done)
                    if chunks > self.batcher.max_queue_chunks and len(segmented) < len(texts):
                        raise PayloadTooLarge(
                            f"the request needs at least {chunks} chunks (its first {len(segmented)} of "
                            f"{len(texts)} texts) but max_queue_chunks is {self.batcher.max_queue_chunks}; "
                            "split the input or raise LONGDOC_MAX_QUEUE_CHUNKS",
                            reason="too_many_chunks",
                        )
                return segmented
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"request_timeout_s {self.settings.request_timeout_s:g} passed while tokenizing (or waiting to "
                f"tokenize) {len(texts)} text(s) of {total} characters"
            ) from exc
        finally:
            self.tokenize_backlog -= backlog  # what this request will no longer tokenize

    def _document_result(
        self,
        text: str,
        seg: Segmented,
        chunk_logits: torch.Tensor,
        aggregation: Aggregation,
        request: ClassifyRequest,
    ) -> ClassifyResult:
        """Runs on the event loop: tensors become Python lists once (`tolist`) and every chunk's labels
        are ranked in one argsort; indexing a tensor per chunk cost 3x as much (32 ms for 500 chunks)."""
        multi = self.engine.multi_label
        labels = self.engine.labels
        counts = torch.tensor([c.num_tokens for c in seg.chunks])
        probs_t = activate(aggregate(chunk_logits, counts, aggregation, multi), multi)
        order = torch.argsort(probs_t, descending=True, stable=True).tolist()
        probs = probs_t.tolist()
        top = order[0]
        result = ClassifyResult(
            label=labels[top],
            score=probs[top],
            scores=[LabelScore(label=labels[i], score=probs[i]) for i in order],
            labels=[labels[i] for i in order if probs[i] >= self.serving.threshold] if multi else None,
            num_chunks=len(seg.chunks),
            num_tokens=seg.num_tokens,
            truncated=seg.truncated,
            aggregation=aggregation,
            model=self.engine.name,
        )
        if request.return_chunks:
            chunk_probs_t = activate(chunk_logits, multi)
            ranked = torch.argsort(chunk_probs_t, dim=1, descending=True, stable=True).tolist()
            chunk_probs = chunk_probs_t.tolist()
            shares = contributions(chunk_logits, counts, aggregation, top, multi).tolist()
            result.chunks = [
                ChunkResult(
                    start=chunk.start,
                    end=chunk.end,
                    num_tokens=chunk.num_tokens,
                    label=labels[ranked[i][0]],
                    score=chunk_probs[i][ranked[i][0]],
                    scores=[LabelScore(label=labels[j], score=chunk_probs[i][j]) for j in ranked[i]],
                    contribution=shares[i],
                )
                for i, chunk in enumerate(seg.chunks)
            ]
            decisive = sorted(range(len(seg.chunks)), key=lambda i: (-shares[i] * chunk_probs[i][top], i))
            result.top_chunks = [
                DecisiveChunk(
                    index=i,
                    start=seg.chunks[i].start,
                    end=seg.chunks[i].end,
                    contribution=shares[i],
                    score=chunk_probs[i][top],
                    excerpt=excerpt(text[seg.chunks[i].start : seg.chunks[i].end]),
                )
                for i in decisive[: request.top_k_chunks]
            ]
        return result


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """At most `limit` code points, cut between user-perceived characters (grapheme clusters): a plain
    slice can cut an emoji ZWJ sequence, a flag or an accent off its base and send a broken glyph."""
    if len(text) <= limit:
        return text
    # A boundary at or before `limit` depends only on the characters around it, so the prefix suffices.
    cut = 0
    for cluster in GRAPHEME.finditer(text, 0, limit + 1):
        if cluster.end() > limit:
            break
        cut = cluster.end()
    return text[:cut] if cut else text[:limit]  # one cluster longer than the limit (stacked marks): cut it


def _groups_by_chars(texts: list[str], budget: int) -> list[list[str]]:
    """Consecutive texts packed into groups of at most `budget` characters; a longer text is a group alone."""
    groups: list[list[str]] = []
    size = 0
    for text in texts:
        if groups and size + len(text) <= budget:
            groups[-1].append(text)
            size += len(text)
        else:
            groups.append([text])
            size = len(text)
    return groups
