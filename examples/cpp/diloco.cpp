// diloco: DiLoCo training of a small MLP (mlp.hpp) over pccl, in C++17.
//
// Each peer runs --inner-steps Adam steps on its own data from the current outer weights,
// all-reduces (averages) the pseudo-gradient `outer - local`, and applies it to the outer
// weights with Nesterov SGD. The outer weights and the outer momentum are the shared
// state: a peer that joins late receives them at its first sync and trains on from there.
// A peer that dies (kill -9) fails the op it was in on every survivor, which retries on
// the smaller ring; peers waiting to join are admitted at the top of each step.
//
//   diloco master [--listen IP:PORT]      a master (default 127.0.0.1:48148), until Ctrl-C
//   diloco peer [--master IP:PORT] [...]  a peer; `diloco --help` lists the options
//
// Build against an installed pccl (./scripts/install, README "Installing the C library"):
//   cmake -S examples/cpp -B target/cpp -DCMAKE_PREFIX_PATH=/usr/local && cmake --build target/cpp
//
// Output, one line each: "step revision=R world=W loss=L" per outer step, and at the end
// "final revision=R world=W loss=L initial_loss=L0 hash=H resync_rx=B", H being a 64-bit
// FNV-1a hash of the shared state's bytes (--out FILE also writes those bytes) and B the
// bytes received by syncs after the first: 0 when every peer computed the same outer
// step, bit for bit, so that no sync had anything to repair.
#include "mlp.hpp"
#include "pccl.hpp"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace {

const char kUsage[] =
    "usage: diloco master [--listen IP:PORT]\n"
    "       diloco peer [OPTIONS]\n"
    "peer options (defaults in brackets):\n"
    "  --master IP:PORT         the master [127.0.0.1:48148]\n"
    "  --bind IP:PORT           where the p2p listener binds; port 0: any [127.0.0.1:0]\n"
    "  --until-revision N       stop once the shared state reaches revision N [50]\n"
    "  --min-final-world N      ...and at least N peers are in the run [1]\n"
    "  --max-steps N            at most N outer steps [2000]\n"
    "  --time-limit-s S         give up (exit 1) after S seconds [600]\n"
    "  --inner-steps N          Adam steps per outer step [10]\n"
    "  --batch N                examples per inner step [32]\n"
    "  --inner-lr X             [0.005]\n"
    "  --outer-lr X             [0.7]\n"
    "  --outer-momentum X       [0.9]\n"
    "  --data-seed N            this peer's data stream [its pid]\n"
    "  --step-delay-ms MS       sleep per outer step, to watch a run [0]\n"
    "  --out FILE               write the final shared state's bytes to FILE\n";

struct Options {
    std::string master = "127.0.0.1:48148";
    std::string bind = "127.0.0.1:0";
    long until_revision = 50, min_final_world = 1, max_steps = 2000, time_limit_s = 600;
    long inner_steps = 10, batch = 32, step_delay_ms = 0;
    double inner_lr = 0.005, outer_lr = 0.7, outer_momentum = 0.9;
    unsigned long long data_seed = 0;
    std::string out;
};

[[noreturn]] void usage_error(const std::string &why) {
    std::cerr << "diloco: " << why << "\n\n" << kUsage;
    std::exit(2);
}

long to_long(const std::string &name, const std::string &v, long min) {
    char *end = nullptr;
    long n = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || n < min) usage_error("bad " + name + " '" + v + "'");
    return n;
}

double to_double(const std::string &name, const std::string &v) {
    char *end = nullptr;
    double x = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0' || !(x >= 0.0)) usage_error("bad " + name + " '" + v + "'");
    return x;
}

