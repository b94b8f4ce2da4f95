// pkv_bench_blocks — times the block moves of a pool on a CUDA device against plain copies of
// the same bytes measured in the same run:
//   copy_blocks (one kernel, all layers)        vs  cudaMemcpyAsync device-to-device
//   swap_blocks device -> pinned host tier      vs  cudaMemcpyAsync device-to-pinned-host
//   swap_blocks pinned host tier -> device      vs  cudaMemcpyAsync pinned-host-to-device
//   gather_blocks block-major to a device buffer vs cudaMemcpyAsync device-to-device
// plus information rows (consecutive-id swaps, layer-major gather, scatter, gather into pinned
// memory). Targets: each of the four ops above moves its bytes at >= 85 % of the plain copy's
// bandwidth.
//
// Pool: 32 layers, bf16, NHD, H = 8 KV heads, D = 128, block size 16: 64 KiB per layer-block
// (K and V), bytes_per_block read from pkv_pool_get_stats. An op moves 256 blocks (--blocks);
// block ids are random permutations (so swaps are one copy per block, no run to coalesce).
// GB/s = bytes of the blocks moved / time (each byte is read once and written once, for the op
// and the plain copy alike). Eager calls between CUDA events, median over repetitions.
//
// Usage: pkv_bench_blocks [--quick] [--out PATH] [--device N] [--blocks N]
// Exit: 0 = every op ran and verified and every target met; 2 = ran and verified but a target
// was missed; 1 = an error (CUDA failure, pkv error, wrong data).

#include <cuda_runtime.h>

#include "bench_common.h"
#include "pagedkv.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
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


__global__ void fill_random_u64(uint64_t *p, size_t n, uint64_t seed) {
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        uint64_t x = seed * 0x2545F4914F6CDD1Dull + i + 0x9E3779B97F4A7C15ull;
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
        p[i] = x ^ (x >> 31);
    }
}


struct PinnedBuf {
    void *p = nullptr;
    explicit PinnedBuf(size_t n) {
        if (n) CK(cudaMallocHost(&p, n));
    }
    PinnedBuf(const PinnedBuf &) = delete;
    PinnedBuf &operator=(const PinnedBuf &) = delete;
    ~PinnedBuf() {
        if (p) cudaFreeHost(p);
    }
    char *c() const { return static_cast<char *>(p); }
};

struct Pool {
    pkv_pool *p = nullptr;
    ~Pool() {
        if (p) pkv_pool_destroy(p);
    }
};

struct Options {
    bool quick = false;
    std::string out_path;
    int device = 0;
    int64_t blocks = 256;
    int reps = 7;
    double target_us = 20000.0;  // device time per repetition
};


struct Stat {
    bool ok = false;
    double med = NAN, min = NAN, max = NAN;  // µs per call
    long iters = 0;
    std::string err;
};

using Enqueue = std::function<void()>;

// Back-to-back eager calls between two events; µs per call, median over repetitions.
Stat time_eager(cudaStream_t s, const Enqueue &enq, const Options &o) {
    Stat st;
    cudaEvent_t a = nullptr, b = nullptr;
    try {
        CK(cudaEventCreate(&a));
        CK(cudaEventCreate(&b));
        for (int i = 0; i < 2; ++i) enq();  // warm-up
        CK(cudaStreamSynchronize(s));
        CK(cudaEventRecord(a, s));
        enq();
        CK(cudaEventRecord(b, s));
        CK(cudaEventSynchronize(b));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, a, b));
        const double per = std::max(1e-3, 1000.0 * ms);
        const long iters = std::clamp((long)(o.target_us / per), 2L, 2000L);
        std::vector<double> samples;
        for (int r = 0; r < o.reps; ++r) {
            CK(cudaEventRecord(a, s));
            for (long i = 0; i < iters; ++i) enq();
            CK(cudaEventRecord(b, s));
            CK(cudaEventSynchronize(b));
            CK(cudaEventElapsedTime(&ms, a, b));
            samples.push_back(1000.0 * ms / iters);
        }
        st.ok = true;
        st.med = median(samples);
        st.min = *std::min_element(samples.begin(), samples.end());
        st.max = *std::max_element(samples.begin(), samples.end());
        st.iters = iters;
    } catch (const std::exception &e) {
        st.err = e.what();
        cudaGetLastError();
    }
    if (a) cudaEventDestroy(a);
    if (b) cudaEventDestroy(b);
    return st;
}

