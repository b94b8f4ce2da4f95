// pkv_bench_write — times pkv_write_kv on a CUDA device against two floors measured in the
// same run: a device-to-device cudaMemcpyAsync moving the same bytes (the bandwidth ceiling)
// and an empty kernel <<<1,32>>> (the launch floor), eager and under CUDA-graph replay.
//
// Workload: H = 8 KV heads, D = 128, block size 16, NHD cache, int64 slot mapping holding a
// random permutation of the cache's slots (unique), bf16 inputs drawn at random (never
// zeros); two cache formats: bf16 (exact copy) and fp8 e4m3 with a per-tensor scale that lives
// in device memory. T in {1, 64, 1024, 16384, 65536} by default.
//
// Bytes that must move per call: T*H*D*(in_bytes + cache_bytes)*2 (K and V) + T*8 (slots).
// The copy baseline copies T*H*D*(in_bytes + cache_bytes) bytes (so that bytes read + written
// equal the op's K/V traffic) and its GB/s counts read + write.
//
// When one call's working set is small against the L2 cache, the inputs, slot sets and cache
// slots rotate over R independent sets (R*bytes >= 3x L2, R <= 16), for the op and the copy
// alike, so that mid-size rows are not L2-resident; decode-size rows stay L2-resident even so.
//
// Usage: pkv_bench_write [--quick] [--out PATH] [--sizes 1,64,...] [--device N]
//                        [--sequential-slots] [--all-formats]
// Exit: 0 = everything ran, every write verified, every target met; 2 = ran and verified but a
// target was missed; 1 = an error (CUDA failure, pkv error, wrong data).

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "bench_common.h"
#include "pagedkv.h"

#include <algorithm>
#include <cmath>
#include <cerrno>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using namespace pkv_bench;


// ------------------------------------------------------------------ kernels ----------------

__global__ void empty_kernel() {}

__device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// Uniform in [lo, hi), bf16-rounded. Exact zeros are replaced by `lo` (never zeros).
__global__ void fill_random_bf16(__nv_bfloat16 *p, size_t n, uint64_t seed, float lo, float hi) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        uint64_t r = splitmix64(seed * 0x2545F4914F6CDD1Dull + i);
        float u = (float)(r >> 40) * (1.0f / 16777216.0f);
        __nv_bfloat16 v = __float2bfloat16(lo + (hi - lo) * u);
        if (__bfloat162float(v) == 0.0f) v = __float2bfloat16(lo);
        p[i] = v;
    }
}

// ------------------------------------------------------------------ helpers ----------------