Options parse_peer_options(int argc, char **argv) {
    Options o;
    o.data_seed = static_cast<unsigned long long>(getpid());
    std::map<std::string, std::function<void(const std::string &)>> flags = {
        {"--master", [&](const std::string &v) { o.master = v; }},
        {"--bind", [&](const std::string &v) { o.bind = v; }},
        {"--until-revision", [&](const std::string &v) { o.until_revision = to_long("--until-revision", v, 0); }},
        {"--min-final-world", [&](const std::string &v) { o.min_final_world = to_long("--min-final-world", v, 1); }},
        {"--max-steps", [&](const std::string &v) { o.max_steps = to_long("--max-steps", v, 1); }},
        {"--time-limit-s", [&](const std::string &v) { o.time_limit_s = to_long("--time-limit-s", v, 1); }},
        {"--inner-steps", [&](const std::string &v) { o.inner_steps = to_long("--inner-steps", v, 1); }},
        {"--batch", [&](const std::string &v) { o.batch = to_long("--batch", v, 1); }},
        {"--inner-lr", [&](const std::string &v) { o.inner_lr = to_double("--inner-lr", v); }},
        {"--outer-lr", [&](const std::string &v) { o.outer_lr = to_double("--outer-lr", v); }},
        {"--outer-momentum", [&](const std::string &v) { o.outer_momentum = to_double("--outer-momentum", v); }},
        {"--data-seed", [&](const std::string &v) { o.data_seed = static_cast<unsigned long long>(to_long("--data-seed", v, 0)); }},
        {"--step-delay-ms", [&](const std::string &v) { o.step_delay_ms = to_long("--step-delay-ms", v, 0); }},
        {"--out", [&](const std::string &v) { o.out = v; }},
    };
    for (int i = 2; i < argc; i += 2) {
        auto flag = flags.find(argv[i]);
        if (flag == flags.end()) usage_error(std::string("unknown option '") + argv[i] + "'");
        if (i + 1 >= argc) usage_error(std::string(argv[i]) + " needs a value");
        flag->second(argv[i + 1]);
    }
    return o;
}

void log_line(const std::string &line) {
    std::cout << line << std::endl;  // flushed: a harness reads it as it comes
}

/// FNV-1a, 64-bit, over the bytes of each vector in turn.
uint64_t fnv1a(const std::vector<const std::vector<float> *> &parts) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const auto *v : parts) {
        const auto *bytes = reinterpret_cast<const unsigned char *>(v->data());
        for (std::size_t i = 0; i < v->size() * sizeof(float); i++) {
            h ^= bytes[i];
            h *= 0x100000001b3ull;
        }
    }
    return h;
}

int run_master(int argc, char **argv) {
    std::string listen = "127.0.0.1:48148";
    for (int i = 2; i < argc; i += 2) {
        if (std::string(argv[i]) != "--listen" || i + 1 >= argc) usage_error("bad master arguments");
        listen = argv[i + 1];
    }
    // Block SIGINT and SIGTERM before the master starts its threads (they inherit the
    // mask), so that only sigwait below receives them.
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, nullptr);

    pccl::Master master(pccl::parse_address(listen));
    master.run();
    log_line("master listening on " + listen);
    int sig = 0;
    sigwait(&stop, &sig);
    master.interrupt();
    master.await_termination();
    log_line("master stopped");
    return 0;
}