struct Row {
    std::string op, baseline;
    double bytes = 0;
    Stat op_t, base_t;
    std::string verify = "not run";
    bool verified = false;
    bool target = false;  // one of the four rows with a target
    std::string error;
};

double gbps(double bytes, const Stat &s) { return s.ok ? bytes / (s.med * 1e-6) / 1e9 : NAN; }
std::string fmt_num(double v, const char *f) { return std::isnan(v) ? std::string("n/a") : strf(f, v); }

// Compare `len` bytes at two addresses (device or host; cudaMemcpyDefault).
bool same_bytes(const void *a, const void *b, size_t len, std::vector<char> &ha, std::vector<char> &hb) {
    ha.resize(len);
    hb.resize(len);
    CK(cudaMemcpy(ha.data(), a, len, cudaMemcpyDefault));
    CK(cudaMemcpy(hb.data(), b, len, cudaMemcpyDefault));
    return std::memcmp(ha.data(), hb.data(), len) == 0;
}

void usage() {
    std::puts("usage: pkv_bench_blocks [--quick] [--out PATH] [--device N] [--blocks N]\n"
              "  times copy_blocks, swap_blocks (D2H, H2D) and gather_blocks of a 32-layer bf16 pool\n"
              "  beside plain cudaMemcpyAsync copies of the same bytes (eager, CUDA events, medians).\n"
              "  exit 0: ok; 2: a performance target missed; 1: error or wrong data");
}

Options parse(int argc, char **argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto need = [&](const char *what) -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "pkv_bench_blocks: %s needs a value\n", what);
                std::exit(1);
            }
            return argv[++i];
        };
        if (a == "--quick") o.quick = true;
        else if (a == "--out") o.out_path = need("--out");
        else if (a.rfind("--out=", 0) == 0) o.out_path = a.substr(6);
        else if (a == "--device") o.device = std::atoi(need("--device").c_str());
        else if (a == "--blocks") o.blocks = std::atoll(need("--blocks").c_str());
        else if (a == "-h" || a == "--help") {
            usage();
            std::exit(0);
        } else {
            std::fprintf(stderr, "pkv_bench_blocks: unknown argument '%s'\n", a.c_str());
            usage();
            std::exit(1);
        }
    }
    if (o.blocks < 1) {
        std::fprintf(stderr, "pkv_bench_blocks: --blocks must be >= 1\n");
        std::exit(1);
    }
    if (o.quick) {
        o.reps = 3;
        o.target_us = 8000.0;
    }
    return o;
}

constexpr int64_t kLayers = 32, kH = 8, kD = 128, kBS = 16;

