"""Segmenter properties on real tokenizers: the bundled WordPiece and a locally trained byte-level BPE."""

from __future__ import annotations

import threading
import time
import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.segmenter import Segmenter, end_over_marks, expected_chunk_count
from tests.conftest import long_text

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=600) | st.lists(
    st.sampled_from(["the", "senate", "vote", "é", "🙂", "\n", "  ", "naïve", "שלום", "x" * 30]), max_size=300
).map(" ".join)


def check_properties(segmenter: Segmenter, text: str) -> None:
    encoding = segmenter._backend.encode(text, add_special_tokens=False)
    ids, offsets = encoding.ids, encoding.offsets
    seg = segmenter.segment(text)
    n = len(ids)
    assert seg.num_tokens == n
    if n == 0:
        assert seg.chunks == []
        return
    window, stride = segmenter.window, segmenter.stride
    assert len(seg.chunks) == expected_chunk_count(n, window, stride)
    covered = set()
    position = 0
    for index, chunk in enumerate(seg.chunks):
        assert len(chunk.input_ids) <= segmenter.max_length
        assert chunk.input_ids[: len(segmenter.prefix)] == segmenter.prefix
        assert chunk.input_ids[len(chunk.input_ids) - len(segmenter.suffix) :] == segmenter.suffix
        content = chunk.input_ids[len(segmenter.prefix) : len(chunk.input_ids) - len(segmenter.suffix)]
        assert content == ids[position : position + len(content)]
        assert chunk.num_tokens == len(content)
        covered.update(range(position, position + len(content)))
        # character span: inside the text, and exactly the span of the chunk's first to last token
        assert 0 <= chunk.start <= chunk.end <= len(text)
        assert chunk.start == offsets[position][0]
        assert chunk.end == end_over_marks(text, offsets[position + len(content) - 1][1])
        assert chunk.end == len(text) or not unicodedata.category(text[chunk.end]).startswith("M")
        for token in range(position, position + len(content)):
            assert chunk.start <= offsets[token][0] <= offsets[token][1] <= chunk.end
        if index < len(seg.chunks) - 1:
            assert len(content) == window  # only the last window may be short
            position += window - stride  # so consecutive windows share exactly `stride` tokens
    assert covered == set(range(n))  # every token is in at least one chunk


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT, max_length=st.integers(4, 40), stride_share=st.floats(0, 0.95))
def test_wordpiece_properties(wordpiece_tokenizer: Any, text: str, max_length: int, stride_share: float) -> None:
    window = max_length - 2
    segmenter = Segmenter(wordpiece_tokenizer, max_length, min(window - 1, int(stride_share * window)))
    check_properties(segmenter, text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT, max_length=st.integers(4, 40), stride_share=st.floats(0, 0.95))
def test_byte_level_bpe_properties(bpe_tokenizer: Any, text: str, max_length: int, stride_share: float) -> None:
    window = max_length - 2
    segmenter = Segmenter(bpe_tokenizer, max_length, min(window - 1, int(stride_share * window)))
    assert segmenter.prefix == [bpe_tokenizer.convert_tokens_to_ids("<s>")]
    assert segmenter.suffix == [bpe_tokenizer.convert_tokens_to_ids("</s>")]
    check_properties(segmenter, text)


def test_special_tokens_come_from_the_tokenizer(wordpiece_tokenizer: Any) -> None:
    segmenter = Segmenter(wordpiece_tokenizer, 512, 0)
    assert segmenter.prefix == [wordpiece_tokenizer.cls_token_id]
    assert segmenter.suffix == [wordpiece_tokenizer.sep_token_id]
    assert segmenter.window == 510


def test_never_truncates_even_when_the_tokenizer_file_does(wordpiece_tokenizer: Any) -> None:
    # all-MiniLM's tokenizer.json truncates at 128 tokens; the segmenter must see every token.
    text = "word " * 1000
    seg = Segmenter(wordpiece_tokenizer, 512, 64).segment(text)
    assert seg.num_tokens == 1000
    assert seg.chunks[-1].end == len(text.rstrip())
    assert len(seg.chunks) == expected_chunk_count(1000, 510, 64) == 3


def test_short_text_is_one_chunk_and_empty_text_none(wordpiece_tokenizer: Any) -> None:
    segmenter = Segmenter(wordpiece_tokenizer, 512, 128)
    assert len(segmenter.segment("a short note").chunks) == 1
    assert segmenter.segment("").chunks == []
    assert segmenter.segment(" \n\t ").chunks == []


def test_max_chunks_keeps_the_leading_windows_and_says_so(wordpiece_tokenizer: Any) -> None:
    segmenter = Segmenter(wordpiece_tokenizer, 16, 2)
    full = segmenter.segment("alpha " * 100)
    capped = segmenter.segment("alpha " * 100, max_chunks=2)
    assert capped.truncated and not full.truncated
    assert capped.chunks == full.chunks[:2]
    assert capped.num_tokens == full.num_tokens


@pytest.mark.parametrize("stride", [14, 15, -1])
def test_invalid_stride_is_refused_with_the_values(wordpiece_tokenizer: Any, stride: int) -> None:
    with pytest.raises(ValueError, match=rf"stride must satisfy 0 <= stride < 14 .*got {stride}"):
        Segmenter(wordpiece_tokenizer, 16, stride)


def test_expected_chunk_count_formula() -> None:
    assert expected_chunk_count(10, 10, 2) == 1
    assert expected_chunk_count(11, 10, 2) == 2
    assert expected_chunk_count(18, 10, 2) == 2
    assert expected_chunk_count(19, 10, 2) == 3


def test_a_chunk_never_splits_a_decomposed_accent(wordpiece_tokenizer: Any) -> None:
    """The uncased tokenizer strips U+0301, so it has no offset; the chunk ending in "cafe" must keep it."""
    text = "a a cafe\u0301 b c"
    seg = Segmenter(wordpiece_tokenizer, 5, 0).segment(text)
    spans = [text[c.start : c.end] for c in seg.chunks]
    assert spans == ["a a cafe\u0301", "b c"]


def test_tokenizing_a_long_text_lets_other_threads_run(wordpiece_tokenizer: Any) -> None:
    """The service tokenizes in a worker thread; a tokenizer call that held the GIL throughout would stall
    the event loop (health probes, every other request) for as long as a long text takes."""
    segmenter = Segmenter(wordpiece_tokenizer, 256, 0)
    text = long_text(80_000)
    finished = threading.Event()
    worker = threading.Thread(target=lambda: (segmenter.segment(text), finished.set()))
    turns = 0
    worker.start()
    while not finished.is_set():
        time.sleep(0.001)
        turns += 1
    worker.join()
    assert turns >= 20, f"the main thread ran only {turns} times while {len(text)} characters were tokenized"


def test_a_tokenizer_saved_without_its_special_tokens_is_reported(
    bpe_tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A BPE tokenizer whose post-processor was lost still names <s>: windows without it are worth a warning."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(bpe_tokenizer.backend_tokenizer.to_str())
    backend.post_processor = None
    bare = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    with caplog.at_level("WARNING", logger="app.segmenter"):
        segmenter = Segmenter(bare, 32, 0)
    assert segmenter.prefix == [] and segmenter.suffix == []
    assert "adds no special tokens" in caplog.text and "<s>" in caplog.text
    caplog.clear()
    Segmenter(bpe_tokenizer, 32, 0)  # the intact tokenizer frames its windows: no warning
    assert "adds no special tokens" not in caplog.text
