"""Text -> overlapping token windows ("chunks") with character spans.

The same segmenter serves training and inference, so a model sees at serving time exactly the windows
it was trained on. Each text is tokenized once (fast tokenizer, offset mapping); windows are cut from the
token ids, so nothing is ever truncated and overlaps cost no second tokenization.
"""

from __future__ import annotations

import logging
import math
import unicodedata
from dataclasses import dataclass
from typing import Any

from tokenizers import Encoding, Tokenizer

_PROBE_TEXT = "longdoc probe text"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One model window: ids include the special tokens; start/end are code-point offsets (end exclusive)."""

    input_ids: list[int]
    num_tokens: int  # content tokens, special tokens excluded
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Segmented:
    """A whole text cut into windows; `num_tokens` counts each content token once."""

    chunks: list[Chunk]
    num_tokens: int
    truncated: bool = False


class WindowError(ValueError):
    """A max_length or stride that the tokenizer's window cannot take (a setting, not a broken model)."""


def expected_chunk_count(num_tokens: int, window: int, stride: int) -> int:
    """The documented chunk-count formula (DESIGN.md): 1 if it fits, else 1 + ceil((n - W) / (W - stride))."""
    if num_tokens <= window:
        return 1
    return 1 + math.ceil((num_tokens - window) / (window - stride))


class Segmenter:
    """Cuts texts into windows of `max_length` tokens (special tokens included) overlapping by `stride`."""

    def __init__(self, tokenizer: Any, max_length: int, stride: int) -> None:
        """`tokenizer` is a Hugging Face fast tokenizer; its special tokens frame every window."""
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("longdoc needs a fast (Rust) tokenizer for character offsets")
        # A private copy: the checkpoint's tokenizer.json may carry truncation/padding (all-MiniLM ships
        # truncation at 128), which would silently drop text.
        backend: Tokenizer = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        backend.no_truncation()
        backend.no_padding()
        self._backend = backend
        self.prefix, self.suffix = _special_frame(backend)
        special = getattr(tokenizer, "special_tokens_map", {})  # tokenizer.cls_token logs an error when unset
        frame_token = special.get("cls_token") or special.get("bos_token")
        if not self.prefix and not self.suffix and frame_token:
            log.warning(
                "the tokenizer defines %s but adds no special tokens to a text (saved without its post-processor?): "
                "every window goes to the model without them, and a [CLS]-pooled head reads a content token",
                frame_token,
            )
        self.max_length = max_length
        self.window = max_length - len(self.prefix) - len(self.suffix)
        if self.window < 1:
            raise WindowError(f"max_length {max_length} leaves no room for content next to the special tokens")
        if not 0 <= stride < self.window:
            raise WindowError(
                f"stride must satisfy 0 <= stride < {self.window} (max_length {max_length} minus "
                f"{len(self.prefix) + len(self.suffix)} special tokens), got {stride}"
            )
        self.stride = stride

    def segment(self, text: str, max_chunks: int | None = None) -> Segmented:
        """Tokenize once and cut into windows; `max_chunks` keeps only the first windows (caller's cap)."""
        return self.segment_many([text], max_chunks)[0]

    def segment_many(self, texts: list[str], max_chunks: int | None = None) -> list[Segmented]:
        """Batch tokenization, parallel in the Rust tokenizer. Even for one text this is the path to take:
        `Tokenizer.encode` holds the GIL for the whole call (seconds for a long text, every other thread
        and the event loop stalled), `encode_batch` releases it."""
        encodings = self._backend.encode_batch(texts, add_special_tokens=False)
        return [self._cut(t, e, max_chunks) for t, e in zip(texts, encodings, strict=True)]

    def _cut(self, text: str, encoding: Encoding, max_chunks: int | None) -> Segmented:
        """Windows from the ids; character spans from the two boundary tokens of each window only
        (`token_to_chars`): `Encoding.offsets` builds a Python tuple for every token, 4x the time of the
        whole cut for a long text, all of it holding the GIL."""
        ids = encoding.ids
        n = len(ids)
        if n == 0:
            return Segmented(chunks=[], num_tokens=0)
        step = self.window - self.stride
        # Window starts 0, step, 2*step, ... up to the first one whose window reaches the end; so every
        # window but the last is full, and consecutive windows share exactly `stride` tokens.
        starts = [0] if n <= self.window else list(range(0, n - self.window + step, step))
        truncated = max_chunks is not None and len(starts) > max_chunks
        if truncated:
            starts = starts[:max_chunks]
        chunks = []
        for s in starts:
            e = min(s + self.window, n)
            chunks.append(
                Chunk(
                    input_ids=self.prefix + ids[s:e] + self.suffix,
                    num_tokens=e - s,
                    start=char_span(encoding, s)[0],
                    end=end_over_marks(text, char_span(encoding, e - 1)[1]),
                )
            )
        return Segmented(chunks=chunks, num_tokens=n, truncated=truncated)


def char_span(encoding: Encoding, token: int) -> tuple[int, int]:
    """The token's code-point span in the text (None only for a token outside the text, such as a special
    token the tokenizer added, which windows cut here never hold; then the full offset table answers)."""
    span = encoding.token_to_chars(token)
    return span if span is not None else encoding.offsets[token]


def end_over_marks(text: str, end: int) -> int:
    """A span's end moved past the combining marks that follow it.

    Tokenizers that strip accents give a decomposed mark (the U+0301 of "cafe\u0301") no token, hence no
    offset: a chunk ending at "cafe" would split the character and drop its accent from the excerpt.
    """
    while end < len(text) and unicodedata.category(text[end]).startswith("M"):
        end += 1
    return end


def _special_frame(backend: Tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer's own post-processor puts before and after a single text."""
    plain = backend.encode(_PROBE_TEXT, add_special_tokens=False).ids
    framed = backend.encode(_PROBE_TEXT, add_special_tokens=True).ids
    for where in range(len(framed) - len(plain) + 1):
        if framed[where : where + len(plain)] == plain:
            return list(framed[:where]), list(framed[where + len(plain) :])
    raise ValueError("cannot locate the text between the tokenizer's special tokens")
