#include "Link.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace lmdm {
namespace {

constexpr auto kRetryEvery = std::chrono::seconds(1);      // reconnect attempts
constexpr auto kConnectTimeout = std::chrono::milliseconds(500);
constexpr auto kOpenTimeout = std::chrono::seconds(10);    // a session the server has not opened by then is retried
constexpr auto kReopenAfterFailure = std::chrono::seconds(5);
constexpr auto kReportEvery = std::chrono::seconds(5);
constexpr int64_t kOfflineWindow = 8;   // blocks in flight in an offline render (the server queues 16 at most)
constexpr size_t kMaxUnsent = 4u << 20;  // bytes waiting for the socket before blocks wait in the ring
constexpr size_t kMaxSessions = 4;      // the current one and those closing (their last replies still count)
constexpr int32_t kErrorEngine = 13;    // an engine_error still comes with the block's (dry) reply

std::atomic<uint64_t> gInstances{0};

std::string instanceName() {
    return "lmdm-" + std::to_string(getpid()) + "-" + std::to_string(gInstances.fetch_add(1) + 1);
}

std::string str(std::string_view v) { return std::string(v); }

bool isString(const osc::Decoded& m, size_t i) { return m.args.size() > i && m.args[i].isString(); }
bool isInt(const osc::Decoded& m, size_t i) { return m.args.size() > i && m.args[i].isInt(); }

// The integer under `key` in a reply's (key, value) pairs from argument `first` on, or -1.
int64_t intFor(const osc::Decoded& m, size_t first, std::string_view key) {
    for (size_t i = first; i + 1 < m.args.size(); i += 2)
        if (m.args[i].isString() && m.args[i].bytes == key) return m.args[i + 1].isInt() ? m.args[i + 1].integer : -1;
    return -1;
}

void addParams(osc::Message& m, const Snapshot& p) {
    m.s("mix").f(p[kMix]).s("strength").f(p[kStrength]).s("feedback").f(p[kFeedback]);
    m.s("steps").i(int32_t(p[kSteps])).s("seed").i(int32_t(p[kSeed])).s("delay_seconds").f(p[kDelay]);
    m.s("mode").s(modeValue(int(p[kMode])));
}

}  // namespace

Link::Link(Shared& shared, uint32_t channels, std::string host, int port)
    : shared_(shared), channels_(channels), name_(instanceName()),
      token_(std::getenv("LMDM_BRIDGE_TOKEN") ? std::getenv("LMDM_BRIDGE_TOKEN") : ""), host_(std::move(host)),
      port_(port), thread_(&Link::run, this) {}

Link::~Link() {
    stop_.store(true);
    thread_.join();
}

void Link::setServer(const std::string& host, int port) {
    {
        std::lock_guard<std::mutex> lock(serverMutex_);
        if (host == host_ && port == port_) return;
        host_ = host;
        port_ = port;
    }
    shared_.serverGeneration.fetch_add(1);
}

std::string Link::host() const {
    std::lock_guard<std::mutex> lock(serverMutex_);
    return host_;
}

int Link::port() const {
    std::lock_guard<std::mutex> lock(serverMutex_);
    return port_;
}

void Link::log(const std::string& line) const {
    std::fprintf(stderr, "lmdm plugin %s: %s\n", name_.c_str(), line.c_str());
    std::fflush(stderr);
}

std::shared_ptr<StreamBuffers> Link::buffers() {
    std::lock_guard<std::mutex> lock(shared_.buffersMutex);
    return shared_.buffers;
}

Link::Session* Link::find(std::string_view id) {
    for (Session& s : sessions_)
        if (s.id == id) return &s;
    return nullptr;
}

Link::Session* Link::current() {
    return sessions_.empty() || sessions_.back().key == 0 ? nullptr : &sessions_.back();
}

// ---- the loop ----------------------------------------------------------------------------------------------------
void Link::run() {
    while (!stop_.load()) tick(Clock::now());
    if (conn_) {  // say goodbye: the session closes now rather than when the server sees the connection go
        report(Clock::now(), true);
        closeCurrent();
        const auto until = Clock::now() + std::chrono::milliseconds(200);
        bool readable;
        std::string error;
        while (conn_->unsent() && Clock::now() < until && flush() && conn_->wait(10, readable, error)) {
        }
        disconnect("");
    }
}