// Everything of one run: the pool, the buffers, the ops; fills `rows`.
void run(const Options &o, int dev, cudaStream_t s, std::vector<Row> &rows, int64_t &bpb_out) {
    const int64_t N = o.blocks;
    std::vector<pkv_layer_spec> specs(kLayers);
    for (pkv_layer_spec &l : specs) {
        l = PKV_LAYER_SPEC_INIT;
        l.format = PKV_CACHE_FORMAT_BF16;
        l.layout = PKV_HEAD_LAYOUT_NHD;
        l.num_heads = kH;
        l.head_size_k = kD;
        l.head_size_v = kD;
    }
    pkv_pool_params params = PKV_POOL_PARAMS_INIT;
    params.device.type = PKV_DEVICE_CUDA;
    params.device.id = dev;
    params.block_size = kBS;
    params.num_layers = kLayers;
    params.layers = specs.data();
    params.num_blocks = 2 * N;  // copy_blocks: sources [0, N), destinations [N, 2N)
    params.num_host_blocks = N;
    Pool pool;
    PK(pkv_pool_create(&pool.p, &params));
    pkv_pool_stats stats;
    std::memset(&stats, 0, sizeof stats);
    stats.struct_size = sizeof stats;
    PK(pkv_pool_get_stats(&stats, pool.p));
    const int64_t bpb = bpb_out = stats.bytes_per_block;
    const size_t bytes = size_t(N * bpb);
    pkv_cache_view v0, h0;
    PK(pkv_pool_layer_view(&v0, pool.p, 0, PKV_TIER_DEVICE));
    PK(pkv_pool_layer_view(&h0, pool.p, 0, PKV_TIER_HOST));
    char *dbase = static_cast<char *>(v0.k_data);  // layer 0's K region starts each block
    char *hbase = static_cast<char *>(h0.k_data);

    fill_random_u64<<<1024, 256, 0, s>>>(reinterpret_cast<uint64_t *>(dbase), size_t(2 * N * bpb) / 8, 1);
    CK(cudaGetLastError());
    CK(cudaMemcpyAsync(hbase, dbase + bytes, bytes, cudaMemcpyDeviceToHost, s));  // host tier: random too
    DevBuf dbuf(bytes), dbuf2(bytes);
    PinnedBuf pbuf(bytes);
    CK(cudaStreamSynchronize(s));

    std::mt19937_64 rng(0xB10C5ull);
    auto perm = [&](int64_t offset) {
        std::vector<int32_t> v(static_cast<size_t>(N));
        std::iota(v.begin(), v.end(), int32_t(offset));
        std::shuffle(v.begin(), v.end(), rng);
        return v;
    };
    const std::vector<int32_t> src = perm(0), dst = perm(N), host = perm(0), seq = perm(0);
    std::vector<int32_t> consecutive(static_cast<size_t>(N));
    std::iota(consecutive.begin(), consecutive.end(), 0);
    std::vector<int32_t> pairs;
    for (int64_t i = 0; i < N; ++i) {
        pairs.push_back(src[size_t(i)]);
        pairs.push_back(dst[size_t(i)]);
    }
    DevBuf dpairs(pairs.size() * 4), dids(size_t(N) * 4);
    CK(cudaMemcpy(dpairs.p, pairs.data(), pairs.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dids.p, seq.data(), size_t(N) * 4, cudaMemcpyHostToDevice));
    pkv_tensor pt{}, it{};
    pt.data = dpairs.p;
    pt.dtype = PKV_DTYPE_INT32;
    pt.device = params.device;
    pt.ndim = 2;
    pt.shape[0] = N, pt.shape[1] = 2, pt.strides[0] = 2, pt.strides[1] = 1;
    it.data = dids.p;
    it.dtype = PKV_DTYPE_INT32;
    it.device = params.device;
    it.ndim = 1;
    it.shape[0] = N, it.strides[0] = 1;
    const pkv_device dbuf_dev = params.device, pinned{PKV_DEVICE_CUDA_HOST, 0};

    std::vector<char> ha, hb;
    auto block = [&](char *base, int64_t id) { return base + id * bpb; };
    // Checks 8 sampled (destination, source) block pairs byte for byte.
    auto check = [&](const std::function<std::pair<const void *, const void *>(int64_t)> &at, size_t len) {
        for (int64_t k = 0; k < 8; ++k) {
            const int64_t i = k == 0 ? 0 : k == 1 ? N - 1 : int64_t(rng() % uint64_t(N));
            auto p = at(i);
            if (!same_bytes(p.first, p.second, len, ha, hb)) return strf("MISMATCH at item %lld", (long long)i);
        }
        return std::string("ok (8 blocks)");
    };

    auto plain = [&](void *d, const void *sp, cudaMemcpyKind kind) {
        return [=]() { CK(cudaMemcpyAsync(d, sp, bytes, kind, s)); };
    };
    auto add = [&](const char *op, const char *base_name, bool target, const Enqueue &enq,
                   const std::function<std::string()> &verify, const Enqueue &baseline) {
        Row r;
        r.op = op;
        r.baseline = base_name;
        r.bytes = double(bytes);
        r.target = target;
        std::fprintf(stderr, "[bench] %s ...\n", op);
        try {
            enq();
            CK(cudaStreamSynchronize(s));
            r.verify = verify();
            r.verified = r.verify.rfind("ok", 0) == 0;
            r.op_t = time_eager(s, enq, o);
            r.base_t = time_eager(s, baseline, o);
        } catch (const std::exception &e) {
            r.error = e.what();
            cudaGetLastError();
        }
        std::fprintf(stderr, "[bench]   verify %s; op %s us, %s %s us\n", r.verify.c_str(),
                     fmt_num(r.op_t.med, "%.1f").c_str(), base_name, fmt_num(r.base_t.med, "%.1f").c_str());
        rows.push_back(r);
    };

    add("copy_blocks", "D2D memcpy", true, [&] { PK(pkv_pool_copy_blocks(pool.p, &pt, s)); },
        [&] {
            return check([&](int64_t i) { return std::make_pair((const void *)block(dbase, dst[size_t(i)]),
                                                                (const void *)block(dbase, src[size_t(i)])); },
                         size_t(bpb));
        },
        plain(dbase + bytes, dbase, cudaMemcpyDeviceToDevice));
    add("swap D2H (random ids)", "D2H memcpy", true,
        [&] { PK(pkv_pool_swap_blocks(pool.p, PKV_TIER_DEVICE, src.data(), PKV_TIER_HOST, host.data(), N, s)); },
        [&] {
            return check([&](int64_t i) { return std::make_pair((const void *)block(hbase, host[size_t(i)]),
                                                                (const void *)block(dbase, src[size_t(i)])); },
                         size_t(bpb));
        },
        plain(pbuf.p, dbase, cudaMemcpyDeviceToHost));
    add("swap H2D (random ids)", "H2D memcpy", true,
        [&] { PK(pkv_pool_swap_blocks(pool.p, PKV_TIER_HOST, host.data(), PKV_TIER_DEVICE, dst.data(), N, s)); },
        [&] {
            return check([&](int64_t i) { return std::make_pair((const void *)block(dbase, dst[size_t(i)]),
                                                                (const void *)block(hbase, host[size_t(i)])); },
                         size_t(bpb));
        },
        plain(dbase + bytes, pbuf.p, cudaMemcpyHostToDevice));
    add("swap D2H (consecutive ids)", "D2H memcpy", false,
        [&] {
            PK(pkv_pool_swap_blocks(pool.p, PKV_TIER_DEVICE, consecutive.data(), PKV_TIER_HOST, consecutive.data(), N, s));
        },
        [&] {
            return check([&](int64_t i) { return std::make_pair((const void *)block(hbase, i),
                                                                (const void *)block(dbase, i)); },
                         size_t(bpb));
        },
        plain(pbuf.p, dbase, cudaMemcpyDeviceToHost));
    add("gather_blocks block-major -> device", "D2D memcpy", true,
        [&] { PK(pkv_pool_gather_blocks(dbuf.p, dbuf_dev, PKV_BLOCK_ORDER_BLOCK_MAJOR, pool.p, &it, s)); },
        [&] {
            return check([&](int64_t i) { return std::make_pair((const void *)(dbuf.c() + i * bpb),
                                                                (const void *)block(dbase, seq[size_t(i)])); },
                         size_t(bpb));
        },
        plain(dbuf2.p, dbase, cudaMemcpyDeviceToDevice));
    add("gather_blocks layer-major -> device", "D2D memcpy", false,
        [&] { PK(pkv_pool_gather_blocks(dbuf.p, dbuf_dev, PKV_BLOCK_ORDER_LAYER_MAJOR, pool.p, &it, s)); },
        [&] {
            // Layer l of block i: [layer][N][64 KiB]; layer bytes = bpb / kLayers (no padding here).
            const int64_t lb = bpb / kLayers;
            return check([&](int64_t i) {
                const int64_t l = i % kLayers;
                return std::make_pair((const void *)(dbuf.c() + (l * N + i) * lb),
                                      (const void *)(block(dbase, seq[size_t(i)]) + l * lb));
            }, size_t(lb));
        },
        plain(dbuf2.p, dbase, cudaMemcpyDeviceToDevice));
    add("scatter_blocks block-major <- device", "D2D memcpy", false,
        [&] { PK(pkv_pool_scatter_blocks(pool.p, &it, dbuf2.p, dbuf_dev, PKV_BLOCK_ORDER_BLOCK_MAJOR, s)); },
        [&] {
            return check([&](int64_t i) { return std::make_pair((const void *)block(dbase, seq[size_t(i)]),
                                                                (const void *)(dbuf2.c() + i * bpb)); },
                         size_t(bpb));
        },
        plain(dbuf.p, dbuf2.p, cudaMemcpyDeviceToDevice));
    add("gather_blocks block-major -> pinned", "D2H memcpy", false,
        [&] { PK(pkv_pool_gather_blocks(pbuf.p, pinned, PKV_BLOCK_ORDER_BLOCK_MAJOR, pool.p, &it, s)); },
        [&] {
            return check([&](int64_t i) { return std::make_pair((const void *)(pbuf.c() + i * bpb),
                                                                (const void *)block(dbase, seq[size_t(i)])); },
                         size_t(bpb));
        },
        plain(hbase, dbase, cudaMemcpyDeviceToHost));
    CK(cudaStreamSynchronize(s));
}

}  // namespace

