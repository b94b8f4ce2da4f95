/*
 * Example 02 — a tiny serving loop on pagedkv's handles: a pool, a block table, block moves.
 *
 *   02_serving_loop [--cpu]
 *
 * The pool holds 2 layers per block (layer 0: bf16 NHD, layer 1: fp8 e4m3 HND with scale 0.5)
 * of 2 KV heads x 8 dims, 4 tokens per block, plus a pinned host tier for offload. The loop:
 *   1. admit 3 requests and prefill their prompts (append -> slots -> pkv_write_kv);
 *   2. decode 3 steps: append 1 token each, upload the batch's device mirror, write the new
 *      keys/values through the mirror's slot mapping (what a captured CUDA graph would read);
 *   3. fork request 1 (a shared prefix, e.g. parallel sampling) and decode both: the first
 *      write into the shared partial block copies it first (copy-on-write);
 *   4. speculative decoding on request 3: append 3 draft tokens, accept 1, truncate the rest;
 *   5. offload request 2's blocks to the host tier, clobber them on the device, onboard them;
 *   6. check every token of every request, on both layers, through pkv_gather_kv driven by the
 *      mirror's block table (exact: the values are representable in bf16 and in e4m3).
 * Runs on the GPU when one is present (unless --cpu), else on the CPU, with the same code.
 */
#include <pagedkv.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { BLOCK_SIZE = 4, NUM_BLOCKS = 32, HOST_BLOCKS = 8, HEADS = 2, DIM = 8, ROW = HEADS * DIM };
enum { LAYERS = 2, MAX_REQ = 8, MAX_TOK = 64, MAX_BATCH = 8, MAX_BLOCKS = 16 };

