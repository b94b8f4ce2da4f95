// pkv_bench_formats: write and gather of every cache format, H = 8, D = 128, block size 16,
// bf16 inputs / outputs, T in {64, 16384} (issue 4). Each op is timed as a CUDA graph of 20
// calls replayed (median over repetitions), beside a graph of device-to-device copies moving
// the same number of bytes (read + write) in the same run.
//
//   pkv_bench_formats [--quick] [--out FILE.md] [--format NAME] [--tokens T]
//       exit 0, 3 (a target missed) or 1 (an error); --format / --tokens run one format / T only
//
// Bytes of an op: what it must read and write — inputs, codes, scale words and indices. "% of
// copy" divides the op's rate by the copy's rate at the same byte count. fp8_ds_mla writes and
// gathers 576-value MLA entries (one head) through pkv_write_mla, T entries.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench_common.h"

using namespace pkv_bench;

namespace {

constexpr int64_t H = 8, D = 128, BS = 16, MLA = 576;
constexpr int kCalls = 20;

struct Format {
    const char *name;
    pkv_cache_format format;
    int64_t row_bytes;  // bytes of one head row's codes
    bool planes;        // per-token-head scale planes
};

const Format kFormats[] = {
    {"bf16", PKV_CACHE_FORMAT_BF16, 2 * D, false},
    {"fp8_e4m3", PKV_CACHE_FORMAT_FP8_E4M3, D, false},
    {"int8_per_token_head", PKV_CACHE_FORMAT_INT8_PER_TOKEN_HEAD, D, true},
    {"fp8_per_token_head", PKV_CACHE_FORMAT_FP8_PER_TOKEN_HEAD, D, true},
    {"int4_per_token_head", PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD, D / 2, true},
    {"int2_per_token_head", PKV_CACHE_FORMAT_INT2_PER_TOKEN_HEAD, D / 4, true},
    {"fp8_ds_mla", PKV_CACHE_FORMAT_FP8_DS_MLA, 656, false},
};

struct Timing {
    double us = NAN;  // per call, median
};

// Median µs per call of `enqueue` captured kCalls times into a graph and replayed.
double graph_us(cudaStream_t s, const std::function<void()> &enqueue, int reps) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < kCalls; ++i) enqueue();
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    CK(cudaGraphLaunch(ge, s));  // warm up
    CK(cudaStreamSynchronize(s));
    // Replays per repetition: about 2 ms of work.
    CK(cudaEventRecord(a, s));
    CK(cudaGraphLaunch(ge, s));
    CK(cudaEventRecord(b, s));
    CK(cudaEventSynchronize(b));
    float one = 0;
    CK(cudaEventElapsedTime(&one, a, b));
    const int replays = std::max(1, std::min(2000, int(2.0 / std::max(one, 1e-4f))));
    std::vector<double> samples;
    for (int r = 0; r < reps; ++r) {
        CK(cudaEventRecord(a, s));
        for (int i = 0; i < replays; ++i) CK(cudaGraphLaunch(ge, s));
        CK(cudaEventRecord(b, s));
        CK(cudaEventSynchronize(b));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, a, b));
        samples.push_back(1000.0 * ms / (replays * kCalls));
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    return median(samples);
}

pkv_tensor tensor(void *data, pkv_dtype dt, std::vector<int64_t> shape) {
    pkv_tensor t;
    std::memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dt;
    t.device = {PKV_DEVICE_CUDA, 0};
    t.ndim = int32_t(shape.size());
    int64_t stride = 1;
    for (int i = t.ndim - 1; i >= 0; --i) {
        t.shape[i] = shape[size_t(i)];
        t.strides[i] = stride;
        stride *= shape[size_t(i)];
    }
    return t;
}

struct Row {
    std::string format, op;
    int64_t T = 0;
    double bytes = 0, us = NAN, copy_us = NAN;
    std::string error;
};

void upload(void *dst, const void *src, size_t n) { CK(cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice)); }

