// The LMDM bridge plugin (DPF: VST3, CLAP, LV2): each instance streams its track through one session of
// `lmdm serve` (bridge/PROTOCOL.md) and plays the replies delayed by the latency it reports to the host.
// Threads: the host's audio thread (run: Stream), one network thread per instance (Link), the host's main thread
// (everything else here).
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "DistrhoPlugin.hpp"
#include "Link.hpp"
#include "Stream.hpp"

START_NAMESPACE_DISTRHO

using namespace lmdm;

namespace {

constexpr uint32_t kChannels = DISTRHO_PLUGIN_NUM_INPUTS;
constexpr const char* kStateHost = "server_host";
constexpr const char* kStatePort = "server_port";
constexpr const char* kDefaultHost = "127.0.0.1";
constexpr int kDefaultPort = 9000;

// A port from text: 1 to 65535, or 0 when it is not one.
int parsePort(const char* text) {
    if (text == nullptr || *text == '\0') return 0;
    char* end = nullptr;
    const long port = std::strtol(text, &end, 10);
    return (*end == '\0' && port >= 1 && port <= 65535) ? int(port) : 0;
}

bool validHost(const char* text) {
    const size_t n = text ? std::strlen(text) : 0;
    if (n == 0 || n > 253) return false;
    for (size_t i = 0; i < n; ++i)
        if (text[i] <= ' ' || text[i] > '~') return false;
    return true;
}

std::string envHost() {
    const char* host = std::getenv("LMDM_BRIDGE_HOST");
    return validHost(host) ? host : kDefaultHost;
}

int envPort() {
    const int port = parsePort(std::getenv("LMDM_BRIDGE_PORT"));
    return port ? port : kDefaultPort;
}

// A restricted choice list; DPF takes ownership of `values` (allocated with new[]).
void setEnumeration(Parameter& parameter, int count, ParameterEnumerationValue* values) {
    parameter.enumValues.count = uint8_t(count);
    parameter.enumValues.restrictedMode = true;
    parameter.enumValues.values = values;
}

void logLine(const std::string& line) {
    std::fprintf(stderr, "lmdm plugin: %s\n", line.c_str());
    std::fflush(stderr);
}

}  // namespace

class LmdmPlugin : public Plugin {
public:
    LmdmPlugin() : Plugin(kParamCount, kPresetCount, 2), stream_(shared_) {
        const Snapshot defaults = presetSnapshot(kDefaultPreset);
        for (uint32_t id = 0; id < kInputParamCount; ++id) shared_.params[id].store(defaults[id]);
        shared_.sampleRate.store(uint32_t(getSampleRate()));
        if (!isDummyInstance()) {
            link_ = std::make_unique<Link>(shared_, kChannels, envHost(), envPort());
            reportLatency();
        }
    }

protected:
    // ---- information ------------------------------------------------------------------------------------------
    const char* getLabel() const override { return kChannels == 1 ? "lmdm_mono" : "lmdm"; }
    const char* getDescription() const override {
        return "LMDM generative delay: streams the track through a session of lmdm serve (the OSC bridge) and "
               "plays its echo, with the latency reported to the host.";
    }
    const char* getMaker() const override { return "LMDM"; }
    const char* getLicense() const override { return "MIT"; }
    uint32_t getVersion() const override { return d_version(0, 1, 0); }
    int64_t getUniqueId() const override { return d_cconst('L', 'm', 'd', kChannels == 1 ? 'M' : 'S'); }

    // ---- init -------------------------------------------------------------------------------------------------
    void initParameter(uint32_t index, Parameter& parameter) override {
        const ParamSpec& spec = kParamSpecs[index];
        parameter.name = spec.name;
        parameter.symbol = spec.symbol;
        parameter.unit = spec.unit;
        parameter.ranges.min = spec.min;
        parameter.ranges.max = spec.max;
        parameter.ranges.def = index < kInputParamCount ? presetSnapshot(kDefaultPreset)[index] : 0.0f;
        parameter.hints = kParameterIsAutomatable | (spec.integer ? kParameterIsInteger : 0);
        if (index == kPreset) {
            auto* values = new ParameterEnumerationValue[kPresetCount];
            for (int i = 0; i < kPresetCount; ++i) values[i] = ParameterEnumerationValue(float(i), kPresets[i].name);
            setEnumeration(parameter, kPresetCount, values);
        } else if (index == kMode) {
            auto* values = new ParameterEnumerationValue[2];
            values[0] = ParameterEnumerationValue(float(kModeDelay), "echo");
            values[1] = ParameterEnumerationValue(float(kModeJam), "jam");
            setEnumeration(parameter, 2, values);
        } else if (index == kConnected) {
            parameter.hints = kParameterIsOutput | kParameterIsBoolean | kParameterIsInteger;
        }
    }

    // One program per shipped preset: it sets the preset and every parameter to the preset's values.
    void initProgramName(uint32_t index, String& name) override { name = kPresets[index].name; }

    void loadProgram(uint32_t index) override {
        if (index >= uint32_t(kPresetCount)) return;
        const Snapshot values = presetSnapshot(int(index));
        for (uint32_t id = 0; id < kInputParamCount; ++id) shared_.params[id].store(values[id]);
    }