void Link::tick(Clock::time_point now) {
    follow(now);
    std::shared_ptr<StreamBuffers> buf = buffers();
    if (!conn_) {
        if (now >= nextConnect_) connect(now);
        if (!conn_) {
            if (buf) pump(*buf);  // no session: every block is skipped (played dry)
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
            return;
        }
    }
    if (current() == nullptr && now >= retryOpen_ && shared_.sampleRate.load() > 0) {
        open(shared_.snapshot(), now);
    }
    bool readable = false;
    std::string error;
    if (!conn_->wait(1, readable, error)) {
        disconnect(error);
        return;
    }
    if (readable && !readAvailable()) return;
    if (buf) pump(*buf);
    if (!flush()) return;
    Session* s = current();
    if (s != nullptr && !s->open && now - s->openedAt > kOpenTimeout) {
        log("the server did not open session " + s->id + " within 10 s; trying again");
        shared_.failedKey.store(s->key);
        closeCurrent();
        shared_.linkState.store(kLinkDown);
        retryOpen_ = now + kReopenAfterFailure;
    }
    report(now);
}

// The stream, its rate and the server address, as the main thread set them.
void Link::follow(Clock::time_point now) {
    const uint32_t generation = shared_.serverGeneration.load();
    if (generation != serverGeneration_) {
        // the old address's connection goes (marked away for the old generation, which no longer counts)
        if (conn_) disconnect("the server address changed to " + host() + ":" + std::to_string(port()));
        serverGeneration_ = generation;
        lastConnectError_.clear();
        nextConnect_ = now;
    }
    const uint32_t epoch = epoch_ = shared_.epoch.load();
    const uint32_t rate = shared_.sampleRate.load();
    const uint64_t wanted = configKey(rate, shared_.params[kDelay].load());
    if (wanted != lastWanted_) {  // a new rate or delay: ask now, even if the last one was refused
        lastWanted_ = wanted;
        retryOpen_ = now;
    }
    Session* s = current();
    if (s != nullptr && (s->epoch != epoch || (s->firstBlock < 0 && s->key != wanted))) {
        if (s->firstBlock < 0 && s->rate == rate && s->key == wanted) {  // untouched: it serves the new stream
            s->epoch = epoch;
            shared_.linkEpoch.store(epoch);
        } else {
            closeCurrent();
        }
    }
}

// ---- the connection ----------------------------------------------------------------------------------------------
void Link::connect(Clock::time_point now) {
    nextConnect_ = now + kRetryEvery;
    const std::string where = host() + ":" + std::to_string(port());
    std::string error;
    conn_ = Connection::open(host(), port(), kConnectTimeout, error);
    if (conn_) {
        shared_.awayGeneration.store(kNotAway);
        loggedLatency_ = -1;
        lastConnectError_.clear();
        retryOpen_ = now;
        log("connected to lmdm serve at " + where);
        return;
    }
    if (error != lastConnectError_) {
        log("no lmdm serve at " + where + " (" + error + "): playing the input dry, delayed by the latency; "
            "trying again every second");
        lastConnectError_ = error;
    }
    shared_.awayGeneration.store(serverGeneration_);  // for the address tried: a newer one is still to be tried
}

void Link::disconnect(const std::string& why) {
    conn_.reset();
    shared_.awayGeneration.store(serverGeneration_);
    std::shared_ptr<StreamBuffers> buf = buffers();
    for (const Session& s : sessions_) {  // what was in flight will not be answered
        if (s.firstBlock >= 0) skip(buf.get(), s.epoch, s.firstBlock + s.answered, s.firstBlock + s.sent);
    }
    sessions_.clear();
    shared_.linkState.store(kLinkDown);
    nextConnect_ = Clock::now() + kRetryEvery;
    if (!why.empty()) log("lost lmdm serve (" + why + "): playing the input dry; reconnecting");
}

void Link::send(const osc::Message& message) {
    if (conn_) conn_->send(message);
}

bool Link::flush() {
    std::string error;
    if (conn_ && !conn_->flush(error)) disconnect(error);
    return conn_ != nullptr;
}

bool Link::readAvailable() {
    std::string error;
    if (conn_->read([this](const osc::Decoded& m) { handle(m); }, [this](const std::string& e) { log(e); }, error)) {
        return true;
    }
    disconnect(error);
    return false;
}