struct Stream {
    cudaStream_t s = nullptr;
    Stream() { CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
    ~Stream() {
        if (s) cudaStreamDestroy(s);
    }
};

struct EventPair {
    cudaEvent_t a = nullptr, b = nullptr;
    EventPair() {
        CK(cudaEventCreate(&a));
        CK(cudaEventCreate(&b));
    }
    ~EventPair() {
        if (a) cudaEventDestroy(a);
        if (b) cudaEventDestroy(b);
    }
};

void fill_random(void *p, size_t n_bf16, uint64_t seed, cudaStream_t s) {
    if (!n_bf16) return;
    fill_random_bf16<<<1024, 256, 0, s>>>(static_cast<__nv_bfloat16 *>(p), n_bf16, seed, -2.0f,
                                         2.0f);
    CK(cudaGetLastError());
}

float bf16_bits_to_float(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// OCP e4m3fn decode: bias 7, no infinities, S.1111.111 is NaN.
float e4m3_to_float(uint8_t q) {
    int s = q >> 7, e = (q >> 3) & 0xF, m = q & 7;
    if (e == 0xF && m == 7) return NAN;
    float v = (e == 0) ? std::ldexp((float)m / 8.0f, -6) : std::ldexp(1.0f + (float)m / 8.0f, e - 7);
    return s ? -v : v;
}


// ------------------------------------------------------------------ timing -----------------

struct Options {
    bool quick = false;
    std::string out_path;
    std::vector<int64_t> sizes{1, 64, 1024, 16384, 65536};
    int device = 0;
    bool sequential_slots = false; // slots 0..T-1 in order instead of a random permutation
    bool all_formats = false;      // also f16 and fp8_e5m2 caches
    int reps = 7;
    double target_us = 20000.0; // device time per repetition
};

struct Stat {
    bool ok = false;
    double med = NAN, min = NAN, max = NAN; // µs per call
    long iters = 0;                         // calls (eager) or replays (graph) per repetition
    std::string err;
    double spread_pct() const { return ok && med > 0 ? 100.0 * (max - min) / med : NAN; }
};

using Enqueue = std::function<void(long i)>; // enqueue call number i on the timing stream

constexpr int kGraphCalls = 20;

Stat finish(std::vector<double> samples, long iters) {
    Stat st;
    st.ok = true;
    st.med = median(samples);
    st.min = *std::min_element(samples.begin(), samples.end());
    st.max = *std::max_element(samples.begin(), samples.end());
    st.iters = iters;
    return st;
}

// Back-to-back eager launches between two events; µs per call, median over repetitions.
Stat time_eager(cudaStream_t s, const Enqueue &enq, const Options &o) {
    Stat st;
    try {
        EventPair ev;
        for (long i = 0; i < 5; ++i) enq(i); // warm-up (module load, first-call setup)
        CK(cudaStreamSynchronize(s));
        const long calib = 10;
        CK(cudaEventRecord(ev.a, s));
        for (long i = 0; i < calib; ++i) enq(i);
        CK(cudaEventRecord(ev.b, s));
        CK(cudaEventSynchronize(ev.b));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, ev.a, ev.b));
        double per = std::max(1e-3, 1000.0 * ms / calib);
        long iters = std::clamp((long)(o.target_us / per), 10L, 20000L);
        std::vector<double> samples;
        for (int r = 0; r < o.reps; ++r) {
            CK(cudaEventRecord(ev.a, s));
            for (long i = 0; i < iters; ++i) enq(i);
            CK(cudaEventRecord(ev.b, s));
            CK(cudaEventSynchronize(ev.b));
            CK(cudaEventElapsedTime(&ms, ev.a, ev.b));
            samples.push_back(1000.0 * ms / iters);
        }
        CK(cudaGetLastError());
        return finish(samples, iters);
    } catch (const std::exception &e) {
        st.err = e.what();
        return st;
    }
}

// Capture kGraphCalls calls into one graph on the (non-default) stream `s`; time replays.
Stat time_graph(cudaStream_t s, const Enqueue &enq, const Options &o) {
    Stat st;
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    try {
        EventPair ev;
        for (long i = 0; i < 3; ++i) enq(i); // eager warm-up before capture
        CK(cudaStreamSynchronize(s));
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
        try {
            for (long i = 0; i < kGraphCalls; ++i) enq(i);
        } catch (...) {
            cudaGraph_t g = nullptr;
            cudaStreamEndCapture(s, &g); // terminate the (possibly invalidated) capture
            if (g) cudaGraphDestroy(g);
            cudaGetLastError();
            throw;
        }
        CK(cudaStreamEndCapture(s, &graph));
        CK(cudaGraphInstantiate(&exec, graph, 0));
        CK(cudaGraphUpload(exec, s));
        CK(cudaGraphLaunch(exec, s)); // warm-up replay
        CK(cudaStreamSynchronize(s));
        CK(cudaEventRecord(ev.a, s));
        CK(cudaGraphLaunch(exec, s));
        CK(cudaEventRecord(ev.b, s));
        CK(cudaEventSynchronize(ev.b));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, ev.a, ev.b));
        double per_replay = std::max(1e-3, 1000.0 * ms);
        long replays = std::clamp((long)(o.target_us / per_replay), 3L, 5000L);
        std::vector<double> samples;
        for (int r = 0; r < o.reps; ++r) {
            CK(cudaEventRecord(ev.a, s));
            for (long i = 0; i < replays; ++i) CK(cudaGraphLaunch(exec, s));
            CK(cudaEventRecord(ev.b, s));
            CK(cudaEventSynchronize(ev.b));
            CK(cudaEventElapsedTime(&ms, ev.a, ev.b));
            samples.push_back(1000.0 * ms / ((double)replays * kGraphCalls));
        }
        CK(cudaGetLastError());
        st = finish(samples, replays);
    } catch (const std::exception &e) {
        st = Stat{};
        st.err = e.what();
    }
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    return st;
}

