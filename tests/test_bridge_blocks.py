"""Audio blocks on the wire: sample layout, chunk spans, and reassembly with concealment (no sockets)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmdm_bridge.wire.blocks import BlockAssembler, ChunkError, audio_to_bytes, chunk_spans, deinterleave


def block(seq: int, frames: int = 10, channels: int = 2) -> np.ndarray:
    return (seq * 1000 + np.arange(channels * frames, dtype=np.float32)).reshape(channels, frames)


def chunks_of(seq: int, audio: np.ndarray, per_chunk: int) -> list[tuple]:
    return [(seq, start, audio.shape[1], audio_to_bytes(audio[:, start: start + n]))
            for start, n in chunk_spans(audio.shape[1], per_chunk)]


def test_samples_are_interleaved_float32_little_endian():
    audio = np.array([[1.0, 2.0], [-1.0, -2.0]], np.float32)  # [channels, frames]
    data = audio_to_bytes(audio)
    assert data == np.array([1.0, -1.0, 2.0, -2.0], "<f4").tobytes()
    for channels in (1, 2, 3):
        audio = np.random.default_rng(channels).standard_normal((channels, 65), dtype=np.float32)
        back = deinterleave(audio_to_bytes(audio), channels)
        np.testing.assert_array_equal(back, audio)
        assert back.flags.c_contiguous and back.flags.writeable


def test_a_blob_of_partial_frames_is_refused():
    assembler = BlockAssembler(2, 16, timeout=1.0)
    with pytest.raises(ChunkError, match="not a whole number of 2-channel float32 frames"):
        assembler.add(0, 0, 4, audio_to_bytes(block(0, 4))[:-4], now=0.0)


def test_chunk_spans_cover_the_block():
    assert chunk_spans(10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert chunk_spans(3, 8) == [(0, 3)]


@given(order=st.permutations(range(12)), duplicate=st.integers(0, 11))
@settings(max_examples=60, deadline=None)
def test_reordered_and_duplicated_chunks_make_blocks_in_order(order, duplicate):
    chunks = chunks_of(0, block(0), 4) + chunks_of(1, block(1), 4) + chunks_of(2, block(2), 4) \
        + chunks_of(3, block(3), 4)
    assembler = BlockAssembler(2, 16, timeout=1.0)
    out = []
    for i in list(order) + [duplicate]:
        out += assembler.add(*chunks[i], now=0.0)
    assert [b.seq for b in out] == [0, 1, 2, 3]
    assert not any(b.concealed for b in out)
    for b in out:
        np.testing.assert_array_equal(b.audio, block(b.seq))
    assert assembler.duplicates == 1


def test_missing_chunk_is_concealed_after_the_timeout_never_waited_on_forever():
    assembler = BlockAssembler(2, 16, timeout=0.05)
    first, _, third = chunks_of(0, block(0), 4)
    assert assembler.add(*first, now=1.0) == [] and assembler.add(*third, now=1.01) == []
    assert assembler.next_timeout() == pytest.approx(1.05)
    assert assembler.poll(1.04) == []
    (out,) = assembler.poll(1.05)
    assert out.concealed and out.missing.tolist() == [False] * 4 + [True] * 4 + [False] * 2
    np.testing.assert_array_equal(out.audio[:, 4:8], 0.0)
    np.testing.assert_array_equal(out.audio[:, :4], block(0)[:, :4])


def test_block_of_which_nothing_arrived_is_handed_on_as_lost():
    assembler = BlockAssembler(2, 16, timeout=0.05)
    (late,) = chunks_of(1, block(1), 16)
    assert assembler.add(*late, now=2.0) == []
    lost, after = assembler.poll(2.05)
    assert (lost.seq, lost.lost, after.seq, after.lost) == (0, True, 1, False)


def test_skipped_seq_is_not_waited_for():
    assembler = BlockAssembler(2, 16, timeout=10.0)
    (one,) = chunks_of(1, block(1), 16)
    assert assembler.add(*one, now=0.0) == []
    lost, after = assembler.skip(0, now=0.0)
    assert lost.lost and after.seq == 1
    assert assembler.add(*chunks_of(0, block(0), 16)[0], now=0.0) == []  # too late: dropped
    assert assembler.duplicates == 1


@pytest.mark.parametrize("chunk, complaint", [
    ((0, 0, 17, b"\0" * 8), r"total_frames=17 is outside \[1, 16\]"),
    ((0, 0, 0, b"\0" * 8), "total_frames=0"),
    ((0, 10, 10, b"\0" * 8), "frame_offset=10 is outside"),
    ((0, 8, 10, b"\0" * 24), "does not fit"),
    ((0, 0, 10, b""), "does not fit"),
    ((0, 0, 10, b"\0" * 7), "not a whole number"),
    ((8, 0, 10, b"\0" * 8), "8 blocks ahead"),
])
def test_chunks_that_cannot_fit_are_refused_with_the_reason(chunk, complaint):
    with pytest.raises(ChunkError, match=complaint):
        BlockAssembler(2, 16, timeout=1.0).add(*chunk, now=0.0)


def test_chunks_disagreeing_on_the_block_length_are_refused():
    assembler = BlockAssembler(1, 16, timeout=1.0)
    assembler.add(0, 0, 10, b"\0" * 8, now=0.0)
    with pytest.raises(ChunkError, match="earlier chunks said 10"):
        assembler.add(0, 4, 12, b"\0" * 8, now=0.0)


def test_a_block_in_one_chunk_is_taken_whole_as_its_own_array():
    audio = block(0, frames=50)
    data = bytearray(audio_to_bytes(audio))
    (out,) = BlockAssembler(2, 64, timeout=0.03).add(0, 0, 50, data, now=0.0)
    data[:] = bytes(len(data))  # the received bytes are not aliased
    assert not out.concealed and out.audio.dtype == np.float32 and out.audio.flags.c_contiguous
    np.testing.assert_array_equal(out.audio, audio)