// ---- sessions ----------------------------------------------------------------------------------------------------
void Link::open(const Snapshot& params, Clock::time_point now) {
    Session s;
    s.id = name_ + "-" + std::to_string(++sessionCounter_);
    s.epoch = epoch_;
    s.rate = shared_.sampleRate.load();
    s.key = configKey(s.rate, params[kDelay]);
    s.params = params;
    s.openedAt = now;
    osc::Message m("/lmdm/open");  // buffer_frames: the plugin's block, every /lmdm/audio is one
    m.s(s.id).i(int32_t(s.rate)).i(int32_t(channels_)).i(int32_t(blockFramesFor(s.rate)));
    m.s(kPresets[params.preset()].name).s("deadline_ms").f(0.0f);  // lateness is judged here, block by block
    addParams(m, params);
    if (!token_.empty()) m.s("token").s(token_);
    send(m);
    sessions_.push_back(s);
    while (sessions_.size() > kMaxSessions) {
        const Session& old = sessions_.front();
        if (old.firstBlock >= 0) skip(buffers().get(), old.epoch, old.firstBlock + old.answered,
                                      old.firstBlock + old.sent);
        sessions_.pop_front();
    }
    shared_.linkEpoch.store(s.epoch);
    shared_.linkState.store(kLinkOpening);
}

// The current session ends (its queued blocks are still answered); the next tick opens another.
void Link::closeCurrent() {
    Session* s = current();
    if (s == nullptr) return;
    if (s->open) send(osc::Message("/lmdm/close").s(s->id));  // else: when its open reply comes
    s->key = 0;  // closing (the caller says what the link is now)
}

void Link::skip(StreamBuffers* buf, uint32_t epoch, int64_t first, int64_t end) {
    if (buf == nullptr) return;
    const uint64_t play = shared_.playTag.load(std::memory_order_acquire);
    if ((play >> 40) != (epoch & 0xFFFFFF)) return;
    const int64_t playing = int64_t(play & ((uint64_t(1) << 40) - 1));
    for (int64_t k = std::max(first, playing); k < end && k < playing + int64_t(buf->slots); ++k) {
        buf->tag(buf->replySlot(k)).store(blockTag(epoch, k) | kSkipped, std::memory_order_release);
    }
}

// Parameter changes for the next block: false when they need a new session (a new delay changes the latency).
bool Link::sendParams(Session& s, const Snapshot& wanted) {
    if (wanted[kDelay] != s.params[kDelay]) return false;
    if (wanted.preset() != s.params.preset()) {
        send(osc::Message("/lmdm/preset").s(s.id).s(kPresets[wanted.preset()].name));
        osc::Message all("/lmdm/param");  // the plugin's parameters stay as they are over the preset's
        all.s(s.id);
        addParams(all, wanted);
        send(all);
    } else {
        osc::Message changes("/lmdm/param");
        changes.s(s.id);
        const char* floats[] = {"mix", "strength", "feedback"};
        for (uint32_t id : {kMix, kStrength, kFeedback})
            if (wanted[id] != s.params[id]) changes.s(floats[id]).f(wanted[id]);
        if (wanted[kSteps] != s.params[kSteps]) changes.s("steps").i(int32_t(wanted[kSteps]));
        if (wanted[kSeed] != s.params[kSeed]) changes.s("seed").i(int32_t(wanted[kSeed]));
        if (wanted[kMode] != s.params[kMode]) changes.s("mode").s(modeValue(int(wanted[kMode])));
        send(changes);
    }
    s.params = wanted;
    return true;
}

