/*
 * `pagedkv formats`: the measured table of docs/formats.md — storage bytes and reconstruction
 * error of every cache format, from a write and a gather through the public API on the CPU
 * backend (the CUDA backend stores the same codes).
 *
 * Data: 4096 tokens x 8 heads x 128 dims of float32 N(0, 1) values (Box-Muller over
 * splitmix64, fixed seed); the "outlier" set multiplies channels 3, 40, 77 and 120 of every head
 * by 25 (the channel outliers seen in real key caches). Error: relative RMS over all elements,
 * sqrt(sum (x^ - x)^2 / sum x^2), of the keys gathered back to float32. Per-tensor FP8 scales
 * are calibrated as amax / max-code (the best case for that format). fp8_ds_mla stores
 * 576-element MLA entries (1 head): bf16 inputs built from the same kind of data, 512 latent
 * values (outliers in 4 channels of each 128-wide tile) and 64 RoPE values, errors measured
 * against the float32 values.
 */
#include <pagedkv.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"

enum { FT_TOKENS = 4096, FT_HEADS = 8, FT_DIM = 128, FT_BS = 16, MLA_DIM = 576, MLA_LATENT = 512 };

typedef struct report_format {
    pkv_cache_format format;
    const char *name;
    const char *note;
} report_format;

static const report_format REPORT[] = {
    {PKV_CACHE_FORMAT_F32, "f32", "exact"},
    {PKV_CACHE_FORMAT_F16, "f16", "RNE"},
    {PKV_CACHE_FORMAT_BF16, "bf16", "RNE"},
    {PKV_CACHE_FORMAT_FP8_E4M3, "fp8_e4m3", "per-tensor scale amax/448"},
    {PKV_CACHE_FORMAT_FP8_E5M2, "fp8_e5m2", "per-tensor scale amax/57344"},
    {PKV_CACHE_FORMAT_INT8_PER_TOKEN_HEAD, "int8_per_token_head", "+ f32 scale per token and head"},
    {PKV_CACHE_FORMAT_FP8_PER_TOKEN_HEAD, "fp8_per_token_head", "+ f32 scale per token and head"},
    {PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD, "int4_per_token_head", "Hadamard, default signs; + f32 scale"},
    {PKV_CACHE_FORMAT_INT2_PER_TOKEN_HEAD, "int2_per_token_head", "Hadamard; + f32 scale"},
    {PKV_CACHE_FORMAT_FP8_DS_MLA, "fp8_ds_mla", "MLA entry of 576 values (1 head)"},
};

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* n float32 N(0,1) values; with `outliers`, channels 3, 40, 77, 120 of each `row`-wide row x 25. */
static void gaussian(float *x, size_t n, size_t row, int outliers, uint64_t seed) {
    size_t i;
    for (i = 0; i < n; i += 2) {
        const double u1 = ((double)(splitmix(&seed) >> 11) + 1.0) / 9007199254740993.0;
        const double u2 = (double)(splitmix(&seed) >> 11) / 9007199254740992.0;
        const double r = sqrt(-2.0 * log(u1));
        x[i] = (float)(r * cos(6.283185307179586 * u2));
        if (i + 1 < n) x[i + 1] = (float)(r * sin(6.283185307179586 * u2));
    }
    if (outliers)
        for (i = 0; i < n; ++i) {
            const size_t c = (i % row) % 128;
            if (c == 3 || c == 40 || c == 77 || c == 120) x[i] *= 25.0f;
        }
}

static uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u); /* RNE; the data is finite */
    return (uint16_t)(u >> 16);
}

static pkv_tensor tensor3(void *data, pkv_dtype dtype, int64_t n, int64_t h, int64_t d) {
    pkv_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data, t.dtype = dtype, t.device.type = PKV_DEVICE_CPU, t.ndim = 3;
    t.shape[0] = n, t.shape[1] = h, t.shape[2] = d;
    t.strides[0] = h * d, t.strides[1] = d, t.strides[2] = 1;
    return t;
}

static pkv_tensor tensor_1d(void *data, pkv_dtype dtype, int64_t n) {
    pkv_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data, t.dtype = dtype, t.device.type = PKV_DEVICE_CPU, t.ndim = 1;
    t.shape[0] = n, t.strides[0] = 1;
    return t;
}

static int check(pkv_status st, const char *what) {
    if (st == PKV_SUCCESS) return 1;
    fprintf(stderr, "pagedkv formats: %s failed: %s: %s\n", what, pkv_status_string(st), pkv_last_error_message());
    return 0;
}