// ------------------------------------------------------------------ one row ----------------

constexpr int64_t kH = 8, kD = 128, kBS = 16;
constexpr float kKScale = 0.05f, kVScale = 0.04f; // |x| < 2 -> |x/scale| <= 50 (e4m3 max 448)

struct Config {
    const char *name;
    pkv_cache_format format;
    int cache_bytes;
};

struct Row {
    std::string op;
    int64_t T = 0;
    int R = 1;
    double op_bytes = 0, copy_bytes = 0;
    Stat op_eager, op_graph, copy_eager, copy_graph, empty_eager, empty_graph;
    bool verified = false;
    std::string verify_msg;
    std::string error; // fatal error of the row (setup / verification)
};

std::string verify(const Config &cfg, int64_t T, const pkv_cache_view &view,
                   const std::vector<int64_t> &slots0, const DevBuf &key, const DevBuf &val,
                   std::mt19937_64 &rng) {
    const int64_t row = kH * kD;
    std::vector<int64_t> toks;
    if (T <= 64) {
        toks.resize(T);
        std::iota(toks.begin(), toks.end(), 0);
    } else {
        toks = {0, T - 1};
        std::uniform_int_distribution<int64_t> pick(1, T - 2);
        for (int i = 0; i < 62; ++i) toks.push_back(pick(rng));
    }
    std::vector<uint16_t> in(row);
    std::vector<uint8_t> cache(row * cfg.cache_bytes);
    long checked = 0;
    if (cfg.format != PKV_CACHE_FORMAT_BF16 && cfg.format != PKV_CACHE_FORMAT_FP8_E4M3)
        return "not verified (--all-formats diagnostic row)";
    for (int kv = 0; kv < 2; ++kv) {
        const char *src = (kv ? val : key).c();
        const char *dst = static_cast<const char *>(kv ? view.v_data : view.k_data);
        const float scale = kv ? kVScale : kKScale;
        for (int64_t t : toks) {
            int64_t slot = slots0[t];
            CK(cudaMemcpy(in.data(), src + t * row * 2, row * 2, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(cache.data(), dst + slot * row * cfg.cache_bytes, row * cfg.cache_bytes,
                          cudaMemcpyDeviceToHost));
            for (int64_t e = 0; e < row; ++e) {
                float x = bf16_bits_to_float(in[e]);
                if (cfg.format == PKV_CACHE_FORMAT_BF16) {
                    uint16_t c;
                    std::memcpy(&c, &cache[e * 2], 2);
                    if (c != in[e])
                        return strf("%s mismatch: token %lld slot %lld elem %lld: cache 0x%04x "
                                    "input 0x%04x",
                                    kv ? "V" : "K", (long long)t, (long long)slot, (long long)e,
                                    c, in[e]);
                } else {
                    float y = e4m3_to_float(cache[e]) * scale;
                    // RNE to e4m3: half an ulp, 2^-4 relative (normal) or 2^-10 (subnormal).
                    float tol = std::fabs(x) * (1.0f / 16.0f + 1e-6f) + scale * 0x1p-10f + 1e-7f;
                    if (!(std::fabs(y - x) <= tol))
                        return strf("%s mismatch: token %lld slot %lld elem %lld: fp8 0x%02x "
                                    "-> %g, input %g (scale %g)",
                                    kv ? "V" : "K", (long long)t, (long long)slot, (long long)e,
                                    cache[e], y, x, scale);
                }
                ++checked;
            }
        }
    }
    return strf("ok (%ld elements of %zu tokens)", checked, toks.size());
}

Row run_row(const Config &cfg, int64_t T, const Options &o, const cudaDeviceProp &prop, int dev,
            cudaStream_t s, std::mt19937_64 &rng) {
    Row row;
    row.op = strf("write_kv bf16->%s", cfg.name);
    row.T = T;
    try {
        const int64_t elems = T * kH * kD;
        const int in_b = 2;
        row.op_bytes = (double)elems * (in_b + cfg.cache_bytes) * 2 + (double)T * 8;
        const size_t copy_bytes = (size_t)elems * (in_b + cfg.cache_bytes);
        row.copy_bytes = (double)copy_bytes;
        const double l2 = prop.l2CacheSize > 0 ? prop.l2CacheSize : 50e6;
        int R = (int)std::ceil(3.0 * l2 / row.op_bytes);
        R = std::clamp(R, 1, 16);
        row.R = R;

        // Inputs: R sets of [T, H, D] bf16 for K and V.
        DevBuf key((size_t)R * elems * 2), val((size_t)R * elems * 2);
        fill_random(key.p, (size_t)R * elems, 1000 + 17 * T, s);
        fill_random(val.p, (size_t)R * elems, 2000 + 31 * T, s);

        // Cache: enough blocks for R*T unique slots.
        const int64_t num_blocks = (R * T + kBS - 1) / kBS;
        const int64_t nslots = num_blocks * kBS;
        const size_t cache_bytes = (size_t)nslots * kH * kD * cfg.cache_bytes;
        DevBuf kc(cache_bytes), vc(cache_bytes);
        CK(cudaMemsetAsync(kc.p, 0xFF, cache_bytes, s)); // poison: NaN in bf16 and e4m3
        CK(cudaMemsetAsync(vc.p, 0xFF, cache_bytes, s));

        std::vector<int64_t> perm(nslots);
        std::iota(perm.begin(), perm.end(), 0);
        if (!o.sequential_slots) std::shuffle(perm.begin(), perm.end(), rng);
        perm.resize((size_t)R * T);
        DevBuf slots(perm.size() * sizeof(int64_t));
        CK(cudaMemcpy(slots.p, perm.data(), slots.bytes, cudaMemcpyHostToDevice));

        DevBuf scales(2 * sizeof(float));
        const float hs[2] = {kKScale, kVScale};
        CK(cudaMemcpy(scales.p, hs, sizeof hs, cudaMemcpyHostToDevice));

        pkv_cache_view view = PKV_CACHE_VIEW_INIT;
        view.format = cfg.format;
        view.device.type = PKV_DEVICE_CUDA;
        view.device.id = dev;
        view.num_blocks = num_blocks;
        view.block_size = kBS;
        view.num_heads = kH;
        view.head_size_k = kD;
        view.head_size_v = kD;
        view.k_data = kc.p;
        view.v_data = vc.p;
        view.scale_mode = PKV_SCALE_PER_TENSOR;
        if (cfg.format != PKV_CACHE_FORMAT_BF16) {
            view.k_scale = scales.as<float>();
            view.v_scale = scales.as<float>() + 1;
        }
        PK(pkv_cache_view_check(&view));

        std::vector<pkv_tensor> kt(R), vt(R), st(R);
        for (int r = 0; r < R; ++r) {
            pkv_tensor t{};
            t.dtype = PKV_DTYPE_BF16;
            t.device.type = PKV_DEVICE_CUDA;
            t.device.id = dev;
            t.ndim = 3;
            t.shape[0] = T, t.shape[1] = kH, t.shape[2] = kD;
            t.strides[0] = kH * kD, t.strides[1] = kD, t.strides[2] = 1;
            t.data = key.c() + (size_t)r * elems * 2;
            kt[r] = t;
            t.data = val.c() + (size_t)r * elems * 2;
            vt[r] = t;
            pkv_tensor m{};
            m.dtype = PKV_DTYPE_INT64;
            m.device = t.device;
            m.ndim = 1;
            m.shape[0] = T;
            m.strides[0] = 1;
            m.data = slots.as<int64_t>() + (size_t)r * T;
            st[r] = m;
        }
        // The timing stream does not order against the legacy stream that cudaMemcpy used.
        CK(cudaDeviceSynchronize());

        // Verify: one call on set 0, then compare sampled slots with the inputs.
        PK(pkv_write_kv(&view, &kt[0], &vt[0], &st[0], nullptr, s));
        CK(cudaGetLastError());
        CK(cudaStreamSynchronize(s));
        std::vector<int64_t> slots0(perm.begin(), perm.begin() + T);
        row.verify_msg = verify(cfg, T, view, slots0, key, val, rng);
        row.verified = row.verify_msg.rfind("ok", 0) == 0;

        Enqueue op = [&](long i) {
            int r = (int)(i % R);
            PK(pkv_write_kv(&view, &kt[r], &vt[r], &st[r], nullptr, s));
        };
        row.op_eager = time_eager(s, op, o);
        row.op_graph = time_graph(s, op, o);

        // Copy baseline: same rotation, same bytes read + written.
        {
            DevBuf csrc((size_t)R * copy_bytes), cdst((size_t)R * copy_bytes);
            fill_random(csrc.p, (size_t)R * copy_bytes / 2, 3000 + T, s);
            CK(cudaStreamSynchronize(s));
            Enqueue cp = [&](long i) {
                size_t off = (size_t)(i % R) * copy_bytes;
                CK(cudaMemcpyAsync(cdst.c() + off, csrc.c() + off, copy_bytes,
                                   cudaMemcpyDeviceToDevice, s));
            };
            row.copy_eager = time_eager(s, cp, o);
            row.copy_graph = time_graph(s, cp, o);
        }

        Enqueue empty = [&](long) {
            empty_kernel<<<1, 32, 0, s>>>();
            CK(cudaGetLastError());
        };
        row.empty_eager = time_eager(s, empty, o);
        row.empty_graph = time_graph(s, empty, o);
        CK(cudaStreamSynchronize(s));
    } catch (const std::exception &e) {
        row.error = e.what();
        cudaGetLastError();
    }
    return row;
}

// ------------------------------------------------------------------ output -----------------

std::string fmt_us(const Stat &s) { return s.ok ? strf("%.2f", s.med) : std::string("n/a"); }
double gbps(double bytes, const Stat &s) { return s.ok ? bytes / (s.med * 1e-6) / 1e9 : NAN; }
std::string fmt_num(double v, const char *f = "%.1f") { return std::isnan(v) ? "n/a" : strf(f, v); }

void usage() {
    std::puts("usage: pkv_bench_write [--quick] [--out PATH] [--sizes T1,T2,...] [--device N]\n"
              "  times pkv_write_kv (H=8, D=128, block 16, NHD; bf16->bf16 and bf16->fp8_e4m3)\n"
              "  eager and under CUDA-graph replay, beside a D2D copy and an empty kernel.\n"
              "  --sequential-slots: slots 0..T-1 in order; --all-formats: add f16 and fp8_e5m2 rows\n"
              "  exit 0: ok; 2: a performance target missed; 1: error or wrong data");
}

Options parse(int argc, char **argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto need = [&](const char *what) -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "pkv_bench_write: %s needs a value\n", what);
                std::exit(1);
            }
            return argv[++i];
        };
        if (a == "--quick") {
            o.quick = true;
        } else if (a == "--sequential-slots") {
            o.sequential_slots = true;
        } else if (a == "--all-formats") {
            o.all_formats = true;
        } else if (a == "--out") {
            o.out_path = need("--out");
        } else if (a.rfind("--out=", 0) == 0) {
            o.out_path = a.substr(6);
        } else if (a == "--device") {
            o.device = std::atoi(need("--device").c_str());
        } else if (a == "--sizes") {
            std::string v = need("--sizes");
            o.sizes.clear();
            size_t p = 0;
            while (p < v.size()) {
                size_t q = v.find(',', p);
                if (q == std::string::npos) q = v.size();
                long long t = std::atoll(v.substr(p, q - p).c_str());
                if (t <= 0) {
                    std::fprintf(stderr, "pkv_bench_write: bad size in --sizes '%s'\n", v.c_str());
                    std::exit(1);
                }
                o.sizes.push_back(t);
                p = q + 1;
            }
        } else if (a == "-h" || a == "--help") {
            usage();
            std::exit(0);
        } else {
            std::fprintf(stderr, "pkv_bench_write: unknown argument '%s'\n", a.c_str());
            usage();
            std::exit(1);
        }
    }
    if (o.quick) {
        o.reps = 3;
        o.target_us = 4000.0;
    }
    return o;
}

} // namespace

