#include "Connection.hpp"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace lmdm {
namespace {

// A connected non-blocking socket to `a`, or -1 with `error`.
int connectTo(const addrinfo* a, std::chrono::milliseconds timeout, std::string& error) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
        error = std::strerror(errno);
        return -1;
    }
    int failure = ::connect(fd, a->ai_addr, a->ai_addrlen) == 0 ? 0 : errno;
    if (failure == EINPROGRESS) {
        pollfd p{fd, POLLOUT, 0};
        failure = ETIMEDOUT;
        if (poll(&p, 1, int(timeout.count())) == 1) {
            socklen_t len = sizeof(failure);
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &failure, &len);
        }
    }
    if (failure != 0) {
        error = std::strerror(failure);
        close(fd);
        return -1;
    }
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

}  // namespace

std::unique_ptr<Connection> Connection::open(const std::string& host, int port, std::chrono::milliseconds timeout,
                                             std::string& error) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const int gai = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found);
    if (gai != 0) {
        error = "cannot resolve " + host + ": " + gai_strerror(gai);
        return nullptr;
    }
    int fd = -1;
    for (const addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) fd = connectTo(a, timeout, error);
    freeaddrinfo(found);
    return fd < 0 ? nullptr : std::unique_ptr<Connection>(new Connection(fd));
}

Connection::~Connection() { close(fd_); }

void Connection::send(const osc::Message& message) {
    if (sent_ > 0 && sent_ == out_.size()) {
        out_.clear();
        sent_ = 0;
    }
    message.encodeTo(out_, true);
}

bool Connection::flush(std::string& error) {
    while (sent_ < out_.size()) {
        const ssize_t n = ::send(fd_, out_.data() + sent_, out_.size() - sent_, MSG_NOSIGNAL);
        if (n > 0) {
            sent_ += size_t(n);
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return true;
        } else if (!(n < 0 && errno == EINTR)) {
            error = std::string("sending: ") + std::strerror(errno);
            return false;
        }
    }
    out_.clear();
    sent_ = 0;
    return true;
}

bool Connection::wait(int ms, bool& readable, std::string& error) {
    pollfd p{fd_, short(POLLIN | (unsent() ? POLLOUT : 0)), 0};
    readable = poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
    if ((p.revents & (POLLERR | POLLHUP)) && !readable) {
        error = "the connection failed";
        return false;
    }
    return true;
}

bool Connection::read(const std::function<void(const osc::Decoded&)>& handle,
                      const std::function<void(const std::string&)>& bad, std::string& error) {
    uint8_t chunk[65536];
    for (int reads = 0; reads < 64; ++reads) {
        const ssize_t n = recv(fd_, chunk, sizeof(chunk), MSG_DONTWAIT);
        if (n == 0) {
            error = "the server closed the connection";
            return false;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
            if (errno == EINTR) continue;
            error = std::string("receiving: ") + std::strerror(errno);
            return false;
        }
        reader_.feed(chunk, size_t(n));
        std::string problem;
        osc::Decoded message;
        while (reader_.next(packet_, problem)) {
            if (osc::decode(packet_.data(), packet_.size(), message, problem)) handle(message);
            else bad("unreadable packet from the server: " + problem);
            problem.clear();
        }
        if (!problem.empty()) {
            error = "unreadable stream: " + problem;
            return false;
        }
        if (size_t(n) < sizeof(chunk)) return true;
    }
    return true;
}

}  // namespace lmdm
