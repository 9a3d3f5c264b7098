// A small, strict OSC 1.0 codec and the OSC 1.0 stream framing (int32 big-endian size, then the packet), the same
// bytes as the bridge's Python codec (bridge/wire/osc.py, bridge/wire/framing.py); tests/test_plugin_osc.py checks
// both ways, byte for byte, against vectors the Python side writes. Used by the network thread only (it allocates).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lmdm::osc {

// One outgoing message: the address, then arguments appended in order.
class Message {
public:
    explicit Message(std::string_view address);
    Message& i(int32_t value);
    Message& f(float value);
    Message& s(std::string_view text);
    Message& b(const void* data, size_t size);
    // Appends the encoded packet to `out`, preceded by its int32 big-endian size when `framed`.
    void encodeTo(std::vector<uint8_t>& out, bool framed) const;
    std::vector<uint8_t> encode() const;

private:
    std::string address_;
    std::string tags_ = ",";
    std::vector<uint8_t> data_;
};

// One argument of a decoded message. Strings and blobs are views into the packet they were read from.
struct Value {
    char tag = 0;  // 'i' 'h' 'f' 'd' 's' 'S' 'b' 'T' 'F' 'N'
    int64_t integer = 0;
    double number = 0.0;
    std::string_view bytes;

    bool isInt() const { return tag == 'i' || tag == 'h'; }
    bool isNumber() const { return isInt() || tag == 'f' || tag == 'd'; }
    bool isString() const { return tag == 's' || tag == 'S'; }
    double asDouble() const { return isInt() ? static_cast<double>(integer) : number; }
};

struct Decoded {
    std::string_view address;
    std::vector<Value> args;
};

// Decodes exactly one message from `data` (bundles are refused: the bridge never sends them). Returns false with
// `error` saying what is wrong and at which byte, like bridge/wire/osc.py's OscDecodeError.
bool decode(const uint8_t* data, size_t size, Decoded& out, std::string& error);

// OSC 1.0 stream framing, fed bytes as they arrive in pieces of any size.
class LengthPrefixReader {
public:
    explicit LengthPrefixReader(size_t maxPacket) : maxPacket_(maxPacket) {}
    void feed(const uint8_t* data, size_t size);
    // The next complete packet, or false. A negative or oversized frame size sets `error` (the stream cannot go on).
    bool next(std::vector<uint8_t>& packet, std::string& error);
    void clear();

private:
    size_t maxPacket_;
    std::vector<uint8_t> buffer_;
    size_t start_ = 0;
};

}  // namespace lmdm::osc
