"""Chains: plugin tables from text and TOML, clear errors, and streamed chains equal to the whole-buffer result."""

import numpy as np
import pedalboard
import pytest
import soundfile as sf

from lmdm_engine.core.audio import tone
from lmdm_engine.io.chains import (NOT_STREAMABLE, ChainError, EffectChain, build_board, builtin_plugins,
                                   check_plugin_table, parse_plugin_text)

RATE = 44100


def stream(stage, audio, sizes, sample_rate=RATE):
    """Run audio through stage.process in chunks cycling through sizes, reset only on the first."""
    out, start, i = [], 0, 0
    while start < audio.shape[1]:
        n = sizes[i % len(sizes)]
        out.append(stage.process(audio[:, start: start + n], sample_rate, reset=start == 0))
        start, i = start + n, i + 1
    return np.concatenate(out, 1)


@pytest.fixture(scope="module")
def impulse_response(tmp_path_factory):
    path = tmp_path_factory.mktemp("ir") / "room.wav"
    rng = np.random.default_rng(1)
    sf.write(path, (rng.standard_normal(2000) * np.exp(-np.arange(2000) / 300) * 0.1).astype(np.float32), RATE)
    return path


def loud_signal():
    """Tones with a loud burst in the middle, so dynamics plugins and gates act."""
    audio = tone(1.0, RATE)
    audio[:, RATE // 3: RATE // 2] *= 4.0
    return audio


@pytest.mark.parametrize("name", sorted(builtin_plugins()))
def test_every_allowed_builtin_streams_exactly(name, impulse_response):
    table = {"plugin": name}
    if name == "Convolution":
        table["impulse_response_filename"] = str(impulse_response)
    board = build_board([check_plugin_table(table, "test")])
    audio = loud_signal()
    whole = board(audio, RATE)
    streamed = stream(board, audio, [4096, 1, 333, 2, 1000])
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", sorted(NOT_STREAMABLE))
def test_refused_builtins_do_differ_when_streamed(name):
    plugin = getattr(pedalboard, name)()
    audio = loud_signal()
    whole = plugin.process(audio, RATE, reset=True)
    streamed = stream(plugin, audio, [4096])
    assert streamed.shape != whole.shape or np.abs(streamed - whole).max() > 1e-3
    with pytest.raises(ChainError, match=f"{name} cannot be used in a streamed chain"):
        parse_plugin_text(name)


def test_parse_plugin_text_forms():
    assert parse_plugin_text("Reverb") == {"plugin": "Reverb"}
    assert parse_plugin_text("Reverb()") == {"plugin": "Reverb"}
    assert parse_plugin_text(" Reverb(room_size=0.6, wet_level=0.2) ") == {
        "plugin": "Reverb", "room_size": 0.6, "wet_level": 0.2}
    assert parse_plugin_text("LadderFilter(mode='LPF24', cutoff_hz=500)") == {
        "plugin": "LadderFilter", "mode": "LPF24", "cutoff_hz": 500}
    assert parse_plugin_text('/plugins/Echo (x64).vst3(mix=0.5, plugin_name="Echo, stereo", bypass=False)') == {
        "plugin": "/plugins/Echo (x64).vst3", "mix": 0.5, "plugin_name": "Echo, stereo", "bypass": False}
    assert parse_plugin_text("/plugins/Echo (x64).vst3") == {"plugin": "/plugins/Echo (x64).vst3"}


@pytest.mark.parametrize("text, words", [
    ("Reverbb", ["unknown plugin 'Reverbb'", "did you mean 'Reverb'", "Compressor", ".vst3"]),
    ("Reverb(room=0.5)", ["Reverb has no parameter 'room'", "did you mean 'room_size'", "wet_level"]),
    ("Reverb(room_size='big')", ["Reverb parameter 'room_size' = 'big' must be a number"]),
    ("Reverb(room_size=true)", ["parameter 'room_size' must be a number, a quoted string, True or False"]),
    ("Reverb(0.5)", ["give parameters as key=value"]),
    ("Reverb(room_size=0.5))", ["expected Name(key=value, ...)"]),
    ("Compressor(ratio=True)", ["Compressor parameter 'ratio' = True must be a number"]),
    ("LadderFilter(mode='LP')", ["'mode' = 'LP' must be one of 'LPF12'", "'BPF24'"]),
    ("Convolution(mix=0.5)", ["Convolution needs parameter 'impulse_response_filename'"]),
    ("/plugins/Echo.vst3(mix=[1])", ["/plugins/Echo.vst3 parameter 'mix' = [1] must be a number, string or boolean"]),
])
def test_parse_errors_name_plugin_and_parameter(text, words):
    with pytest.raises(ChainError) as info:
        parse_plugin_text(text)
    message = str(info.value)
    assert message.startswith(f"plugin {text!r}:"), message
    assert all(w in message for w in words), message


def test_table_errors():
    with pytest.raises(ChainError, match="where: expected a table"):
        check_plugin_table(["Reverb"], "where")
    with pytest.raises(ChainError, match="where: missing 'plugin'"):
        check_plugin_table({"room_size": 0.5}, "where")


def test_build_errors_name_plugin_value_and_reason(tmp_path):
    with pytest.raises(ChainError) as info:
        build_board([parse_plugin_text("Reverb(room_size=5)")], "preset x: post")
    assert "preset x: post[0]: Reverb(room_size=5)" in str(info.value) and "between 0.0 and 1.0" in str(info.value)
    with pytest.raises(ChainError, match=r"chain\[0\]: cannot load .*missing.vst3"):
        build_board([check_plugin_table({"plugin": str(tmp_path / "missing.vst3")}, "t")])
    fake = tmp_path / "Fake.vst3"
    fake.write_bytes(b"not a plugin")
    with pytest.raises(ChainError, match=r"cannot load .*Fake.vst3"):
        build_board([check_plugin_table({"plugin": str(fake), "mix": 0.5}, "t")])


def test_relative_paths_join_the_base_folder(tmp_path, impulse_response):
    table = check_plugin_table({"plugin": "Convolution", "impulse_response_filename": impulse_response.name},
                               "t", base_dir=impulse_response.parent)
    assert table["impulse_response_filename"] == str(impulse_response)
    relative = check_plugin_table({"plugin": "fx/Echo.vst3"}, "t", base_dir=tmp_path)
    assert relative["plugin"] == str(tmp_path / "fx/Echo.vst3")
    assert check_plugin_table({"plugin": "/abs/Echo.vst3"}, "t", base_dir=tmp_path)["plugin"] == "/abs/Echo.vst3"


class Wobble:
    """A stateful Python effect (one-pole low-pass + gain) with the effect protocol."""

    def __init__(self):
        self.state = None

    def process(self, audio, sample_rate, reset=False):
        if reset or self.state is None:
            self.state = np.zeros(audio.shape[0], np.float32)
        out = np.empty_like(audio)
        for i in range(audio.shape[1]):
            self.state = 0.9 * self.state + 0.1 * audio[:, i]
            out[:, i] = 2.0 * self.state
        return out


class DelayLine:
    """A Python stage that is late by ``reported_latency_samples``, like a lookahead plugin."""

    def __init__(self, latency):
        self.reported_latency_samples = latency
        self.memory = None

    def process(self, audio, sample_rate, reset=False):
        if reset or self.memory is None:
            self.memory = np.zeros((audio.shape[0], self.reported_latency_samples), np.float32)
        joined = np.concatenate([self.memory, audio], 1)
        self.memory = joined[:, audio.shape[1]:]
        return joined[:, : audio.shape[1]]


def boards():
    return (build_board([parse_plugin_text("HighpassFilter(cutoff_frequency_hz=120)"),
                         parse_plugin_text("Compressor(threshold_db=-18, ratio=3)")]),
            build_board([parse_plugin_text("Reverb(room_size=0.7)"), parse_plugin_text("Limiter")]))


def test_chain_equals_the_stages_one_after_another():
    audio = tone(0.5, RATE)
    pre, post = boards()
    expected = post(Wobble().process(pre(audio, RATE), RATE, reset=True), RATE)
    pre, post = boards()
    chain = EffectChain([pre, Wobble(), post])
    np.testing.assert_allclose(chain(audio, RATE), expected, atol=1e-6)
    np.testing.assert_allclose(stream(chain, audio, [512, 1, 7000]), expected, atol=1e-6)
    np.testing.assert_allclose(np.concatenate(list(chain.render((audio[:, i: i + 999] for i in range(0, 22050, 999)),
                                                                RATE)), 1), expected, atol=1e-6)


def test_render_compensates_reported_latency():
    audio = tone(0.5, RATE)
    _, post = boards()
    expected = post(Wobble().process(audio, RATE, reset=True), RATE)
    chain = EffectChain([DelayLine(300), Wobble(), DelayLine(77), post])
    assert chain.reported_latency_samples == 377
    out = np.concatenate(list(chain.render((audio[:, i: i + 4096] for i in range(0, audio.shape[1], 4096)), RATE)), 1)
    assert out.shape == audio.shape
    np.testing.assert_allclose(out, expected, atol=1e-6)
    late = chain(audio, RATE)  # a streamed pass cannot compensate: the plain process() output is late
    np.testing.assert_allclose(late[:, 377:], expected[:, :-377], atol=1e-6)


def test_render_of_a_stream_shorter_than_its_channel_count():
    board = boards()[1]
    one_frame = np.full((2, 1), 0.5, np.float32)
    out = list(EffectChain([board]).render([one_frame], RATE))
    assert len(out) == 1 and out[0].shape == (2, 1) and np.isfinite(out[0]).all()


def test_chain_rejects_stages_that_are_not_effects_or_change_length():
    with pytest.raises(TypeError, match="stage 1 \\(str\\) has no process"):
        EffectChain([Wobble(), "Reverb"])

    class Shrinks:
        def process(self, audio, sample_rate, reset=False):
            return audio[:, 1:]

    with pytest.raises(ValueError, match=r"stage 0 \(Shrinks\) returned audio of shape \(2, 99\) for \(2, 100\)"):
        EffectChain([Shrinks()]).process(np.zeros((2, 100), np.float32), RATE)
