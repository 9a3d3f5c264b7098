// The plugin's OSC codec (src/Osc.cpp) driven line by line from stdin, for tests/test_plugin_osc.py to compare with
// the bridge's Python codec byte for byte. Every value is hex, so nothing is lost in between:
//
//   E <address-hex> <tag>:<hex>...   encode a message (i: int32 bits, f: float32 bits, s: text, b: bytes)
//                                    -> "P <packet-hex>"
//   D <packet-hex>                   decode -> "M <address-hex> <value>..." or "X <error>", each value as
//                                    n:<integer> r:<float64 bits> s:<text-hex> b:<bytes-hex> T F N
//   F <chunk-hex>,<chunk-hex>,...    stream framing, fed chunk by chunk -> "P <packet-hex>"... then "X <error>"
//                                    or "END"
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "Osc.hpp"

namespace {

std::vector<uint8_t> unhex(const std::string& text) {
    std::vector<uint8_t> out;
    for (size_t i = 0; i + 1 < text.size(); i += 2) out.push_back(uint8_t(std::stoul(text.substr(i, 2), nullptr, 16)));
    return out;
}

std::string hex(const void* data, size_t size) {
    static const char digits[] = "0123456789abcdef";
    std::string out;
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < size; ++i) {
        out += digits[p[i] >> 4];
        out += digits[p[i] & 15];
    }
    return out;
}

std::string hex(std::string_view s) { return hex(s.data(), s.size()); }

uint64_t unhexNumber(const std::string& text) { return std::stoull(text.empty() ? "0" : text, nullptr, 16); }

void encode(std::istringstream& line) {
    std::string address, arg;
    line >> address;
    const std::vector<uint8_t> a = unhex(address);
    lmdm::osc::Message m(std::string_view(reinterpret_cast<const char*>(a.data()), a.size()));
    while (line >> arg) {
        const char tag = arg[0];
        const std::string value = arg.substr(2);
        if (tag == 'i') {
            m.i(int32_t(uint32_t(unhexNumber(value))));
        } else if (tag == 'f') {
            const uint32_t bits = uint32_t(unhexNumber(value));
            float f;
            std::memcpy(&f, &bits, 4);
            m.f(f);
        } else if (tag == 's') {
            const std::vector<uint8_t> s = unhex(value);
            m.s(std::string_view(reinterpret_cast<const char*>(s.data()), s.size()));
        } else {
            const std::vector<uint8_t> b = unhex(value);
            m.b(b.data(), b.size());
        }
    }
    const std::vector<uint8_t> packet = m.encode();
    std::cout << "P " << hex(packet.data(), packet.size()) << "\n";
}

void decode(std::istringstream& line) {
    std::string text;
    line >> text;
    const std::vector<uint8_t> packet = unhex(text);
    lmdm::osc::Decoded d;
    std::string error;
    if (!lmdm::osc::decode(packet.data(), packet.size(), d, error)) {
        std::cout << "X " << error << "\n";
        return;
    }
    std::cout << "M " << hex(d.address);
    char number[32];
    for (const auto& v : d.args) {
        if (v.isInt()) {
            std::cout << " n:" << v.integer;
        } else if (v.tag == 'f' || v.tag == 'd') {
            uint64_t bits;
            std::memcpy(&bits, &v.number, 8);
            std::snprintf(number, sizeof(number), "%016llx", (unsigned long long)bits);
            std::cout << " r:" << number;
        } else if (v.isString()) {
            std::cout << " s:" << hex(v.bytes);
        } else if (v.tag == 'b') {
            std::cout << " b:" << hex(v.bytes);
        } else {
            std::cout << ' ' << v.tag;  // T F N
        }
    }
    std::cout << "\n";
}

void frames(std::istringstream& line) {
    std::string chunks;
    line >> chunks;
    lmdm::osc::LengthPrefixReader reader(1 << 20);
    std::vector<uint8_t> packet;
    std::string error;
    for (size_t p = 0; p <= chunks.size();) {
        const size_t q = std::min(chunks.find(',', p), chunks.size());
        const std::vector<uint8_t> bytes = unhex(chunks.substr(p, q - p));
        reader.feed(bytes.data(), bytes.size());
        while (reader.next(packet, error)) std::cout << "P " << hex(packet.data(), packet.size()) << "\n";
        if (!error.empty()) {
            std::cout << "X " << error << "\n";
            return;
        }
        p = q + 1;
    }
    std::cout << "END\n";
}

}  // namespace

int main() {
    std::string text;
    while (std::getline(std::cin, text)) {
        std::istringstream line(text);
        std::string command;
        line >> command;
        if (command == "E") encode(line);
        else if (command == "D") decode(line);
        else if (command == "F") frames(line);
        else std::cout << "X unknown command " << command << "\n";
        std::cout.flush();
    }
    return 0;
}
