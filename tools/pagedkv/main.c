/*
 * pagedkv — command-line program of libpagedkv.
 *
 *   pagedkv info             version, build facts, CUDA devices
 *   pagedkv demo [--cpu]     write + gather round trip for every cache format, with a summary
 *   pagedkv formats [--check FILE]  measured bytes and error of every format (docs/formats.md)
 *   pagedkv --help | --version
 *
 * Uses only the public C API (pagedkv.h).
 */
#include <pagedkv.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"

static void usage(FILE *f) {
    fputs("usage: pagedkv <command> [options]\n"
          "\n"
          "commands:\n"
          "  info           print the library version, build facts and CUDA devices\n"
          "  demo [--cpu]   write random keys/values of 1000 tokens (8 heads x 128 dims) into a\n"
          "                 paged cache and gather them back, for every cache format; on the\n"
          "                 GPU when one is present, else (or with --cpu) on the CPU\n"
          "  formats [--check FILE]\n"
          "                 print the measured table of docs/formats.md (bytes and error of\n"
          "                 every format); --check: fail unless FILE holds that very table\n"
          "\n"
          "options:\n"
          "  -h, --help     show this help\n"
          "  --version      print the version\n",
          f);
}

/* ---------------------------------------------------------------------------------- info */
static int cmd_info(void) {
    int32_t gpus = 0;
    pkv_status st = pkv_cuda_device_count(&gpus);
    printf("pagedkv %s (header %s, ABI %s)\n", pkv_version_string(), PKV_VERSION_STRING,
           PKV_ABI_VERSION);
    printf("build: %s\n", pkv_build_info());
    if (st != PKV_SUCCESS) {
        printf("cuda devices: unknown (%s: %s)\n", pkv_status_string(st), pkv_last_error_message());
        return 1;
    }
    printf("cuda devices: %d%s\n", (int)gpus, gpus > 0 ? "" : " (the CPU backend is used)");
    return 0;
}

/* ---------------------------------------------------------------------------------- demo */
enum { HEADS = 8, DIM = 128, ROW = HEADS * DIM, BLOCK_SIZE = 16, REQUESTS = 7, TOKENS = 1000 };

typedef struct demo_format {
    pkv_cache_format format;
    const char *name;
    size_t row;       /* bytes of one head row (DIM values) */
    double rel, abs;  /* element-wise formats: |got - want| <= rel * |want| + abs */
    double rms;       /* per-token-head formats: relative RMS error bound of the round trip */
} demo_format;

/* Values are in [-4, 4); FP8 uses scale 1/64 so that |x / scale| <= 256 fits e4m3 (max 448). */
#define FP8_SCALE (1.0f / 64.0f)
/* Per-token-head bounds: about twice the error docs/formats.md measures for such data. */
static const demo_format FORMATS[] = {
    {PKV_CACHE_FORMAT_F32, "f32", 4 * DIM, 0.0, 0.0, 0},
    {PKV_CACHE_FORMAT_F16, "f16", 2 * DIM, 1.0 / 2048, 1.0 / 16777216, 0},   /* 2^-11; subnormal 2^-25 */
    {PKV_CACHE_FORMAT_BF16, "bf16", 2 * DIM, 1.0 / 256, 0.0, 0},             /* 2^-8 */
    {PKV_CACHE_FORMAT_FP8_E4M3, "fp8_e4m3", DIM, 1.0 / 16, FP8_SCALE / 1024, 0}, /* 2^-4; 2^-10 */
    {PKV_CACHE_FORMAT_FP8_E5M2, "fp8_e5m2", DIM, 1.0 / 8, FP8_SCALE / 131072, 0}, /* 2^-3; 2^-17 */
    {PKV_CACHE_FORMAT_INT8_PER_TOKEN_HEAD, "int8_pth", DIM, 0, 0, 0.02},
    {PKV_CACHE_FORMAT_FP8_PER_TOKEN_HEAD, "fp8_pth", DIM, 0, 0, 0.06},
    {PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD, "int4_pth", DIM / 2, 0, 0, 0.2},
    {PKV_CACHE_FORMAT_INT2_PER_TOKEN_HEAD, "int2_pth", DIM / 4, 0, 0, 0.6},
};

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rng_next(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12, rng_state ^= rng_state << 25, rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}

