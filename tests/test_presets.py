"""Presets: shipped files load, round-trip, and every kind of mistake gets a message naming file and field."""

import dataclasses

import pytest

from lmdm_engine.core.config import STYLE_VOCAB
from lmdm_engine.io.presets import (DEFAULT_PRESET, SCHEMA, Preset, PresetError, describe_schema, list_presets,
                                    load_preset, preset_from_dict, preset_to_toml, shipped_presets)
from lmdm_engine.stream.params import unplayable_reason


def write(tmp_path, name, text):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def error_for(tmp_path, body, name="foo"):
    path = write(tmp_path, name, f'name = "{name}"\n' + body)
    with pytest.raises(PresetError) as info:
        load_preset(path)
    message = str(info.value)
    assert str(path) in message
    return message


def test_shipped_presets_load_and_are_distinct():
    shipped = shipped_presets()
    assert len(shipped) >= 5 and DEFAULT_PRESET in shipped
    presets = list_presets()
    assert [p.name for p in presets] == sorted(shipped)
    for p in presets:
        assert p.description and p.style
    settings = {(p.delay_seconds, p.strength, p.feedback, p.mix, tuple(sorted(p.style))) for p in presets}
    assert len(settings) == len(presets)


@pytest.mark.parametrize("name", sorted(shipped_presets()))
def test_round_trip_through_toml(tmp_path, name):
    preset = load_preset(name)
    again = load_preset(write(tmp_path, name, preset_to_toml(preset)))
    assert again == preset


def test_round_trip_awkward_strings_and_defaults(tmp_path):
    preset = Preset(name="odd", description='quote " backslash \\ tab\t newline\n bell \u266b')
    assert load_preset(write(tmp_path, "odd", preset_to_toml(preset))) == preset


def test_defaults_come_from_the_schema():
    preset = preset_from_dict({"name": "x"})
    assert [f.name for f in dataclasses.fields(Preset)] == list(SCHEMA)
    for spec in SCHEMA.values():
        if not spec.required:
            assert getattr(preset, spec.name) == spec.default


def test_int_accepted_for_float_and_normalised():
    preset = preset_from_dict({"name": "x", "strength": 1, "style": {"bell": 1}})
    assert isinstance(preset.strength, float) and preset.style == {"bell": 1.0}
    assert isinstance(preset.style["bell"], float)


