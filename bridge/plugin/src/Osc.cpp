#include "Osc.hpp"

#include <cstring>

namespace lmdm::osc {
namespace {

size_t pad4(size_t n) { return (n + 3) & ~size_t(3); }

void putBE32(std::vector<uint8_t>& out, uint32_t v) {
    const uint8_t bytes[4] = {uint8_t(v >> 24), uint8_t(v >> 16), uint8_t(v >> 8), uint8_t(v)};
    out.insert(out.end(), bytes, bytes + 4);
}

void putString(std::vector<uint8_t>& out, std::string_view text) {
    out.insert(out.end(), text.begin(), text.end());
    out.resize(out.size() + (pad4(text.size() + 1) - text.size()), 0);  // at least one NUL
}

uint32_t getBE32(const uint8_t* p) {
    return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

uint64_t getBE64(const uint8_t* p) { return (uint64_t(getBE32(p)) << 32) | getBE32(p + 4); }

// Strict UTF-8 (no overlong forms, no surrogates, nothing past U+10FFFF), as Python's bytes.decode("utf-8").
bool validUtf8(const uint8_t* p, size_t n) {
    size_t i = 0;
    while (i < n) {
        const uint8_t c = p[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) { ++i; continue; }
        if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; }
        else return false;
        if (i + len > n) return false;
        for (size_t k = 1; k < len; ++k) {
            if ((p[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

std::string at(const char* what, size_t pos) { return std::string(what) + " at byte " + std::to_string(pos); }

// A NUL-terminated string padded to 4 bytes, starting at `pos`; `pos` moves past it.
bool readString(const uint8_t* data, size_t size, size_t& pos, const char* what, std::string_view& out,
                std::string& error) {
    const void* nul = std::memchr(data + pos, 0, size - pos);
    if (nul == nullptr) {
        error = at(what, pos) + " has no NUL terminator";
        return false;
    }
    const size_t end = static_cast<const uint8_t*>(nul) - data;
    const size_t next = pad4(end + 1);
    if (next > size) {
        error = at(what, pos) + " is not padded to a multiple of 4 bytes";
        return false;
    }
    if (!validUtf8(data + pos, end - pos)) {
        error = at(what, pos) + " is not UTF-8 text";
        return false;
    }
    out = std::string_view(reinterpret_cast<const char*>(data + pos), end - pos);
    pos = next;
    return true;
}

bool readArg(char tag, const uint8_t* data, size_t size, size_t& pos, Value& v, std::string& error) {
    v.tag = tag;
    switch (tag) {
    case 'T': case 'F': case 'N':
        v.integer = tag == 'T';
        return true;
    case 'i': case 'f': case 'h': case 'd': {
        const size_t width = (tag == 'i' || tag == 'f') ? 4 : 8;
        if (pos + width > size) {
            error = "argument '" + std::string(1, tag) + "' at byte " + std::to_string(pos) +
                    " runs past the end of the packet";
            return false;
        }
        if (tag == 'i') {
            v.integer = static_cast<int32_t>(getBE32(data + pos));
        } else if (tag == 'h') {
            v.integer = static_cast<int64_t>(getBE64(data + pos));
        } else if (tag == 'f') {
            const uint32_t bits = getBE32(data + pos);
            float x;
            std::memcpy(&x, &bits, 4);
            v.number = x;
        } else {
            const uint64_t bits = getBE64(data + pos);
            double x;
            std::memcpy(&x, &bits, 8);
            v.number = x;
        }
        pos += width;
        return true;
    }
    case 's': case 'S':
        return readString(data, size, pos, "string argument", v.bytes, error);
    case 'b': {
        if (pos + 4 > size) {
            error = at("blob size", pos) + " runs past the end of the packet";
            return false;
        }
        const int32_t blob = static_cast<int32_t>(getBE32(data + pos));
        const size_t start = pos + 4;
        if (blob < 0 || start + pad4(size_t(blob)) > size) {
            error = at("blob", pos) + " claims " + std::to_string(blob) + " bytes; the packet holds " +
                    std::to_string(size - start);
            return false;
        }
        v.bytes = std::string_view(reinterpret_cast<const char*>(data + start), size_t(blob));
        pos = start + pad4(size_t(blob));
        return true;
    }
    default:
        error = std::string("unsupported OSC type tag '") + tag + "'";
        return false;
    }
}

}  // namespace

Message::Message(std::string_view address) : address_(address) {}

Message& Message::i(int32_t value) {
    tags_ += 'i';
    putBE32(data_, static_cast<uint32_t>(value));
    return *this;
}

Message& Message::f(float value) {
    tags_ += 'f';
    uint32_t bits;
    std::memcpy(&bits, &value, 4);
    putBE32(data_, bits);
    return *this;
}

Message& Message::s(std::string_view text) {
    tags_ += 's';
    putString(data_, text);
    return *this;
}

Message& Message::b(const void* data, size_t size) {
    tags_ += 'b';
    putBE32(data_, static_cast<uint32_t>(size));
    const auto* bytes = static_cast<const uint8_t*>(data);
    data_.insert(data_.end(), bytes, bytes + size);
    data_.resize(data_.size() + (pad4(size) - size), 0);
    return *this;
}

void Message::encodeTo(std::vector<uint8_t>& out, bool framed) const {
    const size_t packet = pad4(address_.size() + 1) + pad4(tags_.size() + 1) + data_.size();
    out.reserve(out.size() + packet + 4);
    if (framed) {
        putBE32(out, static_cast<uint32_t>(packet));
    }
    putString(out, address_);
    putString(out, tags_);
    out.insert(out.end(), data_.begin(), data_.end());
}

std::vector<uint8_t> Message::encode() const {
    std::vector<uint8_t> out;
    encodeTo(out, false);
    return out;
}

bool decode(const uint8_t* data, size_t size, Decoded& out, std::string& error) {
    out.args.clear();
    if (size % 4) {
        error = "packet size " + std::to_string(size) + " is not a multiple of 4";
        return false;
    }
    if (size >= 8 && std::memcmp(data, "#bundle\0", 8) == 0) {
        error = "a bundle: the bridge sends single messages";
        return false;
    }
    size_t pos = 0;
    if (!readString(data, size, pos, "address", out.address, error)) {
        return false;
    }
    if (out.address.empty() || out.address[0] != '/') {
        error = "address '" + std::string(out.address.substr(0, 64)) + "' does not start with '/'";
        return false;
    }
    if (pos == size) {
        error = "message '" + std::string(out.address.substr(0, 64)) + "' has no type tag string";
        return false;
    }
    std::string_view tags;
    if (!readString(data, size, pos, "type tag string", tags, error)) {
        return false;
    }
    if (tags.empty() || tags[0] != ',') {
        error = "type tag string '" + std::string(tags.substr(0, 64)) + "' does not start with ','";
        return false;
    }
    for (size_t t = 1; t < tags.size(); ++t) {
        Value v;
        if (!readArg(tags[t], data, size, pos, v, error)) {
            return false;
        }
        out.args.push_back(v);
    }
    if (pos != size) {
        error = std::to_string(size - pos) + " trailing bytes after the arguments of '" +
                std::string(out.address.substr(0, 64)) + "'";
        return false;
    }
    return true;
}

void LengthPrefixReader::feed(const uint8_t* data, size_t size) {
    if (start_ > 0 && start_ == buffer_.size()) {
        buffer_.clear();
        start_ = 0;
    }
    buffer_.insert(buffer_.end(), data, data + size);
}

bool LengthPrefixReader::next(std::vector<uint8_t>& packet, std::string& error) {
    while (buffer_.size() - start_ >= 4) {
        const int32_t frame = static_cast<int32_t>(getBE32(buffer_.data() + start_));
        if (frame < 0 || size_t(frame) > maxPacket_) {
            error = "frame size " + std::to_string(frame) + " is not an OSC 1.0 packet size (0 to " +
                    std::to_string(maxPacket_) + " bytes)";
            return false;
        }
        if (buffer_.size() - start_ - 4 < size_t(frame)) {
            break;
        }
        const uint8_t* p = buffer_.data() + start_ + 4;
        start_ += 4 + size_t(frame);
        if (frame == 0) {
            continue;  // an empty frame carries no packet
        }
        packet.assign(p, p + frame);
        return true;
    }
    if (start_ > (1u << 20)) {  // compact now and then, not on every packet
        buffer_.erase(buffer_.begin(), buffer_.begin() + long(start_));
        start_ = 0;
    }
    return false;
}

void LengthPrefixReader::clear() {
    buffer_.clear();
    start_ = 0;
}

}  // namespace lmdm::osc