int main(int argc, char **argv) {
    Options o = parse(argc, argv);
    std::setvbuf(stdout, nullptr, _IOLBF, 0);

    cudaDeviceProp prop{};
    int driver = 0, runtime = 0, ndev = 0;
    try {
        CK(cudaGetDeviceCount(&ndev));
        if (o.device < 0 || o.device >= ndev)
            throw BenchError(strf("device %d requested, %d present", o.device, ndev));
        CK(cudaSetDevice(o.device));
        CK(cudaGetDeviceProperties(&prop, o.device));
        CK(cudaDriverGetVersion(&driver));
        CK(cudaRuntimeGetVersion(&runtime));
        CK(cudaFree(nullptr)); // create the context now
    } catch (const std::exception &e) {
        std::fprintf(stderr, "pkv_bench_write: no usable CUDA device: %s\n", e.what());
        std::string msg = strf("FAIL  setup: no usable CUDA device: %s\n", e.what());
        std::fputs(msg.c_str(), stdout);
        if (!o.out_path.empty())
            if (FILE *f = std::fopen(o.out_path.c_str(), "w")) {
                std::fputs(msg.c_str(), f);
                std::fclose(f);
            }
        return 1;
    }

    std::vector<Config> configs = {{"bf16", PKV_CACHE_FORMAT_BF16, 2}, {"fp8_e4m3", PKV_CACHE_FORMAT_FP8_E4M3, 1}};
    if (o.all_formats) {
        configs.push_back({"f16", PKV_CACHE_FORMAT_F16, 2});
        configs.push_back({"fp8_e5m2", PKV_CACHE_FORMAT_FP8_E5M2, 1});
    }
    std::mt19937_64 rng(0x5EEDull);
    std::vector<Row> rows;
    try {
        Stream stream;
        for (const Config &cfg : configs) {
            for (int64_t T : o.sizes) {
                std::fprintf(stderr, "[bench] write_kv bf16->%s T=%lld ...\n", cfg.name,
                             (long long)T);
                Row r = run_row(cfg, T, o, prop, o.device, stream.s, rng);
                if (!r.error.empty())
                    std::fprintf(stderr, "[bench]   ERROR: %s\n", r.error.c_str());
                else
                    std::fprintf(stderr, "[bench]   verify %s; graph %s us, eager %s us\n",
                                 r.verify_msg.c_str(), fmt_us(r.op_graph).c_str(),
                                 fmt_us(r.op_eager).c_str());
                rows.push_back(std::move(r));
            }
        }
    } catch (const std::exception &e) { // stream creation failed
        Row r;
        r.op = "setup";
        r.error = e.what();
        rows.push_back(r);
    }

    // Copy bandwidth at the largest size: the bf16 row with the largest T whose copy ran.
    double copy_peak = NAN;
    int64_t copy_peak_T = 0;
    for (const Row &r : rows)
        if (r.error.empty() && r.copy_graph.ok && r.op == "write_kv bf16->bf16" &&
            r.T >= copy_peak_T) {
            copy_peak = gbps(2 * r.copy_bytes, r.copy_graph);
            copy_peak_T = r.T;
        }

    char date[64];
    std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));

    std::string out;
    auto add = [&](const std::string &s) { out += s; };
    add("## pkv_write_kv benchmark\n\n");
    add(strf("Device: %s (sm_%d%d), %d SMs, L2 %.1f MB, %.1f GiB | driver %d.%d, runtime %d.%d | "
             "copy bandwidth at the largest size (T=%lld, graph, read+write): %s GB/s | %s%s\n\n",
             prop.name, prop.major, prop.minor, prop.multiProcessorCount, prop.l2CacheSize / 1e6,
             prop.totalGlobalMem / 1073741824.0, driver / 1000, (driver % 1000) / 10,
             runtime / 1000, (runtime % 1000) / 10, (long long)copy_peak_T,
             fmt_num(copy_peak, "%.0f").c_str(), date, o.quick ? " | --quick" : ""));
    add(strf("pagedkv %s (%s). H=%lld, D=%lld, block_size=%lld, NHD, int64 random unique slots; "
             "bytes = T*H*D*(in+cache)*2 + T*8; graph = %d calls per captured graph.\n\n",
             pkv_version_string(), pkv_build_info(), (long long)kH, (long long)kD,
             (long long)kBS, kGraphCalls));
    add("| op | T | eager µs | graph µs | GB/s (graph) | copy GB/s (graph) | % of copy | "
        "empty-kernel graph µs | ratio vs empty |\n");
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (const Row &r : rows) {
        if (!r.error.empty()) {
            add(strf("| %s | %lld | ERROR | | | | | | |\n", r.op.c_str(), (long long)r.T));
            continue;
        }
        double g = gbps(r.op_bytes, r.op_graph);
        double c = gbps(2 * r.copy_bytes, r.copy_graph);
        double ratio = (r.op_graph.ok && r.empty_graph.ok) ? r.op_graph.med / r.empty_graph.med : NAN;
        add(strf("| %s | %lld | %s | %s | %s | %s | %s | %s | %s |\n", r.op.c_str(), (long long)r.T,
                 fmt_us(r.op_eager).c_str(), fmt_us(r.op_graph).c_str(), fmt_num(g, "%.0f").c_str(),
                 fmt_num(c, "%.0f").c_str(), fmt_num(100.0 * g / c, "%.1f").c_str(),
                 fmt_us(r.empty_graph).c_str(), fmt_num(ratio, "%.2f").c_str()));
    }

    add("\nBaselines and spread (µs per call, median; spread = (max-min)/median of the op's graph "
        "timing over repetitions; R = rotating input/slot sets):\n\n");
    add("| op | T | R | MiB moved | copy eager µs | copy graph µs | empty eager µs | empty graph µs "
        "| eager iters | graph replays | op graph spread % | verify |\n");
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for (const Row &r : rows) {
        if (!r.error.empty()) {
            add(strf("| %s | %lld | | | | | | | | | | ERROR: %s |\n", r.op.c_str(), (long long)r.T,
                     r.error.c_str()));
            continue;
        }
        add(strf("| %s | %lld | %d | %.3f | %s | %s | %s | %s | %ld | %ld | %s | %s |\n",
                 r.op.c_str(), (long long)r.T, r.R, r.op_bytes / 1048576.0,
                 fmt_us(r.copy_eager).c_str(), fmt_us(r.copy_graph).c_str(),
                 fmt_us(r.empty_eager).c_str(), fmt_us(r.empty_graph).c_str(), r.op_eager.iters,
                 r.op_graph.iters, fmt_num(r.op_graph.spread_pct(), "%.1f").c_str(),
                 r.verify_msg.c_str()));
    }

    // Timing failures (a row that ran but some measurement failed).
    bool error = false;
    std::string errs;
    for (const Row &r : rows) {
        if (!r.error.empty()) {
            error = true;
            errs += strf("- %s T=%lld: %s\n", r.op.c_str(), (long long)r.T, r.error.c_str());
            continue;
        }
        if (!r.verified) {
            error = true;
            errs += strf("- %s T=%lld: verification failed: %s\n", r.op.c_str(), (long long)r.T,
                         r.verify_msg.c_str());
        }
        const Stat *ss[] = {&r.op_eager, &r.op_graph, &r.copy_eager, &r.copy_graph,
                            &r.empty_eager, &r.empty_graph};
        const char *names[] = {"op eager", "op graph", "copy eager", "copy graph", "empty eager",
                               "empty graph"};
        for (int i = 0; i < 6; ++i)
            if (!ss[i]->ok) {
                error = true;
                errs += strf("- %s T=%lld %s: %s\n", r.op.c_str(), (long long)r.T, names[i],
                             ss[i]->err.c_str());
            }
    }
    if (!errs.empty()) add("\nErrors:\n\n" + errs);

    // Targets.
    add("\nTargets:\n\n```\n");
    bool missed = false;
    int ntargets = 0;
    for (const Config &cfg : configs) {
        std::string op = strf("write_kv bf16->%s", cfg.name);
        for (const Row &r : rows) {
            if (r.op != op) continue;
            if (r.T == 65536) {
                ++ntargets;
                double g = r.error.empty() ? gbps(r.op_bytes, r.op_graph) : NAN;
                double c = r.error.empty() ? gbps(2 * r.copy_bytes, r.copy_graph) : NAN;
                double pct = 100.0 * g / c;
                bool pass = !std::isnan(pct) && pct >= 90.0;
                missed |= !pass;
                add(strf("%s  bandwidth    %-24s T=%-6lld %s GB/s = %s%% of copy %s GB/s "
                         "(target >= 90%%)\n",
                         pass ? "PASS" : "FAIL", op.c_str(), (long long)r.T,
                         fmt_num(g, "%.0f").c_str(), fmt_num(pct, "%.1f").c_str(),
                         fmt_num(c, "%.0f").c_str()));
            }
            if (r.T <= 64) {
                ++ntargets;
                bool have = r.error.empty() && r.op_graph.ok && r.empty_graph.ok;
                double ratio = have ? r.op_graph.med / r.empty_graph.med : NAN;
                bool pass = have && ratio <= 1.5;
                missed |= !pass;
                add(strf("%s  launch-floor %-24s T=%-6lld graph %s us vs empty kernel %s us = "
                         "%sx (target <= 1.5x)\n",
                         pass ? "PASS" : "FAIL", op.c_str(), (long long)r.T,
                         fmt_us(r.op_graph).c_str(), fmt_us(r.empty_graph).c_str(),
                         fmt_num(ratio, "%.2f").c_str()));
            }
        }
    }
    if (ntargets == 0) add("(no row with T = 65536 or T <= 64: no target evaluated)\n");
    add(strf("%s  correctness  every row ran, every measurement succeeded, sampled slots match "
             "the input%s\n",
             error ? "FAIL" : "PASS", error ? " (see Errors)" : ""));
    add("```\n");

    std::fputs(out.c_str(), stdout);
    std::fflush(stdout);
    if (!o.out_path.empty()) {
        FILE *f = std::fopen(o.out_path.c_str(), "w");
        if (!f) {
            std::fprintf(stderr, "pkv_bench_write: cannot write %s: %s\n", o.out_path.c_str(),
                         std::strerror(errno));
            return 1;
        }
        std::fputs(out.c_str(), f);
        std::fclose(f);
    }
    return error ? 1 : (missed ? 2 : 0);
}