static int64_t row_bytes(pkv_cache_format f, int64_t d) {
    switch (f) {
        case PKV_CACHE_FORMAT_F32: return 4 * d;
        case PKV_CACHE_FORMAT_F16:
        case PKV_CACHE_FORMAT_BF16: return 2 * d;
        case PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD: return d / 2;
        case PKV_CACHE_FORMAT_INT2_PER_TOKEN_HEAD: return d / 4;
        case PKV_CACHE_FORMAT_FP8_DS_MLA: return 656;
        default: return d;
    }
}

static int per_token_head(pkv_cache_format f) {
    return f >= PKV_CACHE_FORMAT_INT8_PER_TOKEN_HEAD && f <= PKV_CACHE_FORMAT_INT2_PER_TOKEN_HEAD;
}

/* Relative RMS of writing x ([tokens, heads, dim] float32; dim 576 for fp8_ds_mla) into a
 * K-only cache of format f and gathering it back. Returns a negative value on failure. */
static double measure(pkv_cache_format f, const float *x, int64_t tokens, int64_t heads, int64_t dim) {
    const int64_t n = tokens * heads * dim, blocks = tokens / FT_BS;
    const int64_t rb = row_bytes(f, dim);
    unsigned char *cache = calloc((size_t)(tokens * heads * rb), 1);
    float *planes = calloc((size_t)(tokens * heads), sizeof(float));
    float *out = calloc((size_t)n, sizeof(float));
    int64_t *slots = malloc((size_t)tokens * sizeof(int64_t));
    int32_t *table = malloc((size_t)blocks * sizeof(int32_t));
    uint16_t *bf = NULL;
    int32_t cu[2] = {0, (int32_t)tokens};
    float scale = 1.0f;
    double num = 0.0, den = 0.0, result = -1.0;
    int64_t i;
    pkv_cache_view view = PKV_CACHE_VIEW_INIT;
    pkv_tensor st, bt, ct, ot;
    if (!cache || !planes || !out || !slots || !table) goto done;
    for (i = 0; i < tokens; ++i) slots[i] = i;
    for (i = 0; i < blocks; ++i) table[i] = (int32_t)i;
    view.format = f;
    view.device.type = PKV_DEVICE_CPU;
    view.num_blocks = blocks;
    view.block_size = FT_BS;
    view.num_heads = heads;
    view.head_size_k = dim;
    view.k_data = cache;
    if (per_token_head(f)) view.k_scale_plane = planes;
    if (f == PKV_CACHE_FORMAT_FP8_E4M3 || f == PKV_CACHE_FORMAT_FP8_E5M2) {
        float amax = 0.0f;
        for (i = 0; i < n; ++i) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
        scale = amax / (f == PKV_CACHE_FORMAT_FP8_E4M3 ? 448.0f : 57344.0f);
        view.k_scale = &scale;
    }
    st = tensor_1d(slots, PKV_DTYPE_INT64, tokens);
    if (f == PKV_CACHE_FORMAT_FP8_DS_MLA) {
        pkv_tensor kv_c, k_pe;
        bf = malloc((size_t)n * sizeof(uint16_t));
        if (!bf) goto done;
        for (i = 0; i < n; ++i) bf[i] = f32_to_bf16(x[i]);
        memset(&kv_c, 0, sizeof kv_c);
        kv_c.data = bf, kv_c.dtype = PKV_DTYPE_BF16, kv_c.device.type = PKV_DEVICE_CPU, kv_c.ndim = 2;
        kv_c.shape[0] = tokens, kv_c.shape[1] = MLA_LATENT, kv_c.strides[0] = MLA_DIM, kv_c.strides[1] = 1;
        k_pe = kv_c;
        k_pe.data = bf + MLA_LATENT;
        k_pe.shape[1] = MLA_DIM - MLA_LATENT;
        if (!check(pkv_write_mla(&view, &kv_c, &k_pe, &st, NULL, NULL), "pkv_write_mla")) goto done;
    } else {
        pkv_tensor kt = tensor3((void *)x, PKV_DTYPE_F32, tokens, heads, dim);
        if (!check(pkv_write_kv(&view, &kt, NULL, &st, NULL, NULL), "pkv_write_kv")) goto done;
    }
    memset(&bt, 0, sizeof bt);
    bt.data = table, bt.dtype = PKV_DTYPE_INT32, bt.device.type = PKV_DEVICE_CPU, bt.ndim = 2;
    bt.shape[0] = 1, bt.shape[1] = blocks, bt.strides[0] = blocks, bt.strides[1] = 1;
    ct = tensor_1d(cu, PKV_DTYPE_INT32, 2);
    ot = tensor3(out, PKV_DTYPE_F32, tokens, heads, dim);
    if (!check(pkv_gather_kv(&ot, NULL, &view, &bt, &ct, NULL, NULL, NULL), "pkv_gather_kv")) goto done;
    for (i = 0; i < n; ++i) {
        const double e = (double)out[i] - (double)x[i];
        num += e * e;
        den += (double)x[i] * (double)x[i];
    }
    result = sqrt(num / den);
done:
    free(cache), free(planes), free(out), free(slots), free(table), free(bf);
    return result;
}

