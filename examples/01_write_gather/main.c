/*
 * Example 01 — write keys/values into a paged KV cache, gather them back, check the round trip.
 *
 *   01_write_gather [--cpu] [--fp8]
 *
 * Two requests share a cache of 4 blocks x 4 slots (NHD layout, 2 KV heads x 8 dims):
 *   request A: 3 tokens in block 2            -> slots 8, 9, 10
 *   request B: 6 tokens in blocks 0 then 3    -> slots 0..3, 12, 13
 * The batch of new tokens also carries one padding row (slot -1), which is skipped.
 * The cache is bf16 (exact round trip) or, with --fp8, FP8 E4M3 with a per-tensor scale.
 * Runs on the GPU when one is present (unless --cpu), else on the CPU: the code is the same,
 * only the device of the buffers changes.
 */
#include <pagedkv.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { NUM_BLOCKS = 4, BLOCK_SIZE = 4, HEADS = 2, DIM = 8, ROW = HEADS * DIM };
enum { T = 10, BATCH = 2, MAX_BLOCKS = 2, N = 9 };

#define CHECK(call)                                                                      \
    do {                                                                                 \
        pkv_status status_ = (call);                                                     \
        if (status_ != PKV_SUCCESS) {                                                    \
            fprintf(stderr, "%s failed: %s: %s\n", #call, pkv_status_string(status_),    \
                    pkv_last_error_message());                                           \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

/* bf16 is the top half of a float32. */
static uint16_t to_bf16(float x) { uint32_t u; memcpy(&u, &x, 4); return (uint16_t)(u >> 16); }
static float from_bf16(uint16_t h) { uint32_t u = (uint32_t)h << 16; float x; memcpy(&x, &u, 4); return x; }

/* Allocate `bytes` on `dev` and copy `host` there (a plain memcpy when dev is the CPU). */
static void *upload(pkv_device dev, const void *host, size_t bytes) {
    pkv_device cpu = {PKV_DEVICE_CPU, 0};
    void *p = NULL;
    CHECK(pkv_alloc(&p, dev, bytes));
    if (host != NULL) CHECK(pkv_copy(p, dev, host, cpu, bytes, NULL));
    return p;
}

/* A contiguous tensor of shape [d0, d1, d2] (ndim 1..3). */
static pkv_tensor tensor(void *data, pkv_dtype dtype, pkv_device dev, int ndim, int64_t d0,
                         int64_t d1, int64_t d2) {
    pkv_tensor t;
    int64_t shape[3];
    int i;
    memset(&t, 0, sizeof t);
    shape[0] = d0, shape[1] = d1, shape[2] = d2;
    t.data = data, t.dtype = dtype, t.device = dev, t.ndim = ndim;
    for (i = ndim - 1; i >= 0; --i) {
        t.shape[i] = shape[i];
        t.strides[i] = i == ndim - 1 ? 1 : t.strides[i + 1] * t.shape[i + 1];
    }
    return t;
}

int main(int argc, char **argv) {
    int use_cpu = 0, fp8 = 0, i, j;
    int32_t gpus = 0;
    pkv_device cpu = {PKV_DEVICE_CPU, 0}, dev = {PKV_DEVICE_CPU, 0};
    const int64_t slots[T] = {8, 9, 10, -1, 0, 1, 2, 3, 12, 13}; /* token 3 is padding */
    const int token_of_row[N] = {0, 1, 2, 4, 5, 6, 7, 8, 9};     /* gathered row -> token */
    const int32_t block_table[BATCH][MAX_BLOCKS] = {{2, 0}, {0, 3}};
    const int32_t cu_seq_lens[BATCH + 1] = {0, 3, 9};
    const float scale = 0.01f; /* fp8: |x| <= 2 -> |x / scale| <= 200 < 448 */
    uint16_t key[T][ROW], value[T][ROW], out_key[N][ROW], out_value[N][ROW];
    uint32_t rng = 12345u;
    size_t elem;
    double max_err = 0.0;
    int bad = 0;
    pkv_cache_view cache = PKV_CACHE_VIEW_INIT;
    pkv_tensor k, v, slot_mapping, table, cu_lens, ok, ov;
    void *d_key, *d_value, *d_slots, *d_table, *d_cu, *d_out_key, *d_out_value, *d_scale = NULL;

    for (i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "--cpu") == 0) use_cpu = 1;
        else if (strcmp(argv[i], "--fp8") == 0) fp8 = 1;
        else { fprintf(stderr, "usage: %s [--cpu] [--fp8]\n", argv[0]); return 2; }
    }
    /* 0.x: the ABI is MAJOR.MINOR; the loaded library must match the header. */
    if (pkv_version() / 100 != PKV_VERSION / 100) {
        fprintf(stderr, "libpagedkv %s does not match pagedkv.h %s\n", pkv_version_string(),
                PKV_VERSION_STRING);
        return 1;
    }
    CHECK(pkv_cuda_device_count(&gpus));
    if (gpus > 0 && !use_cpu) dev.type = PKV_DEVICE_CUDA; /* device 0, the current device */

    /* Random bf16 keys and values in [-2, 2). */
    for (i = 0; i < T; ++i)
        for (j = 0; j < ROW; ++j) {
            rng = rng * 1664525u + 1013904223u;
            key[i][j] = to_bf16((float)(rng >> 8) / 16777216.0f * 4.0f - 2.0f);
            rng = rng * 1664525u + 1013904223u;
            value[i][j] = to_bf16((float)(rng >> 8) / 16777216.0f * 4.0f - 2.0f);
        }

    /* The cache: NHD [NUM_BLOCKS, BLOCK_SIZE, HEADS, DIM]; strides 0 = NHD defaults. */
    elem = fp8 ? 1 : 2;
    cache.format = fp8 ? PKV_CACHE_FORMAT_FP8_E4M3 : PKV_CACHE_FORMAT_BF16;
    cache.device = dev;
    cache.num_blocks = NUM_BLOCKS;
    cache.block_size = BLOCK_SIZE;
    cache.num_heads = HEADS;
    cache.head_size_k = DIM;
    cache.k_data = upload(dev, NULL, NUM_BLOCKS * BLOCK_SIZE * ROW * elem);
    cache.v_data = upload(dev, NULL, NUM_BLOCKS * BLOCK_SIZE * ROW * elem);
    if (fp8) {
        d_scale = upload(dev, &scale, sizeof scale);
        cache.scale_mode = PKV_SCALE_PER_TENSOR;
        cache.k_scale = (const float *)d_scale;
        cache.v_scale = (const float *)d_scale;
    }
    CHECK(pkv_cache_view_check(&cache));

    /* Write the T new tokens (the padding row is skipped). */
    d_key = upload(dev, key, sizeof key);
    d_value = upload(dev, value, sizeof value);
    d_slots = upload(dev, slots, sizeof slots);
    k = tensor(d_key, PKV_DTYPE_BF16, dev, 3, T, HEADS, DIM);
    v = tensor(d_value, PKV_DTYPE_BF16, dev, 3, T, HEADS, DIM);
    slot_mapping = tensor(d_slots, PKV_DTYPE_INT64, dev, 1, T, 0, 0);
    CHECK(pkv_write_kv(&cache, &k, &v, &slot_mapping, NULL, NULL));

    /* Gather both requests back to dense rows by block table + cu_seq_lens. */
    d_table = upload(dev, block_table, sizeof block_table);
    d_cu = upload(dev, cu_seq_lens, sizeof cu_seq_lens);
    d_out_key = upload(dev, NULL, sizeof out_key);
    d_out_value = upload(dev, NULL, sizeof out_value);
    table = tensor(d_table, PKV_DTYPE_INT32, dev, 2, BATCH, MAX_BLOCKS, 0);
    cu_lens = tensor(d_cu, PKV_DTYPE_INT32, dev, 1, BATCH + 1, 0, 0);
    ok = tensor(d_out_key, PKV_DTYPE_BF16, dev, 3, N, HEADS, DIM);
    ov = tensor(d_out_value, PKV_DTYPE_BF16, dev, 3, N, HEADS, DIM);
    CHECK(pkv_gather_kv(&ok, &ov, &cache, &table, &cu_lens, NULL, NULL, NULL));
    CHECK(pkv_copy(out_key, cpu, d_out_key, dev, sizeof out_key, NULL));
    CHECK(pkv_copy(out_value, cpu, d_out_value, dev, sizeof out_value, NULL));
    if (dev.type == PKV_DEVICE_CUDA) CHECK(pkv_stream_synchronize(NULL)); /* CPU copies are synchronous */

    /* Check: exact for bf16; for fp8 e4m3 within half an fp8 step (3 mantissa bits) plus the
     * bf16 rounding of the output. */
    for (i = 0; i < N; ++i)
        for (j = 0; j < ROW; ++j) {
            float want[2], got[2];
            int kv;
            want[0] = from_bf16(key[token_of_row[i]][j]), got[0] = from_bf16(out_key[i][j]);
            want[1] = from_bf16(value[token_of_row[i]][j]), got[1] = from_bf16(out_value[i][j]);
            for (kv = 0; kv < 2; ++kv) {
                double err = fabs((double)got[kv] - want[kv]);
                double tol = fp8 ? fabs(want[kv]) / 16.0 + fabs(want[kv]) / 256.0 + scale / 512.0 : 0.0;
                if (err > max_err) max_err = err;
                if (!(err <= tol)) bad++;
            }
        }

    printf("pagedkv %s on %s: %s cache, %d blocks x %d slots x %d heads x %d dims (NHD)\n",
           pkv_version_string(), dev.type == PKV_DEVICE_CUDA ? "cuda:0" : "cpu",
           fp8 ? "fp8_e4m3 (per-tensor scale 0.01)" : "bf16", NUM_BLOCKS, BLOCK_SIZE, HEADS, DIM);
    printf("wrote %d tokens (1 padding slot skipped), gathered %d rows for %d requests\n", T - 1,
           N, BATCH);
    printf("round trip: %s, max abs error %.3g: %s\n", fp8 ? "within fp8 tolerance" : "exact",
           max_err, bad ? "MISMATCH" : "ok");

    pkv_free(cache.k_data, dev), pkv_free(cache.v_data, dev), pkv_free(d_scale, dev);
    pkv_free(d_key, dev), pkv_free(d_value, dev), pkv_free(d_slots, dev);
    pkv_free(d_table, dev), pkv_free(d_cu, dev), pkv_free(d_out_key, dev), pkv_free(d_out_value, dev);
    return bad ? 1 : 0;
}