// Blocks from the send ring to the server, in order, with parameter changes between them.
void Link::pump(StreamBuffers& buf) {
    const uint32_t epoch = epoch_;  // the stream follow() has seen; blocks of a newer one wait for it
    const bool offline = shared_.offline.load(std::memory_order_relaxed);
    uint32_t slot;
    while (buf.ring.readable(slot)) {
        const BlockHeader& h = buf.header(slot);
        if (h.epoch != epoch) {
            if (int32_t(h.epoch - epoch) > 0) return;  // a stream follow() has not taken over yet
            buf.ring.consume();                         // a stream that has ended
            continue;
        }
        // a block the audio thread pushed after a new server address was set: the next tick tries that address
        if (!conn_ && shared_.serverGeneration.load() != serverGeneration_) return;
        Session* s = current();
        if (!conn_ || (s == nullptr && Clock::now() < retryOpen_)) {
            skip(&buf, epoch, h.index, h.index + 1);  // no session for it (nor one soon): it plays dry
            buf.ring.consume();
            continue;
        }
        if (s == nullptr || s->epoch != epoch || !s->open) return;  // one is coming: the blocks wait for it
        const bool gap = s->firstBlock >= 0 && h.index != s->firstBlock + s->sent;
        if (gap || (s->firstBlock < 0 && h.params != s->params) || (s->firstBlock >= 0 && h.params != s->params &&
                                                                    !sendParams(*s, h.params))) {
            // a gap (blocks dropped), or a change that needs a fresh session: this block starts the next one
            closeCurrent();
            open(h.params, Clock::now());
            return;
        }
        if (offline && s->sent - s->answered >= kOfflineWindow) return;
        if (conn_->unsent() > kMaxUnsent) return;
        if (s->firstBlock < 0) s->firstBlock = h.index;
        osc::Message m("/lmdm/audio");
        m.s(s->id).i(int32_t(s->sent)).i(0).i(int32_t(buf.blockFrames));
        m.b(buf.sendAudio(slot), size_t(buf.blockFrames) * buf.channels * sizeof(float));
        send(m);
        ++s->sent;
        buf.ring.consume();
    }
}

void Link::handle(const osc::Decoded& m) {
    if (m.address == "/lmdm/audio/reply") return handleAudio(m);
    if (m.address == "/lmdm/open/reply") return handleOpen(m);
    if (m.address == "/lmdm/error") return handleError(m);
    // param, preset and close replies: nothing to do
}

void Link::handleOpen(const osc::Decoded& m) {
    if (!isString(m, 0) || !isInt(m, 1)) {
        log("unexpected /lmdm/open/reply: expected the session id and latency_samples first");
        return;
    }
    Session* s = find(m.args[0].bytes);
    if (s == nullptr || s->open) return;
    if (s->key == 0) {  // closed while it was opening
        s->open = true;
        send(osc::Message("/lmdm/close").s(s->id));
        return;
    }
    const int64_t latency = m.args[1].integer;
    const int64_t bufferFrames = intFor(m, 2, "buffer_frames"), block = blockFramesFor(s->rate);
    if (bufferFrames != block) {  // the server echoes the open's buffer_frames (bridge/PROTOCOL.md)
        log("session " + s->id + ": the server answered buffer_frames " +
            (bufferFrames < 0 ? std::string("(none: an lmdm serve older than the plugin?)")
                              : std::to_string(bufferFrames)) +
            " to an open with " + std::to_string(block) + "; playing dry");
        shared_.failedKey.store(s->key);
        s->open = true;
        closeCurrent();
        shared_.linkState.store(kLinkDown);
        retryOpen_ = Clock::now() + std::chrono::seconds(30);
        return;
    }
    s->open = true;
    if (s == current()) {
        shared_.linkEpoch.store(s->epoch);
        shared_.linkState.store(kLinkOpen);
    }
    shared_.failedKey.store(0);
    if (latency == loggedLatency_) return;  // a session like the last one (a host resets often): said once
    loggedLatency_ = latency;
    log("session " + s->id + " open: " + std::to_string(s->rate) + " Hz, " + std::to_string(channels_) +
        " channel(s), blocks of " + std::to_string(block) + " frames, preset " + kPresets[s->params.preset()].name +
        ", latency_samples " + std::to_string(latency) + " (where the echo falls in the session's output; the " +
        "plugin reports only its own buffering: its block, the reply margin and one host buffer)");
}

