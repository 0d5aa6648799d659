// mlp.hpp: a two-layer perceptron (16 inputs -> 32 tanh -> 1) in plain C++, with what
// DiLoCo needs around it: a synthetic regression task, Adam for the inner steps and
// Nesterov SGD for the outer step. Nothing here talks to pccl.
//
// Every computation is sequential float arithmetic in a fixed order, so equal inputs give
// equal bits: the outer step, fed the same all-reduced pseudo-gradient on every peer,
// leaves every peer with the same weights.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace mlp {

constexpr std::size_t kIn = 16;
constexpr std::size_t kHidden = 32;
// One flat vector: W1 (kHidden rows of kIn), b1 (kHidden), w2 (kHidden), b2 (1).
constexpr std::size_t kW1 = 0;
constexpr std::size_t kB1 = kW1 + kHidden * kIn;
constexpr std::size_t kW2 = kB1 + kHidden;
constexpr std::size_t kB2 = kW2 + kHidden;
constexpr std::size_t kParams = kB2 + 1;

/// splitmix64: a small, fully specified generator, so data and weights are the same on
/// every platform (std::normal_distribution is not specified bit for bit).
class Rng {
public:
    explicit Rng(uint64_t seed) : state_(seed) {}
    uint64_t next() {
        uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    /// Uniform in (0, 1).
    double uniform() { return (static_cast<double>(next() >> 11) + 0.5) / 9007199254740992.0; }
    /// Standard normal (Box-Muller).
    float normal() {
        double u = uniform(), v = uniform();
        return static_cast<float>(std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v));
    }

private:
    uint64_t state_;
};

/// Initial weights: uniform in +-1/sqrt(fan_in), from `seed` (the same on every peer).
inline std::vector<float> init_params(uint64_t seed) {
    Rng rng(seed);
    std::vector<float> p(kParams);
    auto fill = [&](std::size_t from, std::size_t n, double fan_in) {
        double bound = 1.0 / std::sqrt(fan_in);
        for (std::size_t i = 0; i < n; i++)
            p[from + i] = static_cast<float>((2.0 * rng.uniform() - 1.0) * bound);
    };
    fill(kW1, kHidden * kIn, kIn);
    fill(kB1, kHidden, kIn);
    fill(kW2, kHidden, kHidden);
    fill(kB2, 1, kHidden);
    return p;
}

/// Regression on a fixed random teacher, y = v . tanh(W x); each peer draws its own
/// inputs, and all evaluate on the same fixed set.
class Task {
public:
    static constexpr std::size_t kTeacherHidden = 8;
    static constexpr std::size_t kEval = 512;

    explicit Task(uint64_t data_seed) : rng_(data_seed) {
        Rng teacher(1234);
        for (auto &w : w_) w = teacher.normal();
        for (auto &v : v_) v = teacher.normal() / 2.0f;
        Rng eval(999);
        eval_x_.resize(kEval * kIn);
        for (auto &x : eval_x_) x = eval.normal();
        eval_y_ = targets(eval_x_);
    }

    /// A fresh batch of `n` examples from this peer's stream.
    void batch(std::size_t n, std::vector<float> &x, std::vector<float> &y) {
        x.resize(n * kIn);
        for (auto &v : x) v = rng_.normal();
        y = targets(x);
    }

    const std::vector<float> &eval_x() const { return eval_x_; }
    const std::vector<float> &eval_y() const { return eval_y_; }

private:
    std::vector<float> targets(const std::vector<float> &x) const {
        std::vector<float> y(x.size() / kIn);
        for (std::size_t n = 0; n < y.size(); n++) {
            float out = 0.0f;
            for (std::size_t h = 0; h < kTeacherHidden; h++) {
                float a = 0.0f;
                for (std::size_t i = 0; i < kIn; i++) a += w_[h * kIn + i] * x[n * kIn + i];
                out += v_[h] * std::tanh(a);
            }
            y[n] = out;
        }
        return y;
    }

    Rng rng_;
    float w_[kTeacherHidden * kIn];
    float v_[kTeacherHidden];
    std::vector<float> eval_x_, eval_y_;
};

/// Mean squared error of `p` on (x, y); with `grad` non-null, also its gradient.
inline float loss(const std::vector<float> &p, const std::vector<float> &x,
                  const std::vector<float> &y, std::vector<float> *grad) {
    const std::size_t n = y.size();
    if (grad != nullptr) grad->assign(kParams, 0.0f);
    float hidden[kHidden];
    double total = 0.0;
    for (std::size_t s = 0; s < n; s++) {
        const float *xs = &x[s * kIn];
        float out = p[kB2];
        for (std::size_t h = 0; h < kHidden; h++) {
            float a = p[kB1 + h];
            for (std::size_t i = 0; i < kIn; i++) a += p[kW1 + h * kIn + i] * xs[i];
            hidden[h] = std::tanh(a);
            out += p[kW2 + h] * hidden[h];
        }
        float err = out - y[s];
        total += static_cast<double>(err) * err;
        if (grad == nullptr) continue;
        // d(err^2 / n)/d(out) = 2 err / n, back through both layers.
        float d_out = 2.0f * err / static_cast<float>(n);
        auto &g = *grad;
        g[kB2] += d_out;
        for (std::size_t h = 0; h < kHidden; h++) {
            g[kW2 + h] += d_out * hidden[h];
            float d_a = d_out * p[kW2 + h] * (1.0f - hidden[h] * hidden[h]);
            g[kB1 + h] += d_a;
            for (std::size_t i = 0; i < kIn; i++) g[kW1 + h * kIn + i] += d_a * xs[i];
        }
    }
    return static_cast<float>(total / static_cast<double>(n));
}

/// Adam, for the inner steps. Its moments are this peer's own (DiLoCo keeps the inner
/// optimizer local); only the outer state is shared.
class Adam {
public:
    explicit Adam(float lr) : lr_(lr), m_(kParams, 0.0f), v_(kParams, 0.0f) {}

    void step(std::vector<float> &p, const std::vector<float> &g) {
        const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
        t_++;
        float c1 = 1.0f - std::pow(b1, static_cast<float>(t_));
        float c2 = 1.0f - std::pow(b2, static_cast<float>(t_));
        for (std::size_t i = 0; i < kParams; i++) {
            m_[i] = b1 * m_[i] + (1.0f - b1) * g[i];
            v_[i] = b2 * v_[i] + (1.0f - b2) * g[i] * g[i];
            p[i] -= lr_ * (m_[i] / c1) / (std::sqrt(v_[i] / c2) + eps);
        }
    }

private:
    float lr_;
    std::vector<float> m_, v_;
    long t_ = 0;
};

/// The outer step: SGD with Nesterov momentum (PyTorch's formula) on `outer`, the
/// gradient being the averaged pseudo-gradient (outer - locally trained weights).
inline void nesterov(std::vector<float> &outer, std::vector<float> &momentum,
                     const std::vector<float> &grad, float lr, float mu) {
    for (std::size_t i = 0; i < kParams; i++) {
        momentum[i] = mu * momentum[i] + grad[i];
        outer[i] -= lr * (grad[i] + mu * momentum[i]);
    }
}

}  // namespace mlp