typedef struct demo_ctx {
    pkv_device dev;
    int failed; /* a pkv_* call failed */
} demo_ctx;

static int ok(demo_ctx *ctx, pkv_status st, const char *what) {
    if (st == PKV_SUCCESS) return 1;
    fprintf(stderr, "pagedkv demo: %s failed: %s: %s\n", what, pkv_status_string(st),
            pkv_last_error_message());
    ctx->failed = 1;
    return 0;
}

static void *dev_alloc(demo_ctx *ctx, size_t bytes) {
    void *p = NULL;
    if (!ok(ctx, pkv_alloc(&p, ctx->dev, bytes), "pkv_alloc")) return NULL;
    return p;
}

static void *upload(demo_ctx *ctx, const void *host, size_t bytes) {
    const pkv_device cpu = {PKV_DEVICE_CPU, 0};
    void *p = dev_alloc(ctx, bytes);
    if (p != NULL) ok(ctx, pkv_copy(p, ctx->dev, host, cpu, bytes, NULL), "pkv_copy");
    return p;
}

static pkv_tensor make_tensor(void *data, pkv_dtype dtype, pkv_device dev, int ndim,
                              const int64_t *shape) {
    pkv_tensor t;
    int i;
    memset(&t, 0, sizeof t);
    t.data = data, t.dtype = dtype, t.device = dev, t.ndim = ndim;
    for (i = ndim - 1; i >= 0; --i) {
        t.shape[i] = shape[i];
        t.strides[i] = i == ndim - 1 ? 1 : t.strides[i + 1] * t.shape[i + 1];
    }
    return t;
}

/* The batch: REQUESTS requests of random length summing to TOKENS, each owning blocks taken
 * from a shuffled free list; the token rows are interleaved with padding rows (slot -1). */
typedef struct demo_batch {
    int64_t t_pad;          /* rows of key / value / slot_mapping (tokens + padding) */
    int64_t num_blocks;     /* blocks in the cache */
    int32_t max_blocks;     /* block-table width */
    int64_t *slots;         /* [t_pad] */
    int64_t *row_of_token;  /* [TOKENS]: gathered row i holds the token at row row_of_token[i] */
    int32_t *block_table;   /* [REQUESTS, max_blocks] */
    int32_t cu_seq_lens[REQUESTS + 1];
    float *key, *value;     /* [t_pad, HEADS, DIM] */
} demo_batch;