void Link::handleAudio(const osc::Decoded& m) {
    if (m.args.size() != 6 || !isString(m, 0) || !isInt(m, 1) || !isInt(m, 2) || !isInt(m, 3) || !isInt(m, 4) ||
        m.args[5].tag != 'b') {
        log("unexpected /lmdm/audio/reply: expected session, seq, frame_offset, total_frames, flags, samples");
        return;
    }
    Session* s = find(m.args[0].bytes);
    if (s == nullptr || s->firstBlock < 0) return;
    const int64_t seq = m.args[1].integer, offset = m.args[2].integer, total = m.args[3].integer;
    const std::string_view samples = m.args[5].bytes;
    std::shared_ptr<StreamBuffers> buf = buffers();
    const size_t frameBytes = sizeof(float) * channels_;
    if (!buf || total != buf->blockFrames || offset < 0 || samples.size() % frameBytes ||
        offset + int64_t(samples.size() / frameBytes) > total || seq < 0 || seq >= s->sent) {
        log("session " + s->id + ": a reply that does not fit its block (seq " + std::to_string(seq) + ")");
        return;
    }
    if (m.args[4].integer != 0) ++flagged_;
    const int64_t block = s->firstBlock + seq;
    const uint32_t frames = uint32_t(samples.size() / frameBytes);
    const uint32_t slot = buf->replySlot(block);
    uint32_t& filled = buf->filled(slot);
    if (offset == 0) filled = 0;
    filled += frames;
    const bool complete = filled >= uint32_t(total);
    if (complete) {
        filled = 0;
        s->answered = std::max(s->answered, seq + 1);
    }
    const uint64_t play = shared_.playTag.load(std::memory_order_acquire);
    const int64_t playing = int64_t(play & ((uint64_t(1) << 40) - 1));
    if (s->epoch != shared_.epoch.load() || (play >> 40) != (s->epoch & 0xFFFFFF) || block < playing ||
        block >= playing + int64_t(buf->slots) || buf->rate != s->rate) {
        if (complete) ++lateReplies_;  // its time to play has passed (or its stream has)
        return;
    }
    std::memcpy(buf->replyAudio(slot) + size_t(offset) * channels_, samples.data(), samples.size());
    if (complete) buf->tag(slot).store(blockTag(s->epoch, block), std::memory_order_release);
}

void Link::handleError(const osc::Decoded& m) {
    if (m.args.size() != 5 || !isInt(m, 0) || !isString(m, 1) || !isString(m, 2) || !isInt(m, 3) ||
        !isString(m, 4)) {
        log("unexpected /lmdm/error: expected code, name, session, seq, message");
        return;
    }
    const int64_t code = m.args[0].integer, seq = m.args[3].integer;
    Session* s = find(m.args[2].bytes);
    const std::string text = "server error " + str(m.args[1].bytes) + " (" + std::to_string(code) + ")" +
                             (seq >= 0 ? " for block " + std::to_string(seq) : "") + ": " + str(m.args[4].bytes);
    const auto now = Clock::now();
    if (text != lastError_ || now - lastErrorAt_ > std::chrono::seconds(60)) {  // once, not every retry
        log(text + (s ? " (session " + s->id + ")" : ""));
        lastError_ = text;
        lastErrorAt_ = now;
    }
    if (s == nullptr) return;
    if (seq >= 0 && code != kErrorEngine && s->firstBlock >= 0 && seq < s->sent) {  // that block gets no audio
        skip(buffers().get(), s->epoch, s->firstBlock + seq, s->firstBlock + seq + 1);
        s->answered = std::max(s->answered, seq + 1);
    } else if (seq < 0 && !s->open && s == current()) {  // the open failed: try again later
        shared_.failedKey.store(s->key);
        closeCurrent();
        shared_.linkState.store(kLinkDown);
        retryOpen_ = Clock::now() + kReopenAfterFailure;
    }
}

// Now and then, while a session is open: what went wrong since the last line, if anything.
void Link::report(Clock::time_point now, bool last) {
    if (now < nextReport_ && !last) return;
    nextReport_ = now + kReportEvery;
    const uint64_t counts[5] = {lateReplies_, shared_.droppedBlocks.load(), shared_.waits.load(),
                                shared_.waitTimeouts.load(), flagged_};
    uint64_t d[5];
    for (int i = 0; i < 5; ++i) d[i] = counts[i] - reported_[i];
    std::copy(counts, counts + 5, reported_);
    const bool render = shared_.offline.load() && !last;  // a render waits for its replies: no news (till the end)
    if (shared_.linkState.load() != kLinkOpen || ((d[0] | d[1] | d[3] | d[4]) == 0 && (render || d[2] == 0))) return;
    log("in the last seconds: " + std::to_string(d[0]) + " replies came after their time to play (played dry), " +
        std::to_string(d[1]) + " blocks dropped (the network thread fell behind), " + std::to_string(d[2]) +
        " offline waits for a reply, " + std::to_string(d[3]) + " of them timed out, " + std::to_string(d[4]) +
        " replies flagged by the server");
}

}  // namespace lmdm