int main(int argc, char **argv) {
    const Options o = parse(argc, argv);
    std::setvbuf(stdout, nullptr, _IOLBF, 0);

    cudaDeviceProp prop{};
    int driver = 0, runtime = 0, ndev = 0;
    try {
        CK(cudaGetDeviceCount(&ndev));
        if (o.device < 0 || o.device >= ndev) throw BenchError(strf("device %d requested, %d present", o.device, ndev));
        CK(cudaSetDevice(o.device));
        CK(cudaGetDeviceProperties(&prop, o.device));
        CK(cudaDriverGetVersion(&driver));
        CK(cudaRuntimeGetVersion(&runtime));
        CK(cudaFree(nullptr));
    } catch (const std::exception &e) {
        const std::string msg = strf("FAIL  setup: no usable CUDA device: %s\n", e.what());
        std::fputs(msg.c_str(), stdout);
        if (!o.out_path.empty())
            if (FILE *f = std::fopen(o.out_path.c_str(), "w")) {
                std::fputs(msg.c_str(), f);
                std::fclose(f);
            }
        return 1;
    }

    std::vector<Row> rows;
    int64_t bpb = 0;
    std::string setup_error;
    cudaStream_t s = nullptr;
    try {
        CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
        run(o, o.device, s, rows, bpb);
    } catch (const std::exception &e) {
        setup_error = e.what();
        cudaGetLastError();
    }
    if (s) cudaStreamDestroy(s);

    char date[64];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
    std::string out;
    auto add = [&](const std::string &x) { out += x; };
    add("## pkv block moves benchmark\n\n");
    add(strf("Device: %s (sm_%d%d), %d SMs, %.1f GiB | driver %d.%d, runtime %d.%d | %s%s\n\n", prop.name,
             prop.major, prop.minor, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0, driver / 1000,
             (driver % 1000) / 10, runtime / 1000, (runtime % 1000) / 10, date, o.quick ? " | --quick" : ""));
    add(strf("pagedkv %s (%s). Pool: %lld layers bf16 NHD, H=%lld, D=%lld, block_size=%lld; bytes_per_block "
             "%lld (%.1f MiB); %lld blocks per op = %.1f MiB; random block ids; eager calls, CUDA events, median "
             "of %d repetitions; GB/s = bytes of the blocks moved / time.\n\n",
             pkv_version_string(), pkv_build_info(), (long long)kLayers, (long long)kH, (long long)kD,
             (long long)kBS, (long long)bpb, bpb / 1048576.0, (long long)o.blocks,
             double(o.blocks) * bpb / 1048576.0, o.reps));
    add("| op | µs | GB/s | plain copy | copy µs | copy GB/s | % of copy | verify |\n");
    add("|---|---:|---:|---|---:|---:|---:|---|\n");
    for (const Row &r : rows) {
        if (!r.error.empty()) {
            add(strf("| %s | ERROR | | %s | | | | %s |\n", r.op.c_str(), r.baseline.c_str(), r.error.c_str()));
            continue;
        }
        const double g = gbps(r.bytes, r.op_t), c = gbps(r.bytes, r.base_t);
        add(strf("| %s | %s | %s | %s | %s | %s | %s | %s |\n", r.op.c_str(), fmt_num(r.op_t.med, "%.1f").c_str(),
                 fmt_num(g, "%.1f").c_str(), r.baseline.c_str(), fmt_num(r.base_t.med, "%.1f").c_str(),
                 fmt_num(c, "%.1f").c_str(), fmt_num(100.0 * g / c, "%.1f").c_str(), r.verify.c_str()));
    }

    bool error = !setup_error.empty(), missed = false;
    std::string errs;
    if (!setup_error.empty()) errs += "- setup: " + setup_error + "\n";
    for (const Row &r : rows) {
        if (!r.error.empty()) {
            error = true;
            errs += strf("- %s: %s\n", r.op.c_str(), r.error.c_str());
            continue;
        }
        if (!r.verified) {
            error = true;
            errs += strf("- %s: verification failed: %s\n", r.op.c_str(), r.verify.c_str());
        }
        if (!r.op_t.ok || !r.base_t.ok) {
            error = true;
            errs += strf("- %s: timing failed: %s%s\n", r.op.c_str(), r.op_t.err.c_str(), r.base_t.err.c_str());
        }
    }
    if (!errs.empty()) add("\nErrors:\n\n" + errs);

    add("\nTargets:\n\n```\n");
    for (const Row &r : rows) {
        if (!r.target) continue;
        const double g = r.error.empty() ? gbps(r.bytes, r.op_t) : NAN;
        const double c = r.error.empty() ? gbps(r.bytes, r.base_t) : NAN;
        const double pct = 100.0 * g / c;
        const bool pass = !std::isnan(pct) && pct >= 85.0 && r.verified;
        missed |= !pass;
        add(strf("%s  bandwidth    %-36s %lld blocks %s GB/s = %s%% of %s %s GB/s (target >= 85%%)\n",
                 pass ? "PASS" : "FAIL", r.op.c_str(), (long long)o.blocks, fmt_num(g, "%.1f").c_str(),
                 fmt_num(pct, "%.1f").c_str(), r.baseline.c_str(), fmt_num(c, "%.1f").c_str()));
    }
    if (rows.empty()) {
        missed = true;
        add("FAIL  bandwidth    block moves: nothing ran (see Errors)\n");
    }
    add(strf("%s  correctness  every block op ran, every measurement succeeded, sampled blocks match%s\n",
             error ? "FAIL" : "PASS", error ? " (see Errors)" : ""));
    add("```\n");

    std::fputs(out.c_str(), stdout);
    std::fflush(stdout);
    if (!o.out_path.empty()) {
        FILE *f = std::fopen(o.out_path.c_str(), "w");
        if (!f) {
            std::fprintf(stderr, "pkv_bench_blocks: cannot write %s: %s\n", o.out_path.c_str(), std::strerror(errno));
            return 1;
        }
        std::fputs(out.c_str(), f);
        std::fclose(f);
    }
    return error ? 1 : (missed ? 2 : 0);
}