static int make_batch(demo_batch *b) {
    int64_t lens[REQUESTS], remaining = TOKENS, *free_list, used = 0, row = 0, tok = 0, i;
    int r;
    memset(b, 0, sizeof *b);
    for (r = 0; r < REQUESTS; ++r) {
        int64_t left = REQUESTS - r - 1;
        lens[r] = r == REQUESTS - 1 ? remaining
                                    : 1 + (int64_t)(rng_next() % (uint32_t)(2 * TOKENS / REQUESTS));
        if (lens[r] > remaining - left) lens[r] = remaining - left;
        remaining -= lens[r];
        b->cu_seq_lens[r + 1] = b->cu_seq_lens[r] + (int32_t)lens[r];
        if ((lens[r] + BLOCK_SIZE - 1) / BLOCK_SIZE > b->max_blocks)
            b->max_blocks = (int32_t)((lens[r] + BLOCK_SIZE - 1) / BLOCK_SIZE);
    }
    b->num_blocks = (TOKENS + BLOCK_SIZE - 1) / BLOCK_SIZE + REQUESTS + 8; /* some spare blocks */
    b->t_pad = TOKENS + TOKENS / 50;                                       /* 2 % padding rows */
    free_list = malloc(sizeof *free_list * (size_t)b->num_blocks);
    b->slots = malloc(sizeof *b->slots * (size_t)b->t_pad);
    b->row_of_token = malloc(sizeof *b->row_of_token * TOKENS);
    b->block_table = calloc((size_t)REQUESTS * (size_t)b->max_blocks, sizeof *b->block_table);
    b->key = malloc(sizeof *b->key * (size_t)b->t_pad * ROW);
    b->value = malloc(sizeof *b->value * (size_t)b->t_pad * ROW);
    if (!free_list || !b->slots || !b->row_of_token || !b->block_table || !b->key || !b->value) {
        free(free_list);
        return 0;
    }
    for (i = 0; i < b->num_blocks; ++i) free_list[i] = i;
    for (i = b->num_blocks - 1; i > 0; --i) { /* Fisher-Yates */
        int64_t j = (int64_t)(rng_next() % (uint32_t)(i + 1)), t = free_list[i];
        free_list[i] = free_list[j], free_list[j] = t;
    }
    for (r = 0; r < REQUESTS; ++r) {
        int64_t p;
        for (p = 0; p < lens[r]; ++p) {
            int64_t block;
            if (p % BLOCK_SIZE == 0) b->block_table[r * b->max_blocks + p / BLOCK_SIZE] = (int32_t)free_list[used++];
            block = b->block_table[r * b->max_blocks + p / BLOCK_SIZE];
            while (row < b->t_pad && (b->t_pad - row) > (TOKENS - tok) && rng_next() % 50 == 0)
                b->slots[row++] = -1; /* a padding row */
            b->slots[row] = block * BLOCK_SIZE + p % BLOCK_SIZE;
            b->row_of_token[tok++] = row++;
        }
    }
    while (row < b->t_pad) b->slots[row++] = -1;
    for (i = 0; i < b->t_pad * ROW; ++i) {
        b->key[i] = (float)(rng_next() >> 8) / 16777216.0f * 8.0f - 4.0f;
        b->value[i] = (float)(rng_next() >> 8) / 16777216.0f * 8.0f - 4.0f;
    }
    free(free_list);
    return 1;
}

static void free_batch(demo_batch *b) {
    free(b->slots), free(b->row_of_token), free(b->block_table), free(b->key), free(b->value);
}