// Write and gather rows of one format at T tokens.
void run_format(const Format &f, int64_t T, int reps, cudaStream_t s, std::vector<Row> &rows) {
    const bool mla = f.format == PKV_CACHE_FORMAT_FP8_DS_MLA;
    const int64_t heads = mla ? 1 : H, dim = mla ? MLA : D, sides = mla ? 1 : 2;
    const int64_t blocks = 2 * T / BS + 8, slots_n = blocks * BS;
    const int64_t row = heads * f.row_bytes;
    std::mt19937_64 rng(0xF0F0 + uint64_t(T));

    DevBuf kc(size_t(slots_n * row)), vc(size_t(slots_n * row));
    DevBuf kp(size_t(slots_n * heads * 4)), vp(size_t(slots_n * heads * 4));
    DevBuf key(size_t(T * heads * dim * 2)), value(size_t(T * heads * dim * 2));
    DevBuf slots(size_t(T * 8)), scale(4);
    DevBuf out_k(size_t(T * heads * dim * 2)), out_v(size_t(T * heads * dim * 2));
    // Inputs: bf16 values in [-4, 4).
    std::vector<uint16_t> host(static_cast<size_t>(T * heads * dim));
    std::uniform_real_distribution<float> u(-4.0f, 4.0f);
    for (auto &h : host) {
        float x = u(rng);
        uint32_t bits;
        std::memcpy(&bits, &x, 4);
        h = uint16_t(bits >> 16);
    }
    upload(key.p, host.data(), host.size() * 2);
    upload(value.p, host.data(), host.size() * 2);
    std::vector<int64_t> perm(static_cast<size_t>(slots_n));
    for (int64_t i = 0; i < slots_n; ++i) perm[size_t(i)] = i;
    std::shuffle(perm.begin(), perm.end(), rng);
    upload(slots.p, perm.data(), size_t(T) * 8);
    const float one = 1.0f / 64;
    upload(scale.p, &one, 4);

    pkv_cache_view v = PKV_CACHE_VIEW_INIT;
    v.format = f.format;
    v.device = {PKV_DEVICE_CUDA, 0};
    v.num_blocks = blocks;
    v.block_size = BS;
    v.num_heads = heads;
    v.head_size_k = dim;
    v.k_data = kc.p;
    v.v_data = mla ? nullptr : vc.p;
    v.k_scale = v.v_scale = scale.as<float>();
    if (f.planes) {
        v.k_scale_plane = kp.as<float>();
        v.v_scale_plane = vp.as<float>();
    }
    const pkv_tensor kt = tensor(key.p, PKV_DTYPE_BF16, {T, heads, dim});
    const pkv_tensor vt = tensor(value.p, PKV_DTYPE_BF16, {T, heads, dim});
    const pkv_tensor st = tensor(slots.p, PKV_DTYPE_INT64, {T});
    pkv_tensor kv_c = tensor(key.p, PKV_DTYPE_BF16, {T, 512}), k_pe = kv_c;
    kv_c.strides[0] = k_pe.strides[0] = MLA;
    k_pe.data = key.as<uint16_t>() + 512;
    k_pe.shape[1] = MLA - 512;

    const double scale_bytes = f.planes ? 4.0 * heads * sides : 0.0;
    const double cache_bytes = double(T) * (double(row) * sides + scale_bytes);
    const double in_bytes = double(T) * heads * dim * 2 * sides;

    auto write = [&] {
        if (mla) PK(pkv_write_mla(&v, &kv_c, &k_pe, &st, nullptr, s));
        else PK(pkv_write_kv(&v, &kt, &vt, &st, nullptr, s));
    };
    // Gather: T rows of 16 requests over a block table that lists each request's blocks.
    const int64_t B = T >= 16 ? 16 : 1, per = T / B, maxb = (per + BS - 1) / BS;
    std::vector<int32_t> table(static_cast<size_t>(B * maxb)), cu(static_cast<size_t>(B + 1));
    for (int64_t b = 0; b < B; ++b) {
        cu[size_t(b)] = int32_t(b * per);
        for (int64_t j = 0; j < maxb; ++j) table[size_t(b * maxb + j)] = int32_t((b * maxb + j) % blocks);
    }
    cu[size_t(B)] = int32_t(B * per);
    DevBuf tb(table.size() * 4), cb(cu.size() * 4);
    upload(tb.p, table.data(), table.size() * 4);
    upload(cb.p, cu.data(), cu.size() * 4);
    const pkv_tensor bt = tensor(tb.p, PKV_DTYPE_INT32, {B, maxb});
    const pkv_tensor ct = tensor(cb.p, PKV_DTYPE_INT32, {B + 1});
    const pkv_tensor ok = tensor(out_k.p, PKV_DTYPE_BF16, {T, heads, dim});
    const pkv_tensor ov = tensor(out_v.p, PKV_DTYPE_BF16, {T, heads, dim});
    auto gather = [&] { PK(pkv_gather_kv(&ok, mla ? nullptr : &ov, &v, &bt, &ct, nullptr, nullptr, s)); };

    const double rows_n = double(B * per);
    const double ops_bytes[2] = {in_bytes + cache_bytes + double(T) * 8,
                                 rows_n / double(T) * (cache_bytes + in_bytes) + double(table.size()) * 4};
    const std::function<void()> fns[2] = {write, gather};
    const char *names[2] = {"write", "gather"};
    for (int op = 0; op < 2; ++op) {
        Row r;
        r.format = f.name;
        r.op = names[op];
        r.T = T;
        r.bytes = ops_bytes[op];
        try {
            write();  // the gather reads written rows
            CK(cudaStreamSynchronize(s));
            r.us = graph_us(s, fns[op], reps);
            // The copy baseline: half the op's bytes copied (read + write = the op's bytes).
            const size_t half = size_t(r.bytes / 2);
            DevBuf a(half), b(half);
            r.copy_us = graph_us(s, [&] { CK(cudaMemcpyAsync(b.p, a.p, half, cudaMemcpyDeviceToDevice, s)); }, reps);
        } catch (const std::exception &e) {
            r.error = e.what();
            cudaGetLastError();
        }
        rows.push_back(r);
    }
}

}  // namespace

