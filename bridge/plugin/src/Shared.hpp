// What the audio thread, the network thread and the host's main thread share, and nothing else. Audio blocks go
// from the audio thread to the network thread through a lock-free single-producer/single-consumer ring; replies
// come back into slots indexed by block number, each published by an atomic tag. The audio thread never locks,
// allocates or waits on these (except, boundedly, in an offline render: see Stream::selectBlock).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "Params.hpp"

namespace lmdm {

// Frames per block sent to the bridge at a host rate: about 43 ms (2,048 frames at 44.1 and 48 kHz).
inline uint32_t blockFramesFor(double rate) { return rate <= 50000 ? 2048 : (rate <= 100000 ? 4096 : 8192); }
// How long, in blocks, a live host gives the server to answer beyond the host buffer: about 85 ms, for the block
// that runs the model (20 to 80 ms for the shipped presets on two busy cores) and those queued behind it.
constexpr uint32_t kReplyMarginBlocks = 2;

constexpr uint32_t kMaxHostBuffer = 16384;  // the most a host buffer adds to the latency (larger calls are split)
constexpr uint32_t kChunkFrames = 8192;     // host calls are processed in pieces of at most this many frames

// Reply slot tags: the epoch (one per activate) and the block index; kSkipped marks a block that will get no reply.
constexpr uint64_t kNoTag = ~uint64_t(0);
constexpr uint64_t kSkipped = uint64_t(1) << 63;
inline uint64_t blockTag(uint32_t epoch, int64_t block) {
    return (uint64_t(epoch & 0xFFFFFF) << 40) | (uint64_t(block) & ((uint64_t(1) << 40) - 1));
}

// Single-producer/single-consumer ring positions over `capacity` (a power of two) slots.
class SpscRing {
public:
    explicit SpscRing(uint32_t capacity) : mask_(capacity - 1) {}
    // producer
    bool writable(uint32_t& slot) const {
        const uint64_t head = head_.load(std::memory_order_relaxed);
        if (head - tail_.load(std::memory_order_acquire) > mask_) return false;
        slot = uint32_t(head & mask_);
        return true;
    }
    void publish() { head_.store(head_.load(std::memory_order_relaxed) + 1, std::memory_order_release); }
    // consumer
    bool readable(uint32_t& slot) const {
        const uint64_t tail = tail_.load(std::memory_order_relaxed);
        if (tail == head_.load(std::memory_order_acquire)) return false;
        slot = uint32_t(tail & mask_);
        return true;
    }
    void consume() { tail_.store(tail_.load(std::memory_order_relaxed) + 1, std::memory_order_release); }

private:
    const uint64_t mask_;
    alignas(64) std::atomic<uint64_t> head_{0};
    alignas(64) std::atomic<uint64_t> tail_{0};
};

struct BlockHeader {
    uint32_t epoch = 0;
    int64_t index = 0;  // block number since activate
    Snapshot params;    // the parameters from this block on
};

// The audio of one rate and channel count: send ring and reply slots, `slots` blocks each, allocated once per
// sample rate (under Shared::buffersMutex, while the plugin is not running).
class StreamBuffers {
public:
    StreamBuffers(uint32_t rate, uint32_t channels, uint32_t blockFrames, uint32_t slots)
        : rate(rate), channels(channels), blockFrames(blockFrames), slots(slots), ring(slots), headers_(slots),
          sendAudio_(size_t(slots) * blockFrames * channels), replyAudio_(size_t(slots) * blockFrames * channels),
          tags_(new std::atomic<uint64_t>[slots]), filled_(slots, 0) {
        for (uint32_t i = 0; i < slots; ++i) tags_[i].store(kNoTag, std::memory_order_relaxed);
    }

    const uint32_t rate, channels, blockFrames, slots;  // slots: a power of two
    SpscRing ring;

