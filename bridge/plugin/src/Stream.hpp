// The audio thread's side: host buffers of any size in, the same size out, delayed by the reported latency.
//
//   input  -> dry line (every frame, for the dry path)  +  blocks of B frames -> send ring -> network thread
//   output frame n = the bridge's reply for input frame n - L, or the dry input frame n - L when there is none
//
// L = the session's latency_samples + B (the block being collected) + H (one host buffer): a reply is needed
// latency_samples + H frames after its block was sent, so a real-time host gives the bridge at least the session's
// latency to answer. The session's own output already holds the echo latency_samples after the dry signal, so
// the plugin's output is the session's output delayed by exactly L, wet or dry; nothing jumps when the bridge comes
// or goes. No allocation, lock or system call here except the clock, and sleeping while an offline render waits.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "Shared.hpp"

namespace lmdm {

// Real time or not, from the host's pace: the time the host spends between our calls against the audio each call
// carries. A live host calls once per buffer period (ratio about 1); an offline render calls back to back (about 0).
// The median of the last calls decides (a busy machine that preempts a render now and then does not make it look
// live), and one more sign must agree, so that a live host catching up after a hiccup is not taken for a render:
// early in a stream, that it is ahead of the clock by more than a live host can be (two of its buffers); later,
// that its pace has been fast for about half a second of audio.
class Pace {
public:
    using Clock = std::chrono::steady_clock;
    void enter(Clock::time_point now, uint32_t frames, double rate);
    void exit(Clock::time_point now) { lastExit_ = now; started_ = true; }
    // a new stream (activate), from a host whose buffers are up to `hostBuffer` frames
    void restart(uint32_t hostBuffer, double rate) {
        streamSeconds_ = hostSeconds_ = 0.0;
        aheadLimit_ = 2.0 * hostBuffer / rate;
    }
    bool offline() const {
        const bool ahead = streamSeconds_ - hostSeconds_ > aheadLimit_;
        return recent_ < 0.5 && (streamSeconds_ < kYoungSeconds ? ahead : slow_ < 0.5);
    }

private:
    static constexpr double kYoungSeconds = 1.0;
    static constexpr int kRecent = 8;
    Clock::time_point lastExit_{};
    bool started_ = false;
    double ratios_[kRecent] = {};  // the last calls' host time / audio time
    int count_ = 0, next_ = 0;
    double recent_ = 1.0, slow_ = 1.0;  // their median; an average over ~0.5 s of audio. Live until shown otherwise
    double streamSeconds_ = 0.0, hostSeconds_ = 0.0, aheadLimit_ = 0.0;  // since the stream started
};

class Stream {
public:
    explicit Stream(Shared& shared) : shared_(shared) {}

    // Main thread, while not processing: a fresh stream for `buffers` (rate, channels, block) and host buffers up to
    // `hostBuffer` frames, in `epoch`. Allocates.
    void prepare(std::shared_ptr<StreamBuffers> buffers, uint32_t hostBuffer, uint32_t epoch);
    bool prepared() const { return buf_ != nullptr; }

    // Audio thread. `in` and `out` may be the same buffers.
    void process(const float* const* in, float* const* out, uint32_t frames);

    // The latency in use (frames), for the host.
    uint32_t latency() const { return uint32_t(L_); }
    // What the latency is for a session latency and host buffer (main thread, before processing).
    static uint32_t latencyFor(int32_t sessionLatency, uint32_t blockFrames, uint32_t hostBuffer);

private:
    void adoptLatency();
    void settleLatency();
    void ingest(const float* const* in, uint32_t offset, uint32_t frames);
    void pushBlock();
    void render(float* const* out, uint32_t offset, uint32_t frames);
    void selectBlock(int64_t block);
    bool waitForReply(uint32_t slot, uint64_t want);

    Shared& shared_;
    std::shared_ptr<StreamBuffers> buf_;
    uint32_t channels_ = 0, blockFrames_ = 0, hostBuffer_ = 0, epoch_ = 0;
    double rate_ = 0.0;
    std::vector<float> dry_;  // interleaved ring of the input, dryMask_ + 1 frames
    uint64_t dryMask_ = 0;
    std::vector<float> block_;  // the block being collected, interleaved
    uint32_t blockFill_ = 0;
    Snapshot blockParams_;
    int64_t inPos_ = 0, outPos_ = 0, nextBlock_ = 0;
    int32_t sessionLatency_ = -1;
    int64_t L_ = 0;
    int64_t curBlock_ = -1;
    const float* curReply_ = nullptr;  // the reply being played, or null: dry
    bool slow_ = false;                // offline: a reply timed out; wait briefly until one comes in time again
    Pace pace_;
};

}  // namespace lmdm
