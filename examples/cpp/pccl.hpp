// pccl.hpp: RAII wrappers over pccl's C API (pccl.h) for C++17 programs.
//
// Errors are exceptions: a failed call throws pccl::Error, which carries the
// pcclResult_t (code()) and the call's name, so a training loop catches what it can
// recover from (Error::retryable(): a lost peer, a failed topology update) and lets the
// rest end the program. Master and Communicator own their C handles: move-only, released
// by their destructors, which never throw. Copy this file into your project; it needs
// nothing but pccl.h.
#pragma once

#include <pccl.h>

#include <arpa/inet.h>
#include <sys/socket.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>

namespace pccl {

/// The name of a result code as pccl.h spells it.
inline const char *result_name(pcclResult_t r) {
    switch (r) {
        case pcclSuccess: return "pcclSuccess";
        case pcclNotInitialized: return "pcclNotInitialized";
        case pcclInternalError: return "pcclInternalError";
        case pcclInvalidArgument: return "pcclInvalidArgument";
        case pcclInvalidUsage: return "pcclInvalidUsage";
        case pcclTooFewPeers: return "pcclTooFewPeers";
        case pcclMasterConnectionFailed: return "pcclMasterConnectionFailed";
        case pcclRankConnectionFailed: return "pcclRankConnectionFailed";
        case pcclRankConnectionLost: return "pcclRankConnectionLost";
        case pcclNoSharedStateAvailable: return "pcclNoSharedStateAvailable";
        case pcclPendingAsyncOps: return "pcclPendingAsyncOps";
        case pcclUpdateTopologyFailed: return "pcclUpdateTopologyFailed";
        case pcclTopologyOptimizationFailed: return "pcclTopologyOptimizationFailed";
    }
    return "unknown pcclResult_t";
}

/// A pccl call that did not succeed.
class Error : public std::runtime_error {
public:
    Error(pcclResult_t code, const char *call)
        : std::runtime_error(std::string(call) + " failed: " + result_name(code)), code_(code) {}

    pcclResult_t code() const noexcept { return code_; }