/* Writes the markdown table to `f`. Returns 0 on success. */
static int write_table(FILE *f) {
    const size_t n = (size_t)FT_TOKENS * FT_HEADS * FT_DIM;
    float *plain = malloc(n * sizeof(float)), *outl = malloc(n * sizeof(float));
    size_t k;
    int rc = 0;
    if (!plain || !outl) {
        free(plain), free(outl);
        return 1;
    }
    fprintf(f, "| format | bytes / token / head | bits / value | rel. RMS error, N(0,1) | rel. RMS error, outlier channels | notes |\n");
    fprintf(f, "|---|---:|---:|---:|---:|---|\n");
    for (k = 0; k < sizeof REPORT / sizeof REPORT[0]; ++k) {
        const report_format *r = &REPORT[k];
        const int mla = r->format == PKV_CACHE_FORMAT_FP8_DS_MLA;
        const int64_t heads = mla ? 1 : FT_HEADS, dim = mla ? MLA_DIM : FT_DIM;
        const int64_t tokens = mla ? (int64_t)(n / MLA_DIM) / FT_BS * FT_BS : FT_TOKENS;
        const int64_t bytes = row_bytes(r->format, dim) + (per_token_head(r->format) ? 4 : 0);
        double e0, e1;
        gaussian(plain, n, (size_t)dim, 0, 1);
        gaussian(outl, n, (size_t)dim, 1, 2);
        e0 = measure(r->format, plain, tokens, heads, dim);
        e1 = measure(r->format, outl, tokens, heads, dim);
        if (e0 < 0 || e1 < 0) {
            rc = 1;
            continue;
        }
        fprintf(f, "| %s | %lld | %.2f | %.3g | %.3g | %s |\n", r->name, (long long)bytes, 8.0 * (double)bytes / (double)dim,
                e0, e1, r->note);
    }
    free(plain), free(outl);
    return rc;
}

static const char BEGIN[] = "<!-- pagedkv formats: begin -->\n", END[] = "<!-- pagedkv formats: end -->\n";

/* Whether the text between the markers of `path` equals the table. */
static int check_doc(const char *path) {
    FILE *doc = fopen(path, "rb");
    char *text = NULL, *table = NULL, *b, *e;
    size_t len = 0, tlen = 0;
    long size;
    FILE *mem;
    int rc = 1;
    if (!doc) {
        fprintf(stderr, "pagedkv formats: cannot open %s\n", path);
        return 1;
    }
    fseek(doc, 0, SEEK_END);
    size = ftell(doc);
    fseek(doc, 0, SEEK_SET);
    text = calloc((size_t)size + 1, 1);
    if (text) len = fread(text, 1, (size_t)size, doc);
    fclose(doc);
    mem = tmpfile();
    if (!text || !mem || write_table(mem) != 0) goto out;
    tlen = (size_t)ftell(mem);
    rewind(mem);
    table = calloc(tlen + 1, 1);
    if (!table || fread(table, 1, tlen, mem) != tlen) goto out;
    b = strstr(text, BEGIN);
    e = b ? strstr(b, END) : NULL;
    if (!b || !e) {
        fprintf(stderr, "pagedkv formats: %s has no '%.*s' ... '%.*s' section\n", path, (int)strlen(BEGIN) - 1, BEGIN,
                (int)strlen(END) - 1, END);
        goto out;
    }
    b += strlen(BEGIN);
    if ((size_t)(e - b) != tlen || memcmp(b, table, tlen) != 0) {
        fprintf(stderr, "pagedkv formats: the table in %s is not what the program measures; regenerate it with "
                        "`pagedkv formats` and paste it between the markers:\n%s", path, table);
        goto out;
    }
    printf("%s: the formats table matches the measurement\n", path);
    rc = 0;
out:
    (void)len;
    if (mem) fclose(mem);
    free(text), free(table);
    return rc;
}

int cmd_formats(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[0], "--check") == 0) return check_doc(argv[1]);
    if (argc != 0) {
        fprintf(stderr, "usage: pagedkv formats [--check docs/formats.md]\n");
        return 2;
    }
    return write_table(stdout);
}