/* Round trip of one format; returns the number of mismatching elements (-1 on API failure). */
static long run_format(demo_ctx *ctx, const demo_batch *b, const demo_format *f, double *max_err, double *rms) {
    const pkv_device cpu = {PKV_DEVICE_CPU, 0};
    const pkv_device dev = ctx->dev;
    const float scale = FP8_SCALE;
    const size_t cache_bytes = (size_t)b->num_blocks * BLOCK_SIZE * HEADS * f->row;
    const size_t plane_bytes = (size_t)b->num_blocks * BLOCK_SIZE * HEADS * sizeof(float);
    double num = 0.0, den = 0.0;
    const size_t in_bytes = (size_t)b->t_pad * ROW * sizeof(float);
    const size_t out_bytes = (size_t)TOKENS * ROW * sizeof(float);
    pkv_cache_view cache = PKV_CACHE_VIEW_INIT;
    void *d_key = NULL, *d_value = NULL, *d_slots = NULL, *d_table = NULL, *d_cu = NULL;
    void *d_out_key = NULL, *d_out_value = NULL, *d_scale = NULL, *d_oor = NULL;
    float *out_key = malloc(out_bytes), *out_value = malloc(out_bytes);
    int64_t oor = -1, zero = 0, i, j;
    long bad = -1;

    *max_err = 0.0;
    ctx->failed = 0;
    cache.format = f->format;
    cache.device = dev;
    cache.num_blocks = b->num_blocks;
    cache.block_size = BLOCK_SIZE;
    cache.num_heads = HEADS;
    cache.head_size_k = DIM;
    cache.scale_mode = PKV_SCALE_PER_TENSOR;
    if (!out_key || !out_value) goto done;
    if (!(cache.k_data = dev_alloc(ctx, cache_bytes)) || !(cache.v_data = dev_alloc(ctx, cache_bytes)))
        goto done;
    if (f->format == PKV_CACHE_FORMAT_FP8_E4M3 || f->format == PKV_CACHE_FORMAT_FP8_E5M2) {
        if (!(d_scale = upload(ctx, &scale, sizeof scale))) goto done;
        cache.k_scale = cache.v_scale = (const float *)d_scale;
    }
    if (f->rms > 0 && (!(cache.k_scale_plane = dev_alloc(ctx, plane_bytes)) ||
                       !(cache.v_scale_plane = dev_alloc(ctx, plane_bytes))))
        goto done;
    d_key = upload(ctx, b->key, in_bytes);
    d_value = upload(ctx, b->value, in_bytes);
    d_slots = upload(ctx, b->slots, sizeof *b->slots * (size_t)b->t_pad);
    d_table = upload(ctx, b->block_table, sizeof *b->block_table * REQUESTS * (size_t)b->max_blocks);
    d_cu = upload(ctx, b->cu_seq_lens, sizeof b->cu_seq_lens);
    d_oor = upload(ctx, &zero, sizeof zero);
    d_out_key = dev_alloc(ctx, out_bytes);
    d_out_value = dev_alloc(ctx, out_bytes);
    if (ctx->failed) goto done;
    {
        const int64_t kv_shape[3] = {b->t_pad, HEADS, DIM}, out_shape[3] = {TOKENS, HEADS, DIM};
        const int64_t slot_shape[1] = {b->t_pad}, table_shape[2] = {REQUESTS, b->max_blocks};
        const int64_t cu_shape[1] = {REQUESTS + 1};
        pkv_tensor k = make_tensor(d_key, PKV_DTYPE_F32, dev, 3, kv_shape);
        pkv_tensor v = make_tensor(d_value, PKV_DTYPE_F32, dev, 3, kv_shape);
        pkv_tensor sm = make_tensor(d_slots, PKV_DTYPE_INT64, dev, 1, slot_shape);
        pkv_tensor bt = make_tensor(d_table, PKV_DTYPE_INT32, dev, 2, table_shape);
        pkv_tensor cu = make_tensor(d_cu, PKV_DTYPE_INT32, dev, 1, cu_shape);
        pkv_tensor out_k = make_tensor(d_out_key, PKV_DTYPE_F32, dev, 3, out_shape);
        pkv_tensor out_v = make_tensor(d_out_value, PKV_DTYPE_F32, dev, 3, out_shape);
        if (!ok(ctx, pkv_cache_view_check(&cache), "pkv_cache_view_check") ||
            !ok(ctx, pkv_write_kv(&cache, &k, &v, &sm, (int64_t *)d_oor, NULL), "pkv_write_kv") ||
            !ok(ctx, pkv_gather_kv(&out_k, &out_v, &cache, &bt, &cu, NULL, (int64_t *)d_oor, NULL),
                "pkv_gather_kv") ||
            !ok(ctx, pkv_copy(out_key, cpu, d_out_key, dev, out_bytes, NULL), "pkv_copy") ||
            !ok(ctx, pkv_copy(out_value, cpu, d_out_value, dev, out_bytes, NULL), "pkv_copy") ||
            !ok(ctx, pkv_copy(&oor, cpu, d_oor, dev, sizeof oor, NULL), "pkv_copy") ||
            (dev.type == PKV_DEVICE_CUDA &&
             !ok(ctx, pkv_stream_synchronize(NULL), "pkv_stream_synchronize")))
            goto done;
    }
    bad = oor != 0 ? 1 : 0; /* nothing is out of range in this batch */
    for (i = 0; i < TOKENS; ++i) {
        const float *want_k = b->key + b->row_of_token[i] * ROW, *want_v = b->value + b->row_of_token[i] * ROW;
        for (j = 0; j < ROW; ++j) {
            double ek = fabs((double)out_key[i * ROW + j] - want_k[j]);
            double ev = fabs((double)out_value[i * ROW + j] - want_v[j]);
            if (ek > *max_err) *max_err = ek;
            if (ev > *max_err) *max_err = ev;
            num += ek * ek + ev * ev;
            den += (double)want_k[j] * want_k[j] + (double)want_v[j] * want_v[j];
            if (f->rms == 0)
                bad += !(ek <= f->rel * fabs(want_k[j]) + f->abs) + !(ev <= f->rel * fabs(want_v[j]) + f->abs);
        }
    }
    *rms = sqrt(num / den);
    if (f->rms > 0 && !(*rms <= f->rms)) bad += 1;
done:
    pkv_free(cache.k_data, dev), pkv_free(cache.v_data, dev), pkv_free(d_scale, dev);
    pkv_free(cache.k_scale_plane, dev), pkv_free(cache.v_scale_plane, dev);
    pkv_free(d_key, dev), pkv_free(d_value, dev), pkv_free(d_slots, dev), pkv_free(d_table, dev);
    pkv_free(d_cu, dev), pkv_free(d_oor, dev), pkv_free(d_out_key, dev), pkv_free(d_out_value, dev);
    free(out_key), free(out_value);
    return bad;
}