#define CHECK(call)                                                                      \
    do {                                                                                 \
        pkv_status status_ = (call);                                                     \
        if (status_ != PKV_SUCCESS) {                                                    \
            fprintf(stderr, "%s failed: %s: %s\n", #call, pkv_status_string(status_),    \
                    pkv_last_error_message());                                           \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

/* The engine's own view of a request: the tag of each token (its K/V values derive from it). */
typedef struct request {
    uint64_t id;
    int live, len;
    uint32_t tags[MAX_TOK];
} request;

static request reqs[MAX_REQ];
static uint32_t next_tag = 1;
static pkv_device dev = {PKV_DEVICE_CPU, 0};
static const pkv_device cpu = {PKV_DEVICE_CPU, 0};
static pkv_pool *pool;
static pkv_block_table *table;
static pkv_cache_view views[LAYERS];
static float host_k[MAX_TOK][ROW], host_v[MAX_TOK][ROW];
static void *d_k, *d_v, *d_slots, *d_out_k, *d_out_v;

/* K/V element j of a token: a multiple of 1/8 in [-2, 2] (exact in bf16, and in e4m3 after the
 * division by the 0.5 scale). */
static float token_value(uint32_t tag, int layer, int kv, int j) {
    uint32_t h = tag * 2654435761u ^ (uint32_t)(layer * 977 + kv * 131 + j) * 40503u;
    h ^= h >> 15;
    return (float)((int)(h % 33u) - 16) / 8.0f;
}

static pkv_tensor tensor(void *data, pkv_dtype dtype, int ndim, int64_t d0) {
    pkv_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data, t.dtype = dtype, t.device = dev, t.ndim = ndim;
    t.shape[0] = d0;
    t.strides[0] = ndim == 3 ? ROW : 1;
    if (ndim == 3) t.shape[1] = HEADS, t.shape[2] = DIM, t.strides[1] = DIM, t.strides[2] = 1;
    return t;
}

/* Write n tokens with the given tags to the slots in `slot_mapping` (n entries), both layers. */
static void write_tokens(const uint32_t *tags, int n, const pkv_tensor *slot_mapping) {
    int layer, i, j;
    pkv_tensor k = tensor(d_k, PKV_DTYPE_F32, 3, n), v = tensor(d_v, PKV_DTYPE_F32, 3, n);
    for (layer = 0; layer < LAYERS; ++layer) {
        for (i = 0; i < n; ++i)
            for (j = 0; j < ROW; ++j) {
                host_k[i][j] = token_value(tags[i], layer, 0, j);
                host_v[i][j] = token_value(tags[i], layer, 1, j);
            }
        CHECK(pkv_copy(d_k, dev, host_k, cpu, (size_t)n * sizeof host_k[0], NULL));
        CHECK(pkv_copy(d_v, dev, host_v, cpu, (size_t)n * sizeof host_v[0], NULL));
        CHECK(pkv_write_kv(&views[layer], &k, &v, slot_mapping, NULL, NULL));
        CHECK(pkv_stream_synchronize(NULL)); /* host_k / host_v are reused next */
    }
}

/* The engine's record of a new request (the table's side is added by the caller). */
static request *new_record(uint64_t id) {
    int i;
    for (i = 0; i < MAX_REQ && reqs[i].live; ++i) {}
    reqs[i].id = id, reqs[i].live = 1, reqs[i].len = 0;
    return &reqs[i];
}

static request *admit(uint64_t id) {
    CHECK(pkv_block_table_add(table, id));
    return new_record(id);
}

/* Append n new tokens to r and write them through the slots the table returns. */
static void append_and_write(request *r, int n) {
    int64_t slots[MAX_TOK];
    pkv_tensor sm = tensor(d_slots, PKV_DTYPE_INT64, 1, n);
    int i;
    CHECK(pkv_block_table_append(slots, table, r->id, n, NULL));
    for (i = 0; i < n; ++i) r->tags[r->len + i] = next_tag++;
    CHECK(pkv_copy(d_slots, dev, slots, cpu, (size_t)n * sizeof slots[0], NULL));
    write_tokens(r->tags + r->len, n, &sm);
    r->len += n;
}

/* One decode step for every live request: append 1 token each, upload the batch's mirror, write
 * the new tokens through the mirror's slot mapping (device memory at a fixed address). */
static int decode_step(void) {
    uint64_t ids[MAX_BATCH];
    int64_t news[MAX_BATCH];
    uint32_t tags[MAX_BATCH];
    pkv_batch_mirror m;
    int i, b = 0;
    for (i = 0; i < MAX_REQ; ++i) {
        if (!reqs[i].live) continue;
        CHECK(pkv_block_table_append(NULL, table, reqs[i].id, 1, NULL));
        tags[b] = reqs[i].tags[reqs[i].len++] = next_tag++;
        ids[b] = reqs[i].id, news[b] = 1, ++b;
    }
    CHECK(pkv_block_table_upload(table, ids, news, b, NULL));
    m.struct_size = sizeof m;
    CHECK(pkv_block_table_mirror(&m, table));
    m.slot_mapping.shape[0] = m.num_tokens; /* the step's tokens; the rest is -1 padding */
    write_tokens(tags, b, &m.slot_mapping);
    return b;
}

static int count_shared(uint64_t a, uint64_t b) {
    int32_t x[MAX_BLOCKS], y[MAX_BLOCKS];
    int64_t nx = 0, ny = 0, i, shared = 0;
    CHECK(pkv_block_table_blocks(x, MAX_BLOCKS, &nx, table, a));
    CHECK(pkv_block_table_blocks(y, MAX_BLOCKS, &ny, table, b));
    for (i = 0; i < nx && i < ny; ++i) shared += x[i] == y[i];
    return (int)shared;
}

static int64_t free_blocks(void) {
    pkv_pool_stats s;
    s.struct_size = sizeof s;
    CHECK(pkv_pool_get_stats(&s, pool));
    return s.free_blocks;
}

int main(int argc, char **argv) {
    pkv_layer_spec specs[LAYERS] = {PKV_LAYER_SPEC_INIT, PKV_LAYER_SPEC_INIT};
    pkv_pool_params params = PKV_POOL_PARAMS_INIT;
    pkv_block_table_params tparams = PKV_BLOCK_TABLE_PARAMS_INIT;
    const float half[1] = {0.5f};
    int32_t gpus = 0, dev_ids[MAX_BLOCKS], host_ids[MAX_BLOCKS];
    int64_t nblocks = 0, s, poison_slots[MAX_BLOCKS * BLOCK_SIZE];
    uint32_t poison_tags[MAX_BLOCKS * BLOCK_SIZE];
    uint64_t ids[MAX_REQ];
    int64_t news[MAX_REQ];
    request *r1, *r2, *r3, *r4;
    int i, j, layer, batch = 0, decode_batch = 0, steps = 0, shared_after_fork, shared_after_cow, total = 0, bad = 0;
    pkv_batch_mirror m;
    static float out_k[MAX_TOK][ROW], out_v[MAX_TOK][ROW];

    for (i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "--cpu") == 0) gpus = -1;
        else { fprintf(stderr, "usage: %s [--cpu]\n", argv[0]); return 2; }
    }
    if (gpus == 0) CHECK(pkv_cuda_device_count(&gpus));
    if (gpus > 0) dev.type = PKV_DEVICE_CUDA; /* device 0, the current device */

    /* The pool: 2 layers of different formats and layouts, one allocation, a host tier. */
    specs[0].format = PKV_CACHE_FORMAT_BF16, specs[0].layout = PKV_HEAD_LAYOUT_NHD;
    specs[1].format = PKV_CACHE_FORMAT_FP8_E4M3, specs[1].layout = PKV_HEAD_LAYOUT_HND;
    for (i = 0; i < LAYERS; ++i) specs[i].num_heads = HEADS, specs[i].head_size_k = DIM;
    params.device = dev;
    params.block_size = BLOCK_SIZE;
    params.num_layers = LAYERS;
    params.layers = specs;
    params.num_blocks = NUM_BLOCKS;
    params.num_host_blocks = HOST_BLOCKS;
    CHECK(pkv_pool_create(&pool, &params));
    CHECK(pkv_pool_set_scales(pool, 1, half, half, NULL));
    for (i = 0; i < LAYERS; ++i) CHECK(pkv_pool_layer_view(&views[i], pool, i, PKV_TIER_DEVICE));
    tparams.max_batch = MAX_BATCH, tparams.max_blocks = MAX_BLOCKS, tparams.max_tokens = MAX_TOK;
    CHECK(pkv_block_table_create(&table, pool, &tparams));
    CHECK(pkv_alloc(&d_k, dev, sizeof host_k));
    CHECK(pkv_alloc(&d_v, dev, sizeof host_v));
    CHECK(pkv_alloc(&d_slots, dev, MAX_TOK * sizeof(int64_t)));
    CHECK(pkv_alloc(&d_out_k, dev, sizeof out_k));
    CHECK(pkv_alloc(&d_out_v, dev, sizeof out_v));

    /* 1. Admit and prefill. */
    r1 = admit(1), r2 = admit(2), r3 = admit(3);
    append_and_write(r1, 7);
    append_and_write(r2, 5);
    append_and_write(r3, 10);

    /* 2. Decode. */
    for (i = 0; i < 3; ++i, ++steps) decode_batch = decode_step();

    /* 3. Fork request 1 (10 tokens: the third block is partial and now shared), decode both. */
    CHECK(pkv_block_table_fork(table, 1, 4));
    r4 = new_record(4);
    r4->len = r1->len;
    memcpy(r4->tags, r1->tags, sizeof r4->tags);
    shared_after_fork = count_shared(1, 4);
    for (i = 0; i < 2; ++i, ++steps) decode_batch = decode_step();
    shared_after_cow = count_shared(1, 4);

    /* 4. Speculative decoding on request 3: 3 draft tokens written, 1 accepted. */
    append_and_write(r3, 3);
    CHECK(pkv_block_table_truncate(table, 3, r3->len - 2));
    r3->len -= 2;

    /* 5. Offload request 2 to the host tier, clobber its device blocks, onboard them back. */
    CHECK(pkv_block_table_blocks(dev_ids, MAX_BLOCKS, &nblocks, table, 2));
    CHECK(pkv_pool_alloc_blocks(host_ids, pool, PKV_TIER_HOST, nblocks));
    CHECK(pkv_pool_swap_blocks(pool, PKV_TIER_DEVICE, dev_ids, PKV_TIER_HOST, host_ids, nblocks, NULL));
    for (s = 0; s < nblocks * BLOCK_SIZE; ++s) {
        poison_slots[s] = (int64_t)dev_ids[s / BLOCK_SIZE] * BLOCK_SIZE + s % BLOCK_SIZE;
        poison_tags[s] = 0xBAD0000u + (uint32_t)s;
    }
    CHECK(pkv_copy(d_slots, dev, poison_slots, cpu, (size_t)(nblocks * BLOCK_SIZE) * sizeof(int64_t), NULL));
    {
        pkv_tensor sm = tensor(d_slots, PKV_DTYPE_INT64, 1, nblocks * BLOCK_SIZE);
        write_tokens(poison_tags, (int)(nblocks * BLOCK_SIZE), &sm);
    }
    CHECK(pkv_pool_swap_blocks(pool, PKV_TIER_HOST, host_ids, PKV_TIER_DEVICE, dev_ids, nblocks, NULL));
    CHECK(pkv_pool_release_blocks(pool, PKV_TIER_HOST, host_ids, nblocks));
    CHECK(pkv_stream_synchronize(NULL));

    /* 6. Check every token through the mirror: all tokens of each request are "new" tokens, so
     * query_start_loc is the gather's cu_seq_lens. */
    batch = 0;
    for (i = 0; i < MAX_REQ; ++i)
        if (reqs[i].live) ids[batch] = reqs[i].id, news[batch] = reqs[i].len, total += reqs[i].len, ++batch;
    CHECK(pkv_block_table_upload(table, ids, news, batch, NULL));
    m.struct_size = sizeof m;
    CHECK(pkv_block_table_mirror(&m, table));
    m.block_table.shape[0] = batch;
    m.query_start_loc.shape[0] = batch + 1;
    for (layer = 0; layer < LAYERS; ++layer) {
        pkv_tensor ok = tensor(d_out_k, PKV_DTYPE_F32, 3, total), ov = tensor(d_out_v, PKV_DTYPE_F32, 3, total);
        int row = 0;
        CHECK(pkv_gather_kv(&ok, &ov, &views[layer], &m.block_table, &m.query_start_loc, NULL, NULL, NULL));
        CHECK(pkv_copy(out_k, cpu, d_out_k, dev, (size_t)total * sizeof out_k[0], NULL));
        CHECK(pkv_copy(out_v, cpu, d_out_v, dev, (size_t)total * sizeof out_v[0], NULL));
        CHECK(pkv_stream_synchronize(NULL));
        for (i = 0; i < MAX_REQ; ++i) {
            int p;
            if (!reqs[i].live) continue;
            for (p = 0; p < reqs[i].len; ++p, ++row)
                for (j = 0; j < ROW; ++j)
                    bad += out_k[row][j] != token_value(reqs[i].tags[p], layer, 0, j) ||
                           out_v[row][j] != token_value(reqs[i].tags[p], layer, 1, j);
        }
    }

    printf("pagedkv %s on %s: pool of %d blocks x %d tokens (+%d host blocks), layers bf16/NHD + "
           "fp8_e4m3/HND\n", pkv_version_string(), dev.type == PKV_DEVICE_CUDA ? "cuda:0" : "cpu",
           NUM_BLOCKS, BLOCK_SIZE, HOST_BLOCKS);
    printf("prefill 3 requests (7, 5, 10 tokens), %d decode steps (last batch %d)\n", steps, decode_batch);
    printf("fork 1 -> 4: %d blocks shared, %d after copy-on-write of the partial block\n",
           shared_after_fork, shared_after_cow);
    printf("request 3: 3 draft tokens, 1 accepted (truncated to %d tokens)\n", r3->len);
    printf("request 2: %d blocks offloaded to the host tier and onboarded back\n", (int)nblocks);
    printf("checked %d tokens of %d requests on %d layers through the mirror: %s\n", total, batch,
           LAYERS, bad ? "MISMATCH" : "ok");

    for (i = 0; i < MAX_REQ; ++i)
        if (reqs[i].live) CHECK(pkv_block_table_remove(table, reqs[i].id));
    if (free_blocks() != NUM_BLOCKS) {
        fprintf(stderr, "blocks leaked: %d of %d free\n", (int)free_blocks(), NUM_BLOCKS);
        bad = 1;
    }
    CHECK(pkv_block_table_destroy(table));
    CHECK(pkv_pool_destroy(pool));
    pkv_free(d_k, dev), pkv_free(d_v, dev), pkv_free(d_slots, dev), pkv_free(d_out_k, dev), pkv_free(d_out_v, dev);
    return bad ? 1 : 0;
}
