#include "Stream.hpp"

#include <algorithm>
#include <cstring>
#include <thread>

namespace lmdm {
namespace {

constexpr double kSlowPaceSeconds = 0.5;  // the pace's long average: over about this much audio
constexpr double kWaitSeconds = 2.0;     // offline: the longest wait for one reply
constexpr double kSlowWaitSeconds = 0.05;  // ... after one timed out, until a reply comes in time again
constexpr double kUndecidedMargin = 0.5;  // undecided pace: waits end this many host buffers before real time
constexpr auto kWaitStep = std::chrono::microseconds(100);

uint64_t nextPow2(uint64_t n) {
    uint64_t p = 1;
    while (p < n) p <<= 1;
    return p;
}

}  // namespace

void Pace::enter(Clock::time_point now, uint32_t frames, double rate) {
    if (frames == 0 || rate <= 0) return;
    const double audio = frames / rate;
    callStartSeconds_ = streamSeconds_;
    streamSeconds_ += audio;
    if (!started_) {
        firstEnter_ = now;
        return;
    }
    const double host = std::chrono::duration<double>(now - lastExit_).count();
    const double ratio = std::min(2.0, host / audio);  // a long pause (stopped transport) counts as live, no more
    hostSeconds_ += ratio * audio;
    ratios_[next_] = ratio;
    next_ = (next_ + 1) % kRecent;
    const int n = count_ = std::min(count_ + 1, kRecent);
    double sorted[kRecent];
    std::copy(ratios_, ratios_ + n, sorted);
    std::nth_element(sorted, sorted + n / 2, sorted + n);
    recent_ = sorted[n / 2];
    slow_ += std::min(1.0, audio / kSlowPaceSeconds) * (ratio - slow_);
}

uint32_t Stream::latencyFor(uint32_t blockFrames, uint32_t hostBuffer) {
    return (1 + kReplyMarginBlocks) * blockFrames + std::max<uint32_t>(1, std::min(hostBuffer, kMaxHostBuffer));
}

void Stream::prepare(std::shared_ptr<StreamBuffers> buffers, uint32_t hostBuffer, uint32_t epoch) {
    buf_ = std::move(buffers);
    channels_ = buf_->channels;
    blockFrames_ = buf_->blockFrames;
    rate_ = buf_->rate;
    hostBuffer_ = std::max<uint32_t>(1, std::min(hostBuffer, kMaxHostBuffer));
    epoch_ = epoch;
    L_ = latencyFor(blockFrames_, hostBuffer_);
    const uint64_t frames = nextPow2(uint64_t(L_) + kChunkFrames + 1);  // the dry frames not yet played
    if (dry_.size() != frames * channels_) dry_.assign(frames * channels_, 0.0f);
    else std::fill(dry_.begin(), dry_.end(), 0.0f);
    dryMask_ = frames - 1;
    block_.assign(size_t(blockFrames_) * channels_, 0.0f);
    blockFill_ = 0;
    inPos_ = outPos_ = nextBlock_ = 0;
    curBlock_ = -1;
    curReply_ = nullptr;
    slow_ = false;
    pace_.restart(hostBuffer_, rate_);
    shared_.playTag.store(blockTag(epoch_, 0), std::memory_order_release);
}

void Stream::process(const float* const* in, float* const* out, uint32_t frames) {
    const auto start = Pace::Clock::now();
    pace_.enter(start, frames, rate_);
    shared_.offline.store(pace_.offline(), std::memory_order_relaxed);
    undecidedUntil_ = pace_.due(kUndecidedMargin * hostBuffer_ / rate_);
    for (uint32_t done = 0; done < frames;) {
        const uint32_t n = std::min(frames - done, kChunkFrames);
        ingest(in, done, n);  // first: the output may overwrite the input (in-place hosts)
        render(out, done, n);
        done += n;
    }
    pace_.exit(Pace::Clock::now());
}

void Stream::ingest(const float* const* in, uint32_t offset, uint32_t frames) {
    const uint32_t c = channels_;
    for (uint32_t i = 0; i < frames; ++i) {
        float* dry = &dry_[((uint64_t(inPos_) + i) & dryMask_) * c];
        if (blockFill_ == 0) blockParams_ = shared_.snapshot();  // parameters change between blocks
        float* block = &block_[size_t(blockFill_) * c];
        for (uint32_t ch = 0; ch < c; ++ch) dry[ch] = block[ch] = in[ch][offset + i];
        if (++blockFill_ == blockFrames_) pushBlock();
    }
    inPos_ += frames;
}

void Stream::pushBlock() {
    blockFill_ = 0;
    const int64_t index = nextBlock_++;
    uint32_t slot;
    if (!buf_->ring.writable(slot)) {  // the network thread is stuck: this block gets no reply, play it dry
        shared_.droppedBlocks.fetch_add(1, std::memory_order_relaxed);
        buf_->tag(buf_->replySlot(index)).store(blockTag(epoch_, index) | kSkipped, std::memory_order_release);
        return;
    }
    BlockHeader& h = buf_->header(slot);
    h.epoch = epoch_;
    h.index = index;
    h.params = blockParams_;
    std::memcpy(buf_->sendAudio(slot), block_.data(), block_.size() * sizeof(float));
    buf_->ring.publish();
}

void Stream::render(float* const* out, uint32_t offset, uint32_t frames) {
    const uint32_t c = channels_;
    uint32_t j = 0;
    while (j < frames) {
        const int64_t m = outPos_ + j - L_;  // the input frame this output frame plays
        if (m < 0) {
            const uint32_t run = uint32_t(std::min<int64_t>(frames - j, -m));
            for (uint32_t ch = 0; ch < c; ++ch) std::memset(out[ch] + offset + j, 0, run * sizeof(float));
            j += run;
            continue;
        }
        const int64_t block = m / blockFrames_;
        const uint32_t within = uint32_t(m % blockFrames_);
        if (block != curBlock_) selectBlock(block);
        const uint32_t run = std::min(frames - j, blockFrames_ - within);
        if (curReply_ != nullptr) {
            const float* src = curReply_ + size_t(within) * c;
            for (uint32_t i = 0; i < run; ++i)
                for (uint32_t ch = 0; ch < c; ++ch) out[ch][offset + j + i] = src[size_t(i) * c + ch];
        } else {
            for (uint32_t i = 0; i < run; ++i) {
                const float* src = &dry_[((uint64_t(m) + i) & dryMask_) * c];
                for (uint32_t ch = 0; ch < c; ++ch) out[ch][offset + j + i] = src[ch];
            }
        }
        j += run;
    }
    outPos_ += frames;
}

void Stream::selectBlock(int64_t block) {
    curBlock_ = block;
    shared_.playTag.store(blockTag(epoch_, block), std::memory_order_release);
    const uint32_t slot = buf_->replySlot(block);
    const uint64_t want = blockTag(epoch_, block);
    uint64_t tag = buf_->tag(slot).load(std::memory_order_acquire);
    if (tag != want && tag != (want | kSkipped)) {
        // Offline: wait, boundedly, for every reply. Undecided: only while the host is ahead of real time by more
        // than half a buffer. Live: never.
        if (pace_.offline()) {
            const double limit = slow_ ? kSlowWaitSeconds : kWaitSeconds;
            const auto until = Pace::Clock::now() + std::chrono::duration_cast<Pace::Clock::duration>(
                                                        std::chrono::duration<double>(limit));
            const Wait waited = waitForReply(slot, want, until);
            if (waited == Wait::kCame) tag = want;
            if (waited == Wait::kTimedOut) slow_ = true;  // the next waits are short, until a reply comes in time
        } else if (pace_.undecided() && Pace::Clock::now() < undecidedUntil_ &&
                   waitForReply(slot, want, undecidedUntil_) == Wait::kCame) {
            tag = want;
        }
    }
    if (tag == want) {
        curReply_ = buf_->replyAudio(slot);
        slow_ = false;
    } else {
        curReply_ = nullptr;
        shared_.dryBlocks.fetch_add(1, std::memory_order_relaxed);
    }
}

// Wait until `until` while a reply can come (the network thread keeps the blocks of a session it is about to
// open, and marks those that will get no reply).
Stream::Wait Stream::waitForReply(uint32_t slot, uint64_t want, Pace::Clock::time_point until) {
    const uint64_t key = configKey(uint32_t(rate_), shared_.params[kDelay].load(std::memory_order_relaxed));
    shared_.waits.fetch_add(1, std::memory_order_relaxed);
    for (;;) {
        const uint64_t tag = buf_->tag(slot).load(std::memory_order_acquire);
        if (tag == want) return Wait::kCame;
        if (tag == (want | kSkipped) || !replyCanCome(shared_, key)) return Wait::kNoReply;
        if (Pace::Clock::now() >= until) {
            shared_.waitTimeouts.fetch_add(1, std::memory_order_relaxed);
            return Wait::kTimedOut;
        }
        std::this_thread::sleep_for(kWaitStep);
    }
}

}  // namespace lmdm