    BlockHeader& header(uint32_t slot) { return headers_[slot]; }
    float* sendAudio(uint32_t slot) { return &sendAudio_[size_t(slot) * blockFrames * channels]; }
    // reply slot of block `block`: interleaved frames x channels
    uint32_t replySlot(int64_t block) const { return uint32_t(uint64_t(block) & (slots - 1)); }
    std::atomic<uint64_t>& tag(uint32_t slot) { return tags_[slot]; }
    float* replyAudio(uint32_t slot) { return &replyAudio_[size_t(slot) * blockFrames * channels]; }
    uint32_t& filled(uint32_t slot) { return filled_[slot]; }  // network thread only: frames received so far

private:
    std::vector<BlockHeader> headers_;
    std::vector<float> sendAudio_, replyAudio_;
    std::unique_ptr<std::atomic<uint64_t>[]> tags_;
    std::vector<uint32_t> filled_;
};

enum LinkState : int { kLinkDown = 0, kLinkOpening = 1, kLinkOpen = 2 };
constexpr uint32_t kNotAway = ~uint32_t(0);  // Shared::awayGeneration: the server is there, or being connected to

struct Shared {
    // host -> everyone: parameter values (canonical), written by whichever thread the host calls from
    std::atomic<float> params[kInputParamCount];
    // main thread -> network thread
    std::atomic<uint32_t> epoch{0};         // bumped by every activate: a fresh stream, a fresh session
    std::atomic<uint32_t> sampleRate{0};
    std::atomic<uint32_t> serverGeneration{0};  // bumped when the server's host or port changes
    std::mutex buffersMutex;                // main thread (swaps) and network thread (uses); never the audio thread
    std::shared_ptr<StreamBuffers> buffers;
    // audio thread -> network thread
    std::atomic<bool> offline{false};       // the host runs faster than real time: keep every block processed
    std::atomic<uint64_t> playTag{blockTag(0, 0)};  // the lowest block the audio thread may still read
    std::atomic<uint64_t> droppedBlocks{0};  // send ring full
    std::atomic<uint64_t> dryBlocks{0};      // played dry: no reply in time
    std::atomic<uint64_t> waits{0};          // offline: replies waited for
    std::atomic<uint64_t> waitTimeouts{0};   // offline: a reply did not come within the bound
    // network thread -> audio thread and main thread
    std::atomic<int> linkState{kLinkDown};
    std::atomic<uint32_t> linkEpoch{0};     // the epoch linkState is about
    std::atomic<uint64_t> failedKey{0};     // configKey() of the last session the server refused to open
    // The serverGeneration for which there is no connection (the last attempt failed, or it was lost), or
    // kNotAway. A new address is a new generation, so a mark for the old one never holds for it: a plugin just
    // created, or given a new address, is still connecting.
    std::atomic<uint32_t> awayGeneration{kNotAway};

    Shared() {
        for (uint32_t i = 0; i < kInputParamCount; ++i) params[i].store(0.0f, std::memory_order_relaxed);
    }
    Snapshot snapshot() const {
        Snapshot s;
        for (uint32_t i = 0; i < kInputParamCount; ++i) s.values[i] = params[i].load(std::memory_order_relaxed);
        return s;
    }
};

// A reply may still come for the stream: the server is there (or being connected to) and has not refused a session
// for this configuration (after a refusal the network thread waits before it asks again; a new delay or rate asks
// at once).
inline bool replyCanCome(const Shared& shared, uint64_t key) {
    return shared.awayGeneration.load(std::memory_order_acquire) != shared.serverGeneration.load() &&
           shared.failedKey.load(std::memory_order_acquire) != key;
}

// What a session is opened for: the host rate and the delay time (a new one of either opens a new session).
inline uint64_t configKey(uint32_t rate, float delaySeconds) {
    uint32_t bits;
    static_assert(sizeof(bits) == sizeof(delaySeconds), "float is 32 bits");
    __builtin_memcpy(&bits, &delaySeconds, 4);
    return (uint64_t(rate) << 32) | bits;
}

}  // namespace lmdm