def test_preset_is_frozen_and_validated_on_replace():
    preset = preset_from_dict({"name": "x"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset.mix = 0.1
    with pytest.raises(PresetError, match="'mix' = 2.0 is out of range"):
        dataclasses.replace(preset, mix=2.0)


def test_out_of_range_message(tmp_path):
    message = error_for(tmp_path, "strength = 1.7\n")
    assert message.endswith("field 'strength' = 1.7 is out of range [0.0, 1.0]")


@pytest.mark.parametrize(
    "body, words",
    [
        ("steps = 0\n", ["'steps' = 0", "[1, 50]"]),
        ("seed = -1\n", ["'seed'", "[0, 2147483647]"]),
        ("feedback = 0.96\n", ["'feedback'", "[0.0, 0.95]"]),
        ("delay_seconds = nan\n", ["'delay_seconds'", "[0.1, 1.5]"]),
        ("guidance = 0.5\n", ["'guidance' = 0.5", "[1.0, 8.0]"]),
        ("guidance = 8.5\n", ["'guidance' = 8.5", "[1.0, 8.0]"]),
    ],
)
def test_other_ranges(tmp_path, body, words):
    message = error_for(tmp_path, body)
    assert all(w in message for w in words)


@pytest.mark.parametrize(
    "body, words",
    [
        ('mix = "half"\n', ["'mix'", "type str", "a number in [0.0, 1.0]"]),
        ("mix = true\n", ["'mix'", "type bool"]),
        ("steps = 8.0\n", ["'steps'", "type float", "an integer in [1, 50]"]),
        ("steps = false\n", ["'steps'", "type bool"]),
        ("description = 3\n", ["'description'", "a string"]),
        ("prompt = 3\n", ["'prompt'", "a string"]),
        ('guidance = "strong"\n', ["'guidance'", "type str", "a number in [1.0, 8.0]"]),
        ("style = 3\n", ["'style'", "table of style tag"]),
        ('[style]\nbell = "loud"\n', ["'style.bell'", "type str", "[0.0, 1.0]"]),
    ],
)
def test_wrong_types(tmp_path, body, words):
    message = error_for(tmp_path, body)
    assert all(w in message for w in words), message


def test_unknown_field_suggests_and_lists(tmp_path):
    message = error_for(tmp_path, "strenght = 0.5\n")
    assert "unknown field 'strenght'" in message and "did you mean 'strength'" in message
    assert all(name in message for name in SCHEMA)


def test_unknown_sampler(tmp_path):
    message = error_for(tmp_path, 'sampler = "ping-pong"\n')
    assert "'sampler'" in message and "'euler', 'pingpong'" in message and "did you mean 'pingpong'" in message


def test_unknown_mode(tmp_path):
    message = error_for(tmp_path, 'mode = "jamm"\n')
    assert "'mode'" in message and "'delay', 'jam'" in message and "did you mean 'jam'" in message


def test_prompt_guidance_and_mode_defaults_and_new_presets():
    plain = preset_from_dict({"name": "x"})
    assert (plain.prompt, plain.guidance, plain.mode) == ("", 1.0, "delay")
    tape = load_preset("tape_echo")  # the plain preset: no prompt, no guidance
    assert (tape.prompt, tape.guidance, tape.mode) == ("", 1.0, "delay")
    for name in ("glass_bells", "hall_bells"):  # re-tuned after level following: guided, still no prompt
        p = load_preset(name)
        assert (p.prompt, p.mode) == ("", "delay") and p.guidance > 1.0
    jam, bells = load_preset("jam_drums"), load_preset("prompted_bells")
    assert jam.mode == "jam" and jam.prompt and jam.style == {"drums": 1.0}
    assert bells.mode == "delay" and bells.prompt and bells.guidance > 1.0


def test_unplayable_reason_names_the_field():
    from lmdm_engine.core.config import debug_config

    plain, full = debug_config(), debug_config(text_dim=384, text_encoder="all-MiniLM-L6-v2", accompaniment=True)
    jam = load_preset("jam_drums")
    assert "field 'prompt' = 'a tight drum groove' needs a text model" in unplayable_reason(jam.params, plain)
    no_prompt = dataclasses.replace(jam, prompt="")
    assert "field 'mode' = 'jam' needs a jamming model" in unplayable_reason(no_prompt.params, plain)
    assert unplayable_reason(jam.params, full) is None
    assert unplayable_reason(load_preset("tape_echo").params, plain) is None


def test_unknown_style_tag_lists_vocabulary(tmp_path):
    message = error_for(tmp_path, "[style]\nbells = 0.5\n")
    assert "unknown tag 'bells'" in message and "did you mean 'bell'" in message
    assert all(tag in message for tag in STYLE_VOCAB)


def test_style_weight_out_of_range(tmp_path):
    assert "field 'style.dark' = 1.5 is out of range [0.0, 1.0]" in error_for(tmp_path, "[style]\ndark = 1.5\n")


def test_name_must_match_file_stem(tmp_path):
    path = write(tmp_path, "bar", 'name = "foo"\n')
    with pytest.raises(PresetError, match="'name' = 'foo' must equal the file name 'bar'") as info:
        load_preset(path)
    assert str(path) in str(info.value)


def test_missing_name(tmp_path):
    path = write(tmp_path, "foo", "mix = 0.2\n")
    with pytest.raises(PresetError, match="missing required field 'name'"):
        load_preset(path)


def test_toml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "foo", 'name = "foo"\nmix = \n')
    with pytest.raises(PresetError, match="TOML syntax error") as info:
        load_preset(path)
    assert str(path) in str(info.value) and "line 2" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(PresetError, match="no such preset file"):
        load_preset(tmp_path / "nope.toml")


def test_unknown_shipped_name_lists_available():
    with pytest.raises(PresetError) as info:
        load_preset("tape_ech")
    message = str(info.value)
    assert "unknown preset 'tape_ech'" in message and "did you mean 'tape_echo'" in message
    assert all(name in message for name in shipped_presets())


def test_describe_schema_mentions_every_field_and_range():
    text = describe_schema()
    for spec in SCHEMA.values():
        assert spec.name in text and spec.allowed() in text


def test_chains_load_from_toml_and_round_trip(tmp_path):
    (tmp_path / "irs").mkdir()
    path = write(tmp_path, "chained", 'name = "chained"\n\n[[pre]]\nplugin = "Compressor"\nratio = 3\n\n'
                 '[[post]]\nplugin = "Convolution"\nimpulse_response_filename = "irs/room.wav"\nmix = 0.3\n\n'
                 '[[post]]\nplugin = "fx/Echo.vst3"\n"delay time" = 250\nbypass = false\nplugin_name = "Echo"\n')
    preset = load_preset(path)
    assert preset.pre == ({"plugin": "Compressor", "ratio": 3},)
    assert preset.post == (
        {"plugin": "Convolution", "impulse_response_filename": str(tmp_path / "irs/room.wav"), "mix": 0.3},
        {"plugin": str(tmp_path / "fx/Echo.vst3"), "delay time": 250, "bypass": False, "plugin_name": "Echo"},
    )
    assert load_preset(write(tmp_path / "irs", "chained", preset_to_toml(preset))) == preset
    assert preset_from_dict({"name": "x"}).pre == ()


def test_a_shipped_preset_uses_chains():
    assert any(p.pre or p.post for p in list_presets())


@pytest.mark.parametrize(
    "body, words",
    [
        ("pre = 3\n", ["field 'pre' = 3 must be a list of plugin tables", 'pre = [{plugin = "Reverb"']),
        ('[[post]]\nplugin = "Reverbb"\n', ["field 'post[0]'", "unknown plugin 'Reverbb'", "did you mean 'Reverb'"]),
        ('[[post]]\nplugin = "Gain"\n[[post]]\nplugin = "Reverb"\nroom = 1.0\n',
         ["field 'post[1]'", "Reverb has no parameter 'room'", "did you mean 'room_size'"]),
        ('[[pre]]\nplugin = "Gain"\ngain_db = "loud"\n', ["field 'pre[0]'", "'gain_db' = 'loud' must be a number"]),
        ('[[pre]]\nplugin = "PitchShift"\n', ["field 'pre[0]'", "PitchShift cannot be used in a streamed chain"]),
        ("[[pre]]\nratio = 3\n", ["field 'pre[0]'", "missing 'plugin'"]),
    ],
)
def test_chain_errors_name_file_field_and_plugin(tmp_path, body, words):
    message = error_for(tmp_path, body)
    assert all(w in message for w in words), message