int run_peer(const Options &o) {
    using Clock = std::chrono::steady_clock;
    const auto deadline = Clock::now() + std::chrono::seconds(o.time_limit_s);
    auto check_deadline = [&] {
        if (Clock::now() > deadline)
            throw std::runtime_error("time limit of " + std::to_string(o.time_limit_s) + " s reached");
    };

    mlp::Task task(o.data_seed);
    mlp::Adam inner(static_cast<float>(o.inner_lr));
    // The shared state: outer weights (the same initial ones everywhere; the first sync
    // would equalise them anyway) and the outer optimizer's momentum.
    std::vector<float> outer = mlp::init_params(0);
    std::vector<float> momentum(mlp::kParams, 0.0f);
    const float initial_loss = mlp::loss(outer, task.eval_x(), task.eval_y(), nullptr);

    pcclTensorInfo_t tensors[2];
    std::memset(tensors, 0, sizeof tensors);
    tensors[0].name = "outer";
    tensors[0].data = outer.data();
    tensors[0].count = outer.size();
    tensors[0].datatype = pcclFloat;
    tensors[0].device_type = pcclDeviceCpu;
    tensors[1] = tensors[0];
    tensors[1].name = "momentum";
    tensors[1].data = momentum.data();
    pcclSharedState_t state;
    state.revision = 0;
    state.count = 2;
    state.infos = tensors;

    pccl::init();
    pccl::Communicator comm(pccl::parse_address(o.master), 0, 1);
    comm.set_bind_address(pccl::parse_address(o.bind));
    comm.connect();
    log_line("connected");

    std::vector<float> local, pseudo(mlp::kParams), avg(mlp::kParams), grad, x, y;
    float loss = initial_loss;
    int world = 0;
    bool first = true, synced = false;
    uint64_t resync_rx = 0;
    for (long steps = 0; steps < o.max_steps;) {
        check_deadline();
        try {
            // Joint calls: admit newcomers only when some are waiting. (A newcomer was
            // admitted by the others' update, so it starts with the sync.)
            if (!first && comm.peers_pending()) comm.update_topology();
            first = false;
            world = comm.world_size();
            if (world < 2) {  // alone: wait for company
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
                continue;
            }
            auto info = comm.sync_shared_state(state);
            if (!synced) {
                synced = true;
                log_line("first sync: revision " + std::to_string(state.revision) + ", received " +
                         std::to_string(info.rx_bytes) + " bytes");
            } else {
                resync_rx += info.rx_bytes;
            }
        } catch (const pccl::Error &e) {
            if (!e.retryable()) throw;
            log_line(std::string("retrying the step: ") + e.what());
            continue;
        }
        // Every peer decides here on the same synced revision and world, so all stop
        // together, holding the same shared state.
        if (static_cast<long>(state.revision) >= o.until_revision && world >= o.min_final_world)
            break;

        // Inner steps from the outer weights, on this peer's data.
        local = outer;
        for (long s = 0; s < o.inner_steps; s++) {
            task.batch(static_cast<std::size_t>(o.batch), x, y);
            mlp::loss(local, x, y, &grad);
            inner.step(local, grad);
        }
        for (std::size_t i = 0; i < mlp::kParams; i++) pseudo[i] = outer[i] - local[i];

        // Average the pseudo-gradients; a lost peer fails the op everywhere: retry it on
        // the smaller ring (the send buffer is untouched), unless this peer is now alone.
        bool reduced = false;
        while (!reduced) {
            check_deadline();
            try {
                comm.all_reduce(pseudo.data(), avg.data(), pseudo.size(), pcclAvg, 0);
                reduced = true;
            } catch (const pccl::Error &e) {
                if (!e.retryable()) throw;
                world = comm.world_size();
                log_line(std::string(e.what()) + "; world is now " + std::to_string(world));
                if (world < 2) break;
            }
        }
        if (reduced)
            mlp::nesterov(outer, momentum, avg, static_cast<float>(o.outer_lr),
                          static_cast<float>(o.outer_momentum));
        loss = mlp::loss(outer, task.eval_x(), task.eval_y(), nullptr);
        state.revision++;
        steps++;
        char line[128];
        std::snprintf(line, sizeof line, "step revision=%llu world=%d loss=%.6f",
                      static_cast<unsigned long long>(state.revision), world, loss);
        log_line(line);
        if (o.step_delay_ms > 0)
            std::this_thread::sleep_for(std::chrono::milliseconds(o.step_delay_ms));
    }

    loss = mlp::loss(outer, task.eval_x(), task.eval_y(), nullptr);
    char line[224];
    std::snprintf(line, sizeof line,
                  "final revision=%llu world=%d loss=%.6f initial_loss=%.6f hash=%016llx "
                  "resync_rx=%llu",
                  static_cast<unsigned long long>(state.revision), world, loss, initial_loss,
                  static_cast<unsigned long long>(fnv1a({&outer, &momentum})),
                  static_cast<unsigned long long>(resync_rx));
    log_line(line);
    if (!o.out.empty()) {
        std::ofstream f(o.out, std::ios::binary);
        f.write(reinterpret_cast<const char *>(outer.data()),
                static_cast<std::streamsize>(outer.size() * sizeof(float)));
        f.write(reinterpret_cast<const char *>(momentum.data()),
                static_cast<std::streamsize>(momentum.size() * sizeof(float)));
        if (!f.flush()) throw std::runtime_error("cannot write " + o.out);
    }
    return 0;  // the communicator's destructor leaves the run
}

}  // namespace

int main(int argc, char **argv) {
    try {
        std::string mode = argc > 1 ? argv[1] : "";
        if (mode == "master") return run_master(argc, argv);
        if (mode == "peer") return run_peer(parse_peer_options(argc, argv));
        if (mode == "-h" || mode == "--help") {
            std::cout << kUsage;
            return 0;
        }
        usage_error("say master or peer");
    } catch (const std::exception &e) {
        std::cerr << "diloco: " << e.what() << std::endl;
        return 1;
    }
}