int main(int argc, char **argv) {
    bool quick = false;
    std::string out_path, only_format;
    int64_t only_tokens = 0;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--quick") quick = true;
        else if (a == "--out" && i + 1 < argc) out_path = argv[++i];
        else if (a == "--format" && i + 1 < argc) only_format = argv[++i];
        else if (a == "--tokens" && i + 1 < argc) only_tokens = std::atoll(argv[++i]);
        else {
            std::fprintf(stderr, "usage: pkv_bench_formats [--quick] [--out FILE.md] [--format NAME] [--tokens T]\n");
            return 2;
        }
    }
    const int reps = quick ? 3 : 7;
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
        std::fprintf(stderr, "pkv_bench_formats: no CUDA device\n");
        return 1;
    }
    std::vector<Row> rows;
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    for (const Format &f : kFormats)
        for (int64_t T : {int64_t(64), int64_t(16384)}) {
            if ((!only_format.empty() && only_format != f.name) || (only_tokens && only_tokens != T)) continue;
            std::fprintf(stderr, "[bench] %s T=%lld\n", f.name, (long long)T);
            run_format(f, T, reps, s, rows);
        }
    std::string md = strf("## Write and gather per cache format\n\nDevice: %s (sm_%d%d), %d SMs | %s | H=%lld, D=%lld, "
                          "block_size=%lld, bf16 inputs and outputs, random unique slots; graph of %d calls "
                          "replayed, median of %d repetitions%s\n\n",
                          prop.name, prop.major, prop.minor, prop.multiProcessorCount, pkv_build_info(),
                          (long long)H, (long long)D, (long long)BS, kCalls, reps, quick ? " (--quick)" : "");
    md += "| format | op | T | MB moved | µs | GB/s (format bytes) | copy µs (same bytes) | copy GB/s | % of copy |\n";
    md += "|---|---|---:|---:|---:|---:|---:|---:|---:|\n";
    std::string targets;
    int missed = 0, errors = 0;
    for (const Row &r : rows) {
        if (!r.error.empty()) {
            md += strf("| %s | %s | %lld | | ERROR: %s | | | | |\n", r.format.c_str(), r.op.c_str(), (long long)r.T,
                       r.error.c_str());
            ++errors;
            continue;
        }
        const double gbs = r.bytes / (r.us * 1e3), cgbs = r.bytes / (r.copy_us * 1e3), pct = 100.0 * gbs / cgbs;
        md += strf("| %s | %s | %lld | %.2f | %.2f | %.0f | %.2f | %.0f | %.1f |\n", r.format.c_str(), r.op.c_str(),
                   (long long)r.T, r.bytes / 1e6, r.us, gbs, r.copy_us, cgbs, pct);
        if (r.T == 16384) {
            const bool pass = pct >= 80.0;
            missed += !pass;
            targets += strf("%s  bandwidth    %-6s %-20s T=16384  %.1f%% of copy (target >= 80%%)\n",
                            pass ? "PASS" : "FAIL", r.op.c_str(), r.format.c_str(), pct);
        }
    }
    md += "\nTargets:\n\n```\n" + targets + "```\n";
    std::fputs(md.c_str(), stdout);
    if (!out_path.empty()) {
        FILE *f = std::fopen(out_path.c_str(), "w");
        if (f) {
            std::fputs(md.c_str(), f);
            std::fclose(f);
        }
    }
    cudaStreamDestroy(s);
    return errors ? 1 : missed ? 3 : 0;  // 3: ran, some target missed
}
