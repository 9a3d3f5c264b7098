// The network thread: one per plugin instance. It owns the TCP connection to `lmdm serve` (OSC 1.0 length-prefix
// framing), one session per stream (bridge/PROTOCOL.md): /lmdm/open with the host rate, the channels and the block
// size; every block as /lmdm/audio with its seq; /lmdm/param (and /lmdm/preset) between blocks; and files the
// replies into the reply slots. It reconnects by itself, and tells the audio thread when there is no session so
// that it plays dry instead of waiting.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "Connection.hpp"
#include "Osc.hpp"
#include "Shared.hpp"

namespace lmdm {

class Link {
public:
    using Clock = std::chrono::steady_clock;

    Link(Shared& shared, uint32_t channels, std::string host, int port);
    ~Link();  // closes the session and joins the thread
    Link(const Link&) = delete;
    Link& operator=(const Link&) = delete;

    void setServer(const std::string& host, int port);  // any thread but the audio thread
    std::string host() const;
    int port() const;

private:
    struct Session {
        std::string id;
        uint32_t epoch = 0, rate = 0;
        uint64_t key = 0;
        Snapshot params;        // as the server has them (after what was sent)
        int64_t firstBlock = -1;  // the block its seq 0 is; -1: no audio sent yet
        int64_t sent = 0, answered = 0;
        bool open = false;
        Clock::time_point openedAt;
    };

    void run();
    void tick(Clock::time_point now);
    void connect(Clock::time_point now);
    void disconnect(const std::string& why);
    void send(const osc::Message& message);
    bool flush();
    bool readAvailable();
    void handle(const osc::Decoded& message);
    void handleAudio(const osc::Decoded& message);
    void handleOpen(const osc::Decoded& message);
    void handleError(const osc::Decoded& message);
    void follow(Clock::time_point now);  // the epoch, the rate and the server address
    void open(const Snapshot& params, Clock::time_point now);
    void closeCurrent();
    void pump(StreamBuffers& buf);
    bool sendParams(Session& s, const Snapshot& wanted);
    void skip(StreamBuffers* buf, uint32_t epoch, int64_t first, int64_t end);
    void report(Clock::time_point now, bool last = false);
    Session* find(std::string_view id);
    Session* current();
    std::shared_ptr<StreamBuffers> buffers();
    void log(const std::string& line) const;

    Shared& shared_;
    const uint32_t channels_;
    const std::string name_;
    const std::string token_;
    mutable std::mutex serverMutex_;
    std::string host_;
    int port_;
    std::atomic<bool> stop_{false};

    // network thread only
    std::unique_ptr<Connection> conn_;  // null while there is no server
    uint32_t serverGeneration_ = 0;
    std::string lastConnectError_, lastError_;
    Clock::time_point lastErrorAt_{};
    Clock::time_point nextConnect_{};
    Clock::time_point retryOpen_{};
    uint64_t lastWanted_ = 0;
    uint32_t epoch_ = 0;  // the stream (Shared::epoch) as follow() last saw it
    std::deque<Session> sessions_;  // back(): the current one; before it, closing ones still answering
    uint64_t sessionCounter_ = 0;
    uint64_t reported_[5] = {};
    uint64_t flagged_ = 0, lateReplies_ = 0;
    int64_t loggedLatency_ = -1;
    Clock::time_point nextReport_{};

    std::thread thread_;  // last: starts once everything above exists
};

}  // namespace lmdm
