// The plugin's parameters: the live parameters of bridge/PROTOCOL.md a DAW automates, the preset, and the read-only
// "connected" flag. Their values travel from the host to the network thread as one Snapshot per audio block.
#pragma once

#include <cmath>
#include <cstdint>

#include "presets.gen.hpp"

namespace lmdm {

enum ParamId : uint32_t {
    kMix,
    kStrength,
    kFeedback,
    kSteps,
    kSeed,
    kDelay,
    kPreset,
    kMode,
    kConnected,  // output: 1 while a session on the server answers
    kParamCount
};
constexpr uint32_t kInputParamCount = kConnected;

enum Mode : int { kModeDelay = 0, kModeJam = 1 };  // shown as "echo" and "jam"; protocol values "delay", "jam"
inline const char* modeValue(int mode) { return mode == kModeJam ? "jam" : "delay"; }

struct ParamSpec {
    const char* name;
    const char* symbol;  // LV2 port symbol and state key; the protocol's key where there is one
    const char* unit;
    float min, max;
    bool integer;
};

inline constexpr ParamSpec kParamSpecs[kParamCount] = {
    {"Mix", "mix", "", 0.0f, 1.0f, false},
    {"Strength", "strength", "", 0.0f, 1.0f, false},
    {"Feedback", "feedback", "", 0.0f, 0.95f, false},
    {"Steps", "steps", "", 1.0f, 50.0f, true},
    {"Seed", "seed", "", 0.0f, 65535.0f, true},
    {"Delay", "delay_seconds", "s", 0.1f, 1.5f, false},
    {"Preset", "preset", "", 0.0f, float(kPresetCount - 1), true},
    {"Mode", "mode", "", 0.0f, 1.0f, true},
    {"Connected", "connected", "", 0.0f, 1.0f, true},
};

// A value as the plugin keeps it: inside the range, whole for integer parameters. NaN keeps `previous`.
inline float canonical(uint32_t id, float value, float previous) {
    if (!(value == value)) {
        return previous;
    }
    const ParamSpec& p = kParamSpecs[id];
    value = value < p.min ? p.min : (value > p.max ? p.max : value);
    return p.integer ? std::round(value) : value;
}

// The values of a preset, for the parameters that have one (the preset and the connected flag have none).
inline float presetValue(const PresetValues& preset, uint32_t id) {
    switch (id) {
    case kMix: return preset.mix;
    case kStrength: return preset.strength;
    case kFeedback: return preset.feedback;
    case kSteps: return float(preset.steps);
    case kSeed: return float(preset.seed);
    case kDelay: return preset.delay_seconds;
    case kMode: return float(preset.mode);
    default: return 0.0f;
    }
}

// The input parameters' values at the start of one audio block.
struct Snapshot {
    float values[kInputParamCount] = {};
    bool operator==(const Snapshot& other) const {
        for (uint32_t i = 0; i < kInputParamCount; ++i) {
            if (values[i] != other.values[i]) return false;
        }
        return true;
    }
    bool operator!=(const Snapshot& other) const { return !(*this == other); }
    float operator[](uint32_t id) const { return values[id]; }
    int preset() const { return int(values[kPreset]); }
};

inline Snapshot presetSnapshot(int index) {
    Snapshot s;
    for (uint32_t id = 0; id < kInputParamCount; ++id) {
        s.values[id] = presetValue(kPresets[index], id);
    }
    s.values[kPreset] = float(index);
    return s;
}

}  // namespace lmdm