    /// Whether the run goes on after this error and the call may simply be made again: a
    /// peer died or could not be reached (the others carry on without it), or the world
    /// shrank below two between a check and the call.
    bool retryable() const noexcept {
        return code_ == pcclRankConnectionLost || code_ == pcclRankConnectionFailed ||
               code_ == pcclUpdateTopologyFailed || code_ == pcclTooFewPeers;
    }

private:
    pcclResult_t code_;
};

inline void check(pcclResult_t r, const char *call) {
    if (r != pcclSuccess) throw Error(r, call);
}

/// pcclInit: once per process, before any communicator.
inline void init() { check(pcclInit(), "pcclInit"); }

/// "a.b.c.d:port" as a socket address (IPv4); throws std::invalid_argument.
inline ccoip_socket_address_t parse_address(const std::string &text) {
    auto colon = text.rfind(':');
    ccoip_socket_address_t a;
    std::memset(&a, 0, sizeof a);
    a.inet.protocol = inetIPv4;
    if (colon == std::string::npos ||
        inet_pton(AF_INET, text.substr(0, colon).c_str(), a.inet.ipv4.data) != 1)
        throw std::invalid_argument("not an IPv4 address ip:port: '" + text + "'");
    std::size_t used = 0;
    unsigned long port = 0;
    try {
        port = std::stoul(text.substr(colon + 1), &used);
    } catch (const std::exception &) {
        used = 0;
    }
    if (used == 0 || used != text.size() - colon - 1 || port > 65535)
        throw std::invalid_argument("bad port in '" + text + "'");
    a.port = static_cast<uint16_t>(port);
    return a;
}

/// A master: coordinates a run, carries no tensor data. Listens from run() until it is
/// interrupted or destroyed.
class Master {
public:
    explicit Master(const ccoip_socket_address_t &listen) {
        check(pcclCreateMaster(listen, &handle_), "pcclCreateMaster");
    }
    ~Master() {
        // Interrupts and awaits a running master first.
        if (handle_ != nullptr) pcclDestroyMaster(handle_);
    }
    Master(Master &&other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    Master &operator=(Master &&other) noexcept {
        std::swap(handle_, other.handle_);
        return *this;
    }
    Master(const Master &) = delete;
    Master &operator=(const Master &) = delete;

    /// Starts serving on a background thread; returns at once.
    void run() { check(pcclRunMaster(handle_), "pcclRunMaster"); }
    /// Asks the master to stop; returns at once.
    void interrupt() { check(pcclInterruptMaster(handle_), "pcclInterruptMaster"); }
    /// Blocks until the master has stopped.
    void await_termination() {
        check(pcclMasterAwaitTermination(handle_), "pcclMasterAwaitTermination");
    }

private:
    pcclMasterInstance_t *handle_ = nullptr;
};

/// One peer's membership in a run.
class Communicator {
public:
    Communicator(const ccoip_socket_address_t &master, uint32_t peer_group,
                 uint32_t connections_per_neighbour) {
        pcclCommCreateParams_t params;
        std::memset(&params, 0, sizeof params);
        params.master_address = master;
        params.peer_group = peer_group;
        params.p2p_connection_pool_size = connections_per_neighbour;
        check(pcclCreateCommunicator(&params, &handle_), "pcclCreateCommunicator");
    }
    ~Communicator() {
        // Leaves the run; async ops still in flight fail and are awaited.
        if (handle_ != nullptr) pcclDestroyCommunicator(handle_);
    }
    Communicator(Communicator &&other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    Communicator &operator=(Communicator &&other) noexcept {
        std::swap(handle_, other.handle_);
        return *this;
    }
    Communicator(const Communicator &) = delete;
    Communicator &operator=(const Communicator &) = delete;

    /// Where this peer's p2p listener binds (port 0: any free port); before connect().
    void set_bind_address(const ccoip_socket_address_t &address) {
        check(pcclCommSetBindAddress(handle_, &address), "pcclCommSetBindAddress");
    }
    /// Returns once the master has accepted this peer into the run.
    void connect() { check(pcclConnect(handle_), "pcclConnect"); }

    // Joint calls: every accepted peer makes them, in the same order.

    bool peers_pending() const {
        bool pending = false;
        check(pcclArePeersPending(handle_, &pending), "pcclArePeersPending");
        return pending;
    }
    /// Admits the peers waiting to join.
    void update_topology() { check(pcclUpdateTopology(handle_), "pcclUpdateTopology"); }
    /// Makes `state` identical on every peer: the tensors of the most popular content
    /// (at the highest revision) are fetched by whoever differs.
    pcclSharedStateSyncInfo_t sync_shared_state(pcclSharedState_t &state) const {
        pcclSharedStateSyncInfo_t info{};
        check(pcclSynchronizeSharedState(handle_, &state,
                                         PCCL_SHARED_STATE_SYNC_STRATEGY_ENFORCE_POPULAR, &info),
              "pcclSynchronizeSharedState");
        return info;
    }
    /// Reduces `count` floats from `send` into `recv` (may be the same buffer) over the
    /// ring; bit-identical on every peer. A lost peer fails it on all: call it again.
    pcclReduceInfo_t all_reduce(const float *send, float *recv, std::size_t count,
                                pcclRedOp_t op, uint64_t tag) const {
        pcclReduceDescriptor_t desc;
        std::memset(&desc, 0, sizeof desc);
        desc.count = count;
        desc.op = op;
        desc.tag = tag;
        desc.src_descriptor.datatype = pcclFloat;
        desc.src_descriptor.distribution_hint = pcclDistributionNone;
        desc.quantization_options.quantized_datatype = pcclFloat;
        desc.quantization_options.algorithm = pcclQuantNone;
        pcclReduceInfo_t info{};
        check(pcclAllReduce(send, recv, &desc, handle_, &info), "pcclAllReduce");
        return info;
    }

    int world_size() const {
        int n = 0;
        check(pcclGetAttribute(handle_, PCCL_ATTRIBUTE_GLOBAL_WORLD_SIZE, &n), "pcclGetAttribute");
        return n;
    }

private:
    pcclComm_t *handle_ = nullptr;
};

}  // namespace pccl
