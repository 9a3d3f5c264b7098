// A small CLAP host for the tests and the benchmark, built from the CLAP headers DPF ships. It loads one plugin,
// sets parameters (by name) and state, runs raw audio through it in host buffers of the given sizes (cycling, so a
// test can vary them call by call; the largest is what the host declares at activate), and prints what a DAW
// would see:
//
//   clap_host PLUGIN.clap --rate 48000 --channels 2 --in IN.f32 --out OUT.f32 [--buffers 512[,64,...]]
//             [--param Name=value]... [--load-state FILE] [--save-state FILE] [--realtime] [--timings FILE]
//             [--repeat N]
//
// IN.f32 and OUT.f32: float32 interleaved frames. --realtime paces the calls at the audio's own speed (a live
// host, with a real-time priority for its audio thread when the system grants one: "rt_priority 1"); otherwise
// they run back to back (an offline render). --timings writes each process call's seconds (float64).
// Output lines: "latency N" after activate and "latency_end N" at the end, "connected V" (the output parameter).
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "clap/entry.h"
#include "clap/ext/latency.h"
#include "clap/ext/params.h"
#include "clap/ext/state.h"
#include "clap/ext/thread-check.h"
#include "clap/plugin-factory.h"

namespace {

std::thread::id gMainThread;
bool gCallbackRequested = false;
bool gRestartRequested = false;

[[noreturn]] void fail(const std::string& message) {
    std::fprintf(stderr, "clap_host: %s\n", message.c_str());
    std::exit(2);
}

bool isMain(const clap_host_t*) { return std::this_thread::get_id() == gMainThread; }
bool isAudio(const clap_host_t*) { return std::this_thread::get_id() != gMainThread; }
const clap_host_thread_check_t kThreadCheck = {isMain, isAudio};
void latencyChanged(const clap_host_t*) {}
const clap_host_latency_t kLatency = {latencyChanged};
void paramsRescan(const clap_host_t*, clap_param_rescan_flags) {}
void paramsClear(const clap_host_t*, clap_id, clap_param_clear_flags) {}
void paramsFlush(const clap_host_t*) {}
const clap_host_params_t kParams = {paramsRescan, paramsClear, paramsFlush};

const void* hostExtension(const clap_host_t*, const char* id) {
    if (std::strcmp(id, CLAP_EXT_THREAD_CHECK) == 0) return &kThreadCheck;
    if (std::strcmp(id, CLAP_EXT_LATENCY) == 0) return &kLatency;
    if (std::strcmp(id, CLAP_EXT_PARAMS) == 0) return &kParams;
    return nullptr;
}
void requestRestart(const clap_host_t*) { gRestartRequested = true; }
void requestProcess(const clap_host_t*) {}
void requestCallback(const clap_host_t*) { gCallbackRequested = true; }

const clap_host_t kHost = {CLAP_VERSION, nullptr, "lmdm clap_host", "LMDM", "", "1",
                           hostExtension, requestRestart, requestProcess, requestCallback};

// input events: parameter values, all at frame 0 of the call they go with
struct Events {
    std::vector<clap_event_param_value_t> values;
    static uint32_t size(const clap_input_events_t* list) {
        return uint32_t(static_cast<const Events*>(list->ctx)->values.size());
    }
    static const clap_event_header_t* get(const clap_input_events_t* list, uint32_t i) {
        return &static_cast<const Events*>(list->ctx)->values[i].header;
    }
};

// output events: the last value of each output parameter
struct OutEvents {
    std::vector<double> last;
    static bool push(const clap_output_events_t* list, const clap_event_header_t* event) {
        auto* self = static_cast<OutEvents*>(list->ctx);
        if (event->type == CLAP_EVENT_PARAM_VALUE) {
            const auto* v = reinterpret_cast<const clap_event_param_value_t*>(event);
            if (v->param_id >= self->last.size()) self->last.resize(v->param_id + 1, 0.0);
            self->last[v->param_id] = v->value;
        }
        return true;
    }
};

struct Buffer {
    std::vector<uint8_t> bytes;
    size_t at = 0;
    static int64_t write(const clap_ostream_t* s, const void* data, uint64_t size) {
        auto* b = static_cast<Buffer*>(s->ctx);
        const auto* p = static_cast<const uint8_t*>(data);
        b->bytes.insert(b->bytes.end(), p, p + size);
        return int64_t(size);
    }
    static int64_t read(const clap_istream_t* s, void* data, uint64_t size) {
        auto* b = static_cast<Buffer*>(s->ctx);
        const size_t n = std::min<size_t>(size, b->bytes.size() - b->at);
        std::memcpy(data, b->bytes.data() + b->at, n);
        b->at += n;
        return int64_t(n);
    }
};

std::vector<uint8_t> readFile(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail("cannot read " + path);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

void writeFile(const std::string& path, const void* data, size_t size) {
    std::ofstream f(path, std::ios::binary);
    f.write(static_cast<const char*>(data), std::streamsize(size));
    if (!f) fail("cannot write " + path);
}

}  // namespace

int main(int argc, char** argv) {
    gMainThread = std::this_thread::get_id();
    if (argc < 2) fail("usage: clap_host PLUGIN.clap --rate R --channels C --in IN.f32 --out OUT.f32 ...");
    const std::string path = argv[1];
    double rate = 48000;
    uint32_t channels = 2;
    std::string in, out, loadState, saveState, timingsPath;
    std::vector<uint32_t> sizes = {512};
    std::vector<std::pair<std::string, double>> params;
    bool realtime = false;
    int repeat = 1;
    for (int i = 2; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) fail(a + " needs a value");
            return argv[++i];
        };
        if (a == "--rate") rate = std::atof(value().c_str());
        else if (a == "--channels") channels = uint32_t(std::atoi(value().c_str()));
        else if (a == "--in") in = value();
        else if (a == "--out") out = value();
        else if (a == "--load-state") loadState = value();
        else if (a == "--save-state") saveState = value();
        else if (a == "--timings") timingsPath = value();
        else if (a == "--realtime") realtime = true;
        else if (a == "--repeat") repeat = std::atoi(value().c_str());
        else if (a == "--buffers") {
            sizes.clear();
            std::string list = value();
            for (size_t p = 0; p <= list.size();) {
                const size_t q = std::min(list.find(',', p), list.size());
                const int n = std::atoi(list.substr(p, q - p).c_str());
                if (n < 1 || n > 8192) fail("--buffers: " + list.substr(p, q - p) + " is not 1 to 8192 frames");
                sizes.push_back(uint32_t(n));
                p = q + 1;
            }
        } else if (a == "--param") {
            const std::string kv = value();
            const size_t eq = kv.find('=');
            if (eq == std::string::npos) fail("--param " + kv + ": expected Name=value");
            params.emplace_back(kv.substr(0, eq), std::atof(kv.c_str() + eq + 1));
        } else {
            fail("unknown option " + a);
        }
    }
    if (in.empty() || out.empty()) fail("--in and --out are required");

    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) fail(std::string("cannot load ") + path + ": " + dlerror());
    const auto* entry = static_cast<const clap_plugin_entry_t*>(dlsym(lib, "clap_entry"));
    if (entry == nullptr || !entry->init(path.c_str())) fail(path + " has no usable clap_entry");
    const auto* factory = static_cast<const clap_plugin_factory_t*>(entry->get_factory(CLAP_PLUGIN_FACTORY_ID));
    if (factory == nullptr || factory->get_plugin_count(factory) < 1) fail(path + " has no plugins");
    const clap_plugin_descriptor_t* desc = factory->get_plugin_descriptor(factory, 0);
    const clap_plugin_t* plugin = factory->create_plugin(factory, &kHost, desc->id);
    if (plugin == nullptr || !plugin->init(plugin)) fail("cannot create " + std::string(desc->id));
    const auto* pext = static_cast<const clap_plugin_params_t*>(plugin->get_extension(plugin, CLAP_EXT_PARAMS));
    const auto* lext = static_cast<const clap_plugin_latency_t*>(plugin->get_extension(plugin, CLAP_EXT_LATENCY));
    const auto* sext = static_cast<const clap_plugin_state_t*>(plugin->get_extension(plugin, CLAP_EXT_STATE));
    if (pext == nullptr || lext == nullptr || sext == nullptr) fail("the plugin lacks params, latency or state");

    if (!loadState.empty()) {
        Buffer b{readFile(loadState)};
        const clap_istream_t stream = {&b, Buffer::read};
        if (!sext->load(plugin, &stream)) fail("the plugin refused the state in " + loadState);
    }
    // parameters before activate (flush), so that the latency the host reads follows them
    Events events;
    uint32_t connectedId = UINT32_MAX;
    for (uint32_t i = 0; i < pext->count(plugin); ++i) {
        clap_param_info_t info;
        pext->get_info(plugin, i, &info);
        if (std::strcmp(info.name, "Connected") == 0) connectedId = info.id;
        for (const auto& p : params) {
            if (p.first != info.name) continue;
            clap_event_param_value_t e{};
            e.header = {sizeof(e), 0, CLAP_CORE_EVENT_SPACE_ID, CLAP_EVENT_PARAM_VALUE, 0};
            e.param_id = info.id;
            e.value = p.second;
            e.note_id = e.port_index = e.channel = e.key = -1;
            events.values.push_back(e);
        }
    }
    if (events.values.size() != params.size()) fail("a --param names no parameter of the plugin");
    const clap_input_events_t inEvents = {&events, Events::size, Events::get};
    OutEvents outState;
    const clap_output_events_t outEvents = {&outState, OutEvents::push};
    pext->flush(plugin, &inEvents, &outEvents);

    std::vector<uint8_t> raw = readFile(in);
    const size_t frames = raw.size() / (sizeof(float) * channels);
    const float* input = reinterpret_cast<const float*>(raw.data());
    std::vector<float> output(frames * channels);
    std::vector<double> timings;
    bool rtPriority = false;

    uint32_t maxFrames = 1;  // what the host declares: its largest buffer
    for (uint32_t n : sizes) maxFrames = std::max(maxFrames, n);
    if (!plugin->activate(plugin, rate, 1, maxFrames)) fail("activate failed");
    std::printf("latency %u\n", lext->get(plugin));
    std::fflush(stdout);
    bool ok = true;
    std::thread audio([&] {  // the audio thread, as in a DAW
        if (realtime) {
            sched_param param{};
            param.sched_priority = 70;
            rtPriority = pthread_setschedparam(pthread_self(), SCHED_FIFO, &param) == 0;
        }
        if (!plugin->start_processing(plugin)) {
            ok = false;
            return;
        }
        std::vector<std::vector<float>> inBufs(channels, std::vector<float>(8192)), outBufs = inBufs;
        std::vector<float*> inPtrs(channels), outPtrs(channels);
        for (uint32_t c = 0; c < channels; ++c) {
            inPtrs[c] = inBufs[c].data();
            outPtrs[c] = outBufs[c].data();
        }
        Events none;
        const clap_input_events_t noEvents = {&none, Events::size, Events::get};
        const auto start = std::chrono::steady_clock::now();
        size_t done = 0, call = 0;
        for (int r = 0; r < repeat; ++r) {
            for (size_t pos = 0; pos < frames; ++call) {
                const uint32_t n = uint32_t(std::min<size_t>(sizes[call % sizes.size()], frames - pos));
                for (uint32_t i = 0; i < n; ++i)
                    for (uint32_t c = 0; c < channels; ++c) inBufs[c][i] = input[(pos + i) * channels + c];
                clap_audio_buffer_t ain{inPtrs.data(), nullptr, channels, 0, 0};
                clap_audio_buffer_t aout{outPtrs.data(), nullptr, channels, 0, 0};
                clap_process_t proc{};
                proc.steady_time = int64_t(done);
                proc.frames_count = n;
                proc.audio_inputs = &ain;
                proc.audio_outputs = &aout;
                proc.audio_inputs_count = proc.audio_outputs_count = 1;
                proc.in_events = &noEvents;
                proc.out_events = &outEvents;
                if (realtime) std::this_thread::sleep_until(start + std::chrono::duration<double>(done / rate));
                const auto t0 = std::chrono::steady_clock::now();
                if (plugin->process(plugin, &proc) == CLAP_PROCESS_ERROR) ok = false;
                timings.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
                if (r == repeat - 1)
                    for (uint32_t i = 0; i < n; ++i)
                        for (uint32_t c = 0; c < channels; ++c) output[(pos + i) * channels + c] = outBufs[c][i];
                pos += n;
                done += n;
            }
        }
        plugin->stop_processing(plugin);
    });
    audio.join();
    if (!ok) fail("process failed");
    plugin->deactivate(plugin);
    if (gCallbackRequested) plugin->on_main_thread(plugin);
    std::printf("latency_end %u\n", lext->get(plugin));
    if (connectedId != UINT32_MAX) {
        std::printf("connected %g\n", connectedId < outState.last.size() ? outState.last[connectedId] : 0.0);
    }
    writeFile(out, output.data(), output.size() * sizeof(float));
    if (!timingsPath.empty()) writeFile(timingsPath, timings.data(), timings.size() * sizeof(double));
    std::printf("rt_priority %d\n", int(rtPriority));
    if (!saveState.empty()) {
        Buffer b;
        const clap_ostream_t stream = {&b, Buffer::write};
        if (!sext->save(plugin, &stream)) fail("the plugin did not save its state");
        writeFile(saveState, b.bytes.data(), b.bytes.size());
    }
    plugin->destroy(plugin);
    entry->deinit();
    dlclose(lib);
    std::printf("restart_requested %d\n", int(gRestartRequested));
    return 0;
}