static int cmd_demo(int argc, char **argv) {
    demo_ctx ctx = {{PKV_DEVICE_CPU, 0}, 0};
    demo_batch batch;
    int32_t gpus = 0;
    int use_cpu = 0, failures = 0, i;
    size_t f;

    for (i = 0; i < argc; ++i) {
        if (strcmp(argv[i], "--cpu") == 0) use_cpu = 1;
        else { fprintf(stderr, "pagedkv demo: unknown option '%s'\n", argv[i]); usage(stderr); return 2; }
    }
    if (!ok(&ctx, pkv_cuda_device_count(&gpus), "pkv_cuda_device_count")) return 1;
    if (gpus > 0 && !use_cpu) ctx.dev.type = PKV_DEVICE_CUDA; /* device 0 */
    if (!make_batch(&batch)) { fprintf(stderr, "pagedkv demo: out of host memory\n"); return 1; }

    printf("pagedkv %s demo on %s (%s)\n", pkv_version_string(),
           ctx.dev.type == PKV_DEVICE_CUDA ? "cuda:0" : "cpu", pkv_build_info());
    printf("batch: %d requests, %d tokens + %lld padding rows, %d heads x %d dims, "
           "%lld blocks of %d slots (NHD)\n", REQUESTS, TOKENS, (long long)(batch.t_pad - TOKENS),
           HEADS, DIM, (long long)batch.num_blocks, BLOCK_SIZE);
    for (f = 0; f < sizeof FORMATS / sizeof FORMATS[0]; ++f) {
        double max_err = 0.0, rms = 0.0;
        long bad = run_format(&ctx, &batch, &FORMATS[f], &max_err, &rms);
        printf("  %-9s write + gather: %s  (max abs error %.3g, relative RMS %.3g%s)\n", FORMATS[f].name,
               bad == 0 ? "ok      " : bad < 0 ? "ERROR   " : "MISMATCH", max_err, rms,
               FORMATS[f].format == PKV_CACHE_FORMAT_FP8_E4M3 || FORMATS[f].format == PKV_CACHE_FORMAT_FP8_E5M2
                   ? ", per-tensor scale 1/64"
                   : FORMATS[f].rms > 0 ? ", scale per token and head" : "");
        if (bad > 0) fprintf(stderr, "pagedkv demo: %s: %ld elements outside tolerance\n", FORMATS[f].name, bad);
        failures += bad != 0;
    }
    free_batch(&batch);
    printf("demo: %d of %d formats round-tripped\n", (int)(sizeof FORMATS / sizeof FORMATS[0]) - failures,
           (int)(sizeof FORMATS / sizeof FORMATS[0]));
    return failures ? 1 : 0;
}

int main(int argc, char **argv) {
    if (pkv_version() / 100 != PKV_VERSION / 100) {
        fprintf(stderr, "pagedkv: libpagedkv %s does not match pagedkv.h %s\n",
                pkv_version_string(), PKV_VERSION_STRING);
        return 1;
    }
    if (argc < 2) { usage(stderr); return 2; }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) { printf("pagedkv %s\n", pkv_version_string()); return 0; }
    if (strcmp(argv[1], "info") == 0) return cmd_info();
    if (strcmp(argv[1], "demo") == 0) return cmd_demo(argc - 2, argv + 2);
    if (strcmp(argv[1], "formats") == 0) return cmd_formats(argc - 2, argv + 2);
    fprintf(stderr, "pagedkv: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