    void initState(uint32_t index, State& state) override {
        state.hints = kStateIsOnlyForDSP;
        if (index == 0) {
            state.key = kStateHost;
            state.defaultValue = envHost().c_str();
            state.label = "Server host";
        } else {
            state.key = kStatePort;
            state.defaultValue = std::to_string(envPort()).c_str();
            state.label = "Server port";
        }
    }

    // ---- values -----------------------------------------------------------------------------------------------
    float getParameterValue(uint32_t index) const override {
        return index < kInputParamCount ? shared_.params[index].load() : connected_.load(std::memory_order_relaxed);
    }

    void setParameterValue(uint32_t index, float value) override {
        if (index >= kInputParamCount) return;
        shared_.params[index].store(canonical(index, value, shared_.params[index].load()));
    }

    String getState(const char* key) const override {
        if (link_ == nullptr) return String();
        if (std::strcmp(key, kStateHost) == 0) return String(link_->host().c_str());
        if (std::strcmp(key, kStatePort) == 0) return String(std::to_string(link_->port()).c_str());
        return String();
    }

    void setState(const char* key, const char* value) override {
        // empty: "not saved" (DPF's LV2 presets carry the state of the instance that wrote them, which has none)
        if (link_ == nullptr || value == nullptr || *value == '\0') return;
        if (std::strcmp(key, kStateHost) == 0) {
            if (validHost(value)) {
                link_->setServer(value, link_->port());
            } else {
                logLine(std::string("state ") + kStateHost + " = '" + value + "' is not a host name or address; "
                        "keeping " + link_->host());
            }
        } else if (std::strcmp(key, kStatePort) == 0) {
            const int port = parsePort(value);
            if (port) {
                link_->setServer(link_->host(), port);
            } else {
                logLine(std::string("state ") + kStatePort + " = '" + value + "' is not a port (1 to 65535); keeping " +
                        std::to_string(link_->port()));
            }
        }
    }

    // ---- processing -------------------------------------------------------------------------------------------
    void activate() override {
        if (link_ == nullptr) return;
        const uint32_t rate = uint32_t(getSampleRate());
        shared_.sampleRate.store(rate);
        const std::shared_ptr<StreamBuffers> buffers = buffersFor(rate);
        const uint32_t epoch = shared_.epoch.load() + 1;
        stream_.prepare(buffers, getBufferSize(), epoch);
        shared_.epoch.store(epoch);  // the network thread opens a session for this stream
        setLatency(stream_.latency());
    }

    void run(const float** inputs, float** outputs, uint32_t frames) override {
        if (!stream_.prepared()) {  // no network thread (an instance for the host's metadata): silence
            for (uint32_t c = 0; c < kChannels; ++c) std::memset(outputs[c], 0, frames * sizeof(float));
            return;
        }
        stream_.process(inputs, outputs, frames);
        if (stream_.latency() != getLatencyInUse()) setLatency(stream_.latency());
        const bool open = shared_.linkState.load(std::memory_order_relaxed) == kLinkOpen &&
                          shared_.linkEpoch.load(std::memory_order_relaxed) == shared_.epoch.load();
        connected_.store(open ? 1.0f : 0.0f, std::memory_order_relaxed);
    }

    void sampleRateChanged(double rate) override {
        shared_.sampleRate.store(uint32_t(rate));
        if (link_ != nullptr) reportLatency();
    }

    void bufferSizeChanged(uint32_t) override {
        if (link_ != nullptr) reportLatency();
    }

private:
    // The send ring and reply slots for a rate: the ones in use, or new ones (the network thread keeps the old ones
    // for as long as it holds them). Enough blocks for the latency, a processed piece and the network's slack.
    std::shared_ptr<StreamBuffers> buffersFor(uint32_t rate) {
        std::lock_guard<std::mutex> lock(shared_.buffersMutex);
        if (!shared_.buffers || shared_.buffers->rate != rate) {
            const uint32_t block = blockFramesFor(rate);
            const uint64_t frames = Stream::latencyFor(block, kMaxHostBuffer) + kChunkFrames;
            uint32_t slots = 8;
            while (slots < frames / block + 8) slots <<= 1;
            shared_.buffers = std::make_shared<StreamBuffers>(rate, kChannels, block, slots);
        }
        return shared_.buffers;
    }

    // Set-up (not the audio thread): the latency for the current rate and host buffer. It needs no server (the
    // plugin reports its own buffering only), so a plugin scan or a new project never waits for one.
    void reportLatency() { setLatency(Stream::latencyFor(blockFramesFor(shared_.sampleRate.load()), getBufferSize())); }

    uint32_t getLatencyInUse() const { return latencyInUse_; }
    void setLatency(uint32_t frames) {
        latencyInUse_ = frames;
        Plugin::setLatency(frames);
    }

    Shared shared_;
    Stream stream_;
    std::atomic<float> connected_{0.0f};  // written by run, read by the host from any thread
    uint32_t latencyInUse_ = 0;
    std::unique_ptr<Link> link_;  // declared last: its thread stops first

    DISTRHO_DECLARE_NON_COPYABLE_WITH_LEAK_DETECTOR(LmdmPlugin)
};

Plugin* createPlugin() { return new LmdmPlugin(); }

END_NAMESPACE_DISTRHO
