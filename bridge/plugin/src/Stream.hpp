// The audio thread's side: host buffers of any size in, the same size out, delayed by the reported latency.
//
//   input  -> dry line (every frame, for the dry path)  +  blocks of B frames -> send ring -> network thread
//   output frame n = the bridge's reply for input frame n - L, or the dry input frame n - L when there is none
//
// L = B (the block being collected) + R (the reply margin, kReplyMarginBlocks blocks) + H (one host buffer, the
// largest the host announced): the plugin's own buffering, and all it reports. A block is sent in the call that
// completes it and its reply is first played R + one to two host buffers later, the time a live host gives the
// bridge to answer. The session's own output holds the echo latency_samples after the dry signal, so the plugin's
// output is the session's output delayed by exactly L, wet or dry, whatever the session's latency: nothing jumps
// when the bridge comes or goes, and the latency never waits for the server. No allocation, lock or system call
// here except the clock, and sleeping while an offline render waits.
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
// that its pace has been fast for about half a second of audio. A young stream whose host calls fast but is not
// that far ahead yet is undecided: a live host prefilling its buffers, or the first calls of a render (whose first
// reply is due in its second call when the host buffer is 3 blocks or more). Undecided, the plugin waits only
// while the host is ahead of real time (see due()), which no live host notices.
class Pace {
public:
    using Clock = std::chrono::steady_clock;
    void enter(Clock::time_point now, uint32_t frames, double rate);
    void exit(Clock::time_point now) { lastExit_ = now; started_ = true; }
    // a new stream (activate), from a host whose buffers are up to `hostBuffer` frames: nothing known yet
    void restart(uint32_t hostBuffer, double rate) {
        streamSeconds_ = hostSeconds_ = 0.0;
        aheadLimit_ = 2.0 * hostBuffer / rate;
        started_ = false;  // the pause before the first call (set-up, a stopped transport) says nothing
        count_ = next_ = 0;
        recent_ = slow_ = 1.0;
    }
    bool offline() const { return recent_ < 0.5 && (young() ? ahead() : slow_ < 0.5); }
    bool undecided() const { return recent_ < 0.5 && young() && !ahead(); }
    // When the audio before this call is due in real time (counted from the stream's first call), less `margin`
    // seconds: a call that returns by then leaves a live host on time.
    Clock::time_point due(double margin) const {
        return firstEnter_ + std::chrono::duration_cast<Clock::duration>(
                                 std::chrono::duration<double>(callStartSeconds_ - margin));
    }

private:
    bool young() const { return streamSeconds_ < kYoungSeconds; }
    bool ahead() const { return streamSeconds_ - hostSeconds_ > aheadLimit_; }

    static constexpr double kYoungSeconds = 1.0;
    static constexpr int kRecent = 8;
    Clock::time_point lastExit_{}, firstEnter_{};
    bool started_ = false;
    double ratios_[kRecent] = {};  // the last calls' host time / audio time
    int count_ = 0, next_ = 0;
    double recent_ = 1.0, slow_ = 1.0;  // their median; an average over ~0.5 s of audio. Live until shown otherwise
    double streamSeconds_ = 0.0, hostSeconds_ = 0.0, aheadLimit_ = 0.0;  // since the stream started
    double callStartSeconds_ = 0.0;  // the stream's audio before this call
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
    // The latency for a block size and host buffer: B + R + H (any thread; it does not depend on the server).
    static uint32_t latencyFor(uint32_t blockFrames, uint32_t hostBuffer);

private:
    void ingest(const float* const* in, uint32_t offset, uint32_t frames);
    void pushBlock();
    void render(float* const* out, uint32_t offset, uint32_t frames);
    void selectBlock(int64_t block);
    enum class Wait { kCame, kNoReply, kTimedOut };
    Wait waitForReply(uint32_t slot, uint64_t want, Pace::Clock::time_point until);

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
    int64_t L_ = 0;
    int64_t curBlock_ = -1;
    const float* curReply_ = nullptr;  // the reply being played, or null: dry
    bool slow_ = false;                // offline: a reply timed out; wait briefly until one comes in time again
    Pace::Clock::time_point undecidedUntil_{};  // undecided pace: until when this call may wait for replies
    Pace pace_;
};

}  // namespace lmdm
