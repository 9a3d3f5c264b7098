// One TCP connection to `lmdm serve`: non-blocking, OSC 1.0 length-prefix framing both ways, closed when destroyed.
// Network thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "Osc.hpp"

namespace lmdm {

class Connection {
public:
    // Connects within `timeout`; null, with `error` saying why, when it cannot.
    static std::unique_ptr<Connection> open(const std::string& host, int port, std::chrono::milliseconds timeout,
                                            std::string& error);
    ~Connection();
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    void send(const osc::Message& message);  // queued; flush() writes it
    size_t unsent() const { return out_.size() - sent_; }
    // Writes what the socket takes now. False, with `error`, when the connection failed.
    bool flush(std::string& error);
    // Waits up to `ms` for replies (or room for unsent bytes). False, with `error`, when the connection failed.
    bool wait(int ms, bool& readable, std::string& error);
    // Reads what has arrived: each message to `handle`, each packet that is no OSC message to `bad`. False, with
    // `error`, when the connection has ended.
    bool read(const std::function<void(const osc::Decoded&)>& handle,
              const std::function<void(const std::string&)>& bad, std::string& error);

private:
    explicit Connection(int fd) : fd_(fd) {}

    const int fd_;
    osc::LengthPrefixReader reader_{64u << 20};
    std::vector<uint8_t> out_, packet_;
    size_t sent_ = 0;
};

}  // namespace lmdm
