// pkv_pool_copy_blocks / swap_blocks / gather_blocks / scatter_blocks against a byte-level model
// of the pool: the tiers are byte images (filled with random bytes through pkv_copy), a block is
// bytes_per_block bytes, and a layer's K and V regions are located through the pool's own layer
// views. Every case compares the whole image of both tiers and the whole transfer buffer, so a
// byte written where it must not be (padding, a skipped block, a neighbour) fails the test.
// CPU pool always; CUDA pool (same cases) when a device is present.
#include <memory>

#include "test_common.h"

namespace pkvt {
namespace {

// ------------------------------------------------------------------------------ pool schemas
struct LayerCfg {
    pkv_cache_format format;
    pkv_head_layout layout;
    int64_t H, Dk, Dv;
    bool k_only;
};
struct PoolCfg {
    std::string name;
    int64_t block_size;
    std::vector<LayerCfg> layers;
};

// Regions that are multiples of 16 bytes (16-byte accesses everywhere).
PoolCfg aligned_cfg() {
    return {"aligned", 4,
            {{PKV_CACHE_FORMAT_BF16, PKV_HEAD_LAYOUT_NHD, 2, 64, 64, false},
             {PKV_CACHE_FORMAT_FP8_E4M3, PKV_HEAD_LAYOUT_HND, 2, 64, 0, true},
             {PKV_CACHE_FORMAT_F32, PKV_HEAD_LAYOUT_NHD, 1, 32, 16, false}}};
}
// Odd region sizes (an odd K-only fp8 region, Dk != Dv): byte accesses in LAYER_MAJOR order.
PoolCfg odd_cfg() {
    return {"odd", 3,
            {{PKV_CACHE_FORMAT_BF16, PKV_HEAD_LAYOUT_NHD, 2, 46, 46, false},
             {PKV_CACHE_FORMAT_FP8_E4M3, PKV_HEAD_LAYOUT_NHD, 3, 7, 0, true},
             {PKV_CACHE_FORMAT_F16, PKV_HEAD_LAYOUT_HND, 1, 6, 10, false}}};
}

int64_t format_bytes(pkv_cache_format f) {
    return f == PKV_CACHE_FORMAT_F32 ? 4 : (f == PKV_CACHE_FORMAT_F16 || f == PKV_CACHE_FORMAT_BF16) ? 2 : 1;
}

// Byte range of a layer's K and V regions inside a block (v_len 0: K only).
struct Region {
    int64_t k_off = 0, k_len = 0, v_off = 0, v_len = 0;
    int64_t bytes() const { return k_len + v_len; }
};

// A pool, its tiers as byte images, and the layer regions read from its layer views.
class TestPool {
public:
    static std::unique_ptr<TestPool> make(Backend be, const PoolCfg &cfg, int64_t num_blocks, int64_t host_blocks) {
        std::unique_ptr<TestPool> p(new TestPool());
        p->be = be;
        p->dev = backend_device(be);
        std::vector<pkv_layer_spec> specs;
        for (const LayerCfg &l : cfg.layers) {
            pkv_layer_spec s = PKV_LAYER_SPEC_INIT;
            s.flags = l.k_only ? PKV_LAYER_K_ONLY : 0u;
            s.format = l.format;
            s.layout = l.layout;
            s.num_heads = l.H;
            s.head_size_k = l.Dk;
            s.head_size_v = l.k_only ? 0 : l.Dv;
            specs.push_back(s);
        }
        pkv_pool_params params = PKV_POOL_PARAMS_INIT;
        params.device = p->dev;
        params.block_size = cfg.block_size;
        params.num_layers = int64_t(specs.size());
        params.layers = specs.data();
        params.num_blocks = num_blocks;
        params.num_host_blocks = host_blocks;
        p->status = pkv_pool_create(&p->pool, &params);
        if (p->status != PKV_SUCCESS) {
            p->message = pkv_last_error_message();
            return p;
        }
        pkv_pool_stats st;
        std::memset(&st, 0, sizeof st);
        st.struct_size = sizeof st;
        p->status = pkv_pool_get_stats(&st, p->pool);
        if (p->status != PKV_SUCCESS) return p;
        p->bpb = st.bytes_per_block;
        p->NB = st.total_blocks;
        p->NH = st.total_host_blocks;
        for (size_t i = 0; i < cfg.layers.size(); ++i) {
            pkv_cache_view v;
            p->status = pkv_pool_layer_view(&v, p->pool, int64_t(i), PKV_TIER_DEVICE);
            if (p->status != PKV_SUCCESS) return p;
            const LayerCfg &l = cfg.layers[i];
            if (i == 0) p->dev_base = static_cast<uint8_t *>(v.k_data);
            Region r;
            const int64_t e = format_bytes(l.format);
            r.k_off = static_cast<uint8_t *>(v.k_data) - p->dev_base;
            r.k_len = cfg.block_size * l.H * l.Dk * e;
            if (!l.k_only) {
                r.v_off = static_cast<uint8_t *>(v.v_data) - p->dev_base;
                r.v_len = cfg.block_size * l.H * l.Dv * e;
            }
            p->regions.push_back(r);
        }
        if (host_blocks > 0) {
            pkv_cache_view v;
            p->status = pkv_pool_layer_view(&v, p->pool, 0, PKV_TIER_HOST);
            p->host_base = static_cast<uint8_t *>(v.k_data);
        }
        return p;
    }
    ~TestPool() {
        if (pool) pkv_pool_destroy(pool);
    }

    size_t tier_bytes(pkv_tier t) const { return size_t((t == PKV_TIER_HOST ? NH : NB) * bpb); }
    // The host tier is host memory (pinned for a CUDA pool): the ops see it as CPU memory.
    pkv_device tier_device(pkv_tier t) const { return t == PKV_TIER_HOST ? backend_device(Backend::CPU) : dev; }
    uint8_t *tier_base(pkv_tier t) const { return t == PKV_TIER_HOST ? host_base : dev_base; }

    void put(pkv_tier t, const std::vector<uint8_t> &img) const {
        ASSERT_EQ(img.size(), tier_bytes(t));
        ASSERT_EQ(pkv_copy(tier_base(t), tier_device(t), img.data(), backend_device(Backend::CPU), img.size(), nullptr),
                  PKV_SUCCESS)
            << pkv_last_error_message();
        ASSERT_EQ(pkv_stream_synchronize(nullptr), PKV_SUCCESS);
    }
    std::vector<uint8_t> image(pkv_tier t) const {
        std::vector<uint8_t> img(tier_bytes(t));
        EXPECT_EQ(pkv_copy(img.data(), backend_device(Backend::CPU), tier_base(t), tier_device(t), img.size(), nullptr),
                  PKV_SUCCESS)
            << pkv_last_error_message();
        EXPECT_EQ(pkv_stream_synchronize(nullptr), PKV_SUCCESS);
        return img;
    }
    int64_t layer_major_bytes() const {
        int64_t n = 0;
        for (const Region &r : regions) n += r.bytes();
        return n;
    }
    // "block 3, layer 1 V byte 17" for a byte offset of a tier image.
    std::string describe(int64_t off) const {
        const int64_t b = off / bpb, in = off % bpb;
        std::ostringstream os;
        os << "block " << b;
        for (size_t l = 0; l < regions.size(); ++l) {
            const Region &r = regions[l];
            if (in >= r.k_off && in < r.k_off + r.k_len) return os.str() + ", layer " + std::to_string(l) + " K";
            if (r.v_len && in >= r.v_off && in < r.v_off + r.v_len) return os.str() + ", layer " + std::to_string(l) + " V";
        }
        return os.str() + ", padding";
    }

    Backend be = Backend::CPU;
    pkv_device dev{};
    pkv_pool *pool = nullptr;
    pkv_status status = PKV_SUCCESS;
    std::string message;
    int64_t bpb = 0, NB = 0, NH = 0;
    uint8_t *dev_base = nullptr, *host_base = nullptr;
    std::vector<Region> regions;

private:
    TestPool() = default;
};

// ------------------------------------------------------------------------------ reference model
// Block-major transfer: buffer slot i is block ids[i] (whole padded block); skipped ids leave it.
void model_block_major(std::vector<uint8_t> &pool_img, std::vector<uint8_t> &buf, const TestPool &p,
                       const std::vector<int64_t> &ids, bool to_buffer) {
    for (size_t i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0 || ids[i] >= p.NB) continue;
        uint8_t *blk = pool_img.data() + ids[i] * p.bpb, *slot = buf.data() + int64_t(i) * p.bpb;
        if (to_buffer) std::memcpy(slot, blk, size_t(p.bpb));
        else std::memcpy(blk, slot, size_t(p.bpb));
    }
}

// Layer-major transfer: layer l's section is [n][K bytes, V bytes] after the earlier layers'.
void model_layer_major(std::vector<uint8_t> &pool_img, std::vector<uint8_t> &buf, const TestPool &p,
                       const std::vector<int64_t> &ids, bool to_buffer) {
    const int64_t n = int64_t(ids.size());
    int64_t section = 0;
    for (const Region &r : p.regions) {
        for (int64_t i = 0; i < n; ++i) {
            if (ids[size_t(i)] < 0 || ids[size_t(i)] >= p.NB) continue;
            uint8_t *blk = pool_img.data() + ids[size_t(i)] * p.bpb;
            uint8_t *slot = buf.data() + section + i * r.bytes();
            auto move = [&](int64_t off_in_block, int64_t off_in_slot, int64_t len) {
                if (to_buffer) std::memcpy(slot + off_in_slot, blk + off_in_block, size_t(len));
                else std::memcpy(blk + off_in_block, slot + off_in_slot, size_t(len));
            };
            move(r.k_off, 0, r.k_len);
            if (r.v_len) move(r.v_off, r.k_len, r.v_len);
        }
        section += n * r.bytes();
    }
}

// ------------------------------------------------------------------------------ buffers
enum class BufKind { HOST, HOST_OFFSET, DEVICE, DEVICE_OFFSET, PINNED, PINNED_OFFSET };
const char *buf_kind_name(BufKind k) {
    switch (k) {
        case BufKind::HOST: return "host";
        case BufKind::HOST_OFFSET: return "host+1";
        case BufKind::DEVICE: return "device";
        case BufKind::DEVICE_OFFSET: return "device+8";
        case BufKind::PINNED: return "pinned";
        default: return "pinned+4";
    }
}

// A transfer buffer allocated with pkv_alloc, its data pointer possibly offset (misaligned).
class TransferBuf {
public:
    TransferBuf(BufKind k, size_t bytes) : bytes_(bytes) {
        int64_t offset = 0;
        switch (k) {
            case BufKind::HOST: dev_ = {PKV_DEVICE_CPU, 0}; break;
            case BufKind::HOST_OFFSET: dev_ = {PKV_DEVICE_CPU, 0}; offset = 1; break;
            case BufKind::DEVICE: dev_ = {PKV_DEVICE_CUDA, 0}; break;
            case BufKind::DEVICE_OFFSET: dev_ = {PKV_DEVICE_CUDA, 0}; offset = 8; break;
            case BufKind::PINNED: dev_ = {PKV_DEVICE_CUDA_HOST, 0}; break;
            case BufKind::PINNED_OFFSET: dev_ = {PKV_DEVICE_CUDA_HOST, 0}; offset = 4; break;
        }
        status_ = pkv_alloc(&base_, dev_, bytes + 64);
        data_ = static_cast<uint8_t *>(base_) + offset;
    }
    ~TransferBuf() {
        if (base_) pkv_free(base_, dev_);
    }
    TransferBuf(const TransferBuf &) = delete;
    TransferBuf &operator=(const TransferBuf &) = delete;
    pkv_status status() const { return status_; }
    uint8_t *data() const { return data_; }
    pkv_device device() const { return dev_; }
    void put(const std::vector<uint8_t> &v) const {
        ASSERT_EQ(v.size(), bytes_);
        ASSERT_EQ(pkv_copy(data_, dev_, v.data(), {PKV_DEVICE_CPU, 0}, bytes_, nullptr), PKV_SUCCESS);
        ASSERT_EQ(pkv_stream_synchronize(nullptr), PKV_SUCCESS);
    }
    std::vector<uint8_t> get() const {
        std::vector<uint8_t> v(bytes_);
        EXPECT_EQ(pkv_copy(v.data(), {PKV_DEVICE_CPU, 0}, data_, dev_, bytes_, nullptr), PKV_SUCCESS);
        EXPECT_EQ(pkv_stream_synchronize(nullptr), PKV_SUCCESS);
        return v;
    }

private:
    void *base_ = nullptr;
    uint8_t *data_ = nullptr;
    pkv_device dev_{};
    size_t bytes_ = 0;
    pkv_status status_ = PKV_SUCCESS;
};

// An id vector (int32 or int64) on a backend, and its tensor.
struct Ids {
    Buf buf;
    pkv_tensor t;
    Ids(Backend be, const std::vector<int64_t> &ids, bool i64) {
        const pkv_device dev = backend_device(be);
        if (i64) {
            buf = to_device(be, ids);
        } else {
            std::vector<int32_t> v(ids.begin(), ids.end());
            buf = to_device(be, v);
        }
        t = make_tensor(buf.ptr(), i64 ? PKV_DTYPE_INT64 : PKV_DTYPE_INT32, dev, {int64_t(ids.size())}, {1});
    }
};

// ------------------------------------------------------------------------------ parameterized suite
struct MoveCase {
    Backend be;
    int cfg;  // 0 aligned, 1 odd
    std::string name;
};
void PrintTo(const MoveCase &c, std::ostream *os) { *os << c.name; }

class BlockMoves : public ::testing::TestWithParam<MoveCase> {
protected:
    void SetUp() override {
        PKVT_SKIP_IF_NO_BACKEND(GetParam().be);
        cfg_ = GetParam().cfg == 0 ? aligned_cfg() : odd_cfg();
        pool_ = TestPool::make(GetParam().be, cfg_, 24, 12);
        ASSERT_EQ(pool_->status, PKV_SUCCESS) << pool_->message;
        ASSERT_GT(pool_->bpb, 0);
        ASSERT_EQ(pool_->bpb % 256, 0) << "bytes_per_block";
        Rng r(77 + GetParam().cfg);
        dev0_ = random_bytes(r, pool_->tier_bytes(PKV_TIER_DEVICE));
        host0_ = random_bytes(r, pool_->tier_bytes(PKV_TIER_HOST));
        pool_->put(PKV_TIER_DEVICE, dev0_);
        pool_->put(PKV_TIER_HOST, host0_);
        stream_.reset(new TestStream(GetParam().be, true));
    }
    Backend be() const { return GetParam().be; }
    ::testing::AssertionResult tier_is(pkv_tier t, const std::vector<uint8_t> &expected, const std::string &what) {
        const TestPool &p = *pool_;
        return bytes_equal(expected, p.image(t), [&](int64_t off) { return p.describe(off); }, what);
    }
    void sync() { stream_->sync(be()); }

    PoolCfg cfg_;
    std::unique_ptr<TestPool> pool_;
    std::vector<uint8_t> dev0_, host0_;
    std::unique_ptr<TestStream> stream_;
};

TEST_P(BlockMoves, CopyBlocksCopiesEveryLayerInOneCall) {
    const TestPool &p = *pool_;
    for (bool i64 : {false, true}) {
        SCOPED_TRACE(i64 ? "int64 pairs" : "int32 pairs");
        pool_->put(PKV_TIER_DEVICE, dev0_);
        // Sources from [0, 12), destinations from [12, 24): order-independent. Plus pairs that
        // must be skipped (an id out of range on either side) and a block onto itself.
        std::vector<int64_t> pairs = {3, 15, 0, 23, 7, 12, 11, 13, 5, 5,
                                      -1, 14, 4, -7, 2, 24, 24, 16, 9, (int64_t(1) << 31) + 17};
        if (!i64) pairs.back() = INT32_MAX;
        const int64_t P = int64_t(pairs.size()) / 2;
        std::vector<uint8_t> expected = dev0_;
        for (int64_t i = 0; i < P; ++i) {
            const int64_t s = pairs[size_t(2 * i)], d = pairs[size_t(2 * i + 1)];
            if (s < 0 || s >= p.NB || d < 0 || d >= p.NB) continue;
            std::memcpy(&expected[size_t(d * p.bpb)], &dev0_[size_t(s * p.bpb)], size_t(p.bpb));
        }
        Buf pb = i64 ? to_device(be(), pairs) : to_device(be(), std::vector<int32_t>(pairs.begin(), pairs.end()));
        pkv_tensor pt = make_tensor(pb.ptr(), i64 ? PKV_DTYPE_INT64 : PKV_DTYPE_INT32, p.dev, {P, 2}, {2, 1});
        ASSERT_EQ(pkv_pool_copy_blocks(pool_->pool, &pt, stream_->get()), PKV_SUCCESS) << pkv_last_error_message();
        sync();
        EXPECT_TRUE(tier_is(PKV_TIER_DEVICE, expected, "device tier after copy_blocks"));
        EXPECT_TRUE(tier_is(PKV_TIER_HOST, host0_, "host tier (untouched)"));
    }
}

TEST_P(BlockMoves, CopyBlocksManyPairs) {
    // More pairs than one grid step covers in the small-call path: every block of one half to a
    // random permutation of the other half.
    const TestPool &p = *pool_;
    Rng r(5);
    std::vector<int64_t> dst(size_t(p.NB / 2));
    for (size_t i = 0; i < dst.size(); ++i) dst[i] = int64_t(i) + p.NB / 2;
    r.shuffle(dst);
    std::vector<int32_t> pairs;
    std::vector<uint8_t> expected = dev0_;
    for (int64_t i = 0; i < p.NB / 2; ++i) {
        pairs.push_back(int32_t(i));
        pairs.push_back(int32_t(dst[size_t(i)]));
        std::memcpy(&expected[size_t(dst[size_t(i)] * p.bpb)], &dev0_[size_t(i * p.bpb)], size_t(p.bpb));
    }
    Buf pb = to_device(be(), pairs);
    pkv_tensor pt = make_tensor(pb.ptr(), PKV_DTYPE_INT32, p.dev, {p.NB / 2, 2}, {2, 1});
    ASSERT_EQ(pkv_pool_copy_blocks(pool_->pool, &pt, stream_->get()), PKV_SUCCESS) << pkv_last_error_message();
    sync();
    EXPECT_TRUE(tier_is(PKV_TIER_DEVICE, expected, "device tier after copy_blocks"));

    // P = 0: nothing happens (data may be NULL).
    pkv_tensor empty = make_tensor(nullptr, PKV_DTYPE_INT64, p.dev, {0, 2}, {2, 1});
    ASSERT_EQ(pkv_pool_copy_blocks(pool_->pool, &empty, stream_->get()), PKV_SUCCESS) << pkv_last_error_message();
    sync();
    EXPECT_TRUE(tier_is(PKV_TIER_DEVICE, expected, "device tier after an empty copy_blocks"));
}

// Applies swap pairs in order to the images (the documented in-order semantics).
void model_swap(std::vector<uint8_t> &src_img, std::vector<uint8_t> &dst_img, int64_t bpb,
                const std::vector<int32_t> &src, const std::vector<int32_t> &dst) {
    for (size_t i = 0; i < src.size(); ++i)
        std::memmove(&dst_img[size_t(dst[i] * bpb)], &src_img[size_t(src[i] * bpb)], size_t(bpb));
}

TEST_P(BlockMoves, SwapBetweenTiersAndInsideTheDeviceTier) {
    const TestPool &p = *pool_;
    std::vector<uint8_t> dev = dev0_, host = host0_;
    auto swap = [&](pkv_tier st, std::vector<int32_t> src, pkv_tier dt, std::vector<int32_t> dst, const char *what) {
        SCOPED_TRACE(what);
        std::vector<uint8_t> &si = st == PKV_TIER_HOST ? host : dev, &di = dt == PKV_TIER_HOST ? host : dev;
        model_swap(si, di, p.bpb, src, dst);
        ASSERT_EQ(pkv_pool_swap_blocks(pool_->pool, st, src.data(), dt, dst.data(), int64_t(src.size()), stream_->get()),
                  PKV_SUCCESS)
            << pkv_last_error_message();
        // The id arrays are read before return: clobber them before the copies run.
        std::fill(src.begin(), src.end(), -1);
        std::fill(dst.begin(), dst.end(), -1);
        sync();
        EXPECT_TRUE(tier_is(PKV_TIER_DEVICE, dev, std::string("device tier after ") + what));
        EXPECT_TRUE(tier_is(PKV_TIER_HOST, host, std::string("host tier after ") + what));
    };
    // Offload: a run (3,4,5 -> 0,1,2), a run broken on the destination side, scattered ids.
    swap(PKV_TIER_DEVICE, {3, 4, 5, 6, 7, 20, 1, 23}, PKV_TIER_HOST, {0, 1, 2, 9, 10, 4, 11, 5}, "swap D2H");
    // Onboard into other blocks: runs, scattered, the last block of each tier.
    swap(PKV_TIER_HOST, {0, 1, 2, 11, 9, 10}, PKV_TIER_DEVICE, {10, 11, 12, 23, 0, 1}, "swap H2D");
    // Inside the device tier: disjoint run and scattered pairs.
    swap(PKV_TIER_DEVICE, {14, 15, 16, 2, 8}, PKV_TIER_DEVICE, {17, 18, 19, 21, 22}, "swap D2D");
    // A chain inside one tier takes effect pair by pair: 4->5, 5->6, 6->7 copies block 4 three
    // times; a block onto itself is a no-op.
    swap(PKV_TIER_DEVICE, {4, 5, 6, 9}, PKV_TIER_DEVICE, {5, 6, 7, 9}, "swap D2D chain");
    swap(PKV_TIER_DEVICE, {13, 12, 11}, PKV_TIER_DEVICE, {12, 11, 10}, "swap D2D descending chain");
    // Within the host tier too.
    swap(PKV_TIER_HOST, {6, 7, 8}, PKV_TIER_HOST, {3, 4, 5}, "swap H2H");
    // n = 0 (ids may be NULL).
    ASSERT_EQ(pkv_pool_swap_blocks(pool_->pool, PKV_TIER_DEVICE, nullptr, PKV_TIER_HOST, nullptr, 0, stream_->get()),
              PKV_SUCCESS)
        << pkv_last_error_message();
}

struct TransferSpec {
    pkv_block_order order;
    BufKind kind;
    bool i64;
};

std::vector<BufKind> buffer_kinds(Backend be) {
    if (be == Backend::CPU) return {BufKind::HOST, BufKind::HOST_OFFSET};
    return {BufKind::DEVICE, BufKind::PINNED, BufKind::DEVICE_OFFSET, BufKind::PINNED_OFFSET};
}

TEST_P(BlockMoves, GatherAndScatterBothOrdersEveryBuffer) {
    const TestPool &p = *pool_;
    // Ids with skipped entries (negative, past the end) between valid ones; valid ids unique.
    const std::vector<int64_t> ids = {5, 0, -1, 23, 7, 24, 8, 9, 10, 3, 1000000, 17, -5, 2};
    const int64_t n = int64_t(ids.size());
    int round = 0;
    for (pkv_block_order order : {PKV_BLOCK_ORDER_BLOCK_MAJOR, PKV_BLOCK_ORDER_LAYER_MAJOR})
        for (BufKind kind : buffer_kinds(be()))
            for (bool i64 : {false, true}) {
                const bool bm = order == PKV_BLOCK_ORDER_BLOCK_MAJOR;
                SCOPED_TRACE(std::string(bm ? "block-major" : "layer-major") + ", buffer " + buf_kind_name(kind) +
                             (i64 ? ", int64 ids" : ", int32 ids"));
                Rng r(1000 + round++);
                const size_t bytes = size_t(n * (bm ? p.bpb : p.layer_major_bytes()));
                TransferBuf buf(kind, bytes);
                ASSERT_EQ(buf.status(), PKV_SUCCESS) << pkv_last_error_message();
                Ids id(be(), ids, i64);
                auto model = bm ? model_block_major : model_layer_major;

                // gather: buffer poisoned; slots of skipped ids keep the poison.
                pool_->put(PKV_TIER_DEVICE, dev0_);
                const std::vector<uint8_t> poison = random_bytes(r, bytes);
                buf.put(poison);
                std::vector<uint8_t> img = dev0_, expected_buf = poison;
                model(img, expected_buf, p, ids, true);
                ASSERT_EQ(pkv_pool_gather_blocks(buf.data(), buf.device(), order, pool_->pool, &id.t, stream_->get()),
                          PKV_SUCCESS)
                    << pkv_last_error_message();
                sync();
                EXPECT_TRUE(bytes_equal(expected_buf, buf.get(), nullptr, "gathered buffer"));
                EXPECT_TRUE(tier_is(PKV_TIER_DEVICE, dev0_, "device tier after gather (untouched)"));

                // scatter: random buffer into the blocks; padding (layer-major) and other blocks kept.
                const std::vector<uint8_t> src = random_bytes(r, bytes);
                buf.put(src);
                std::vector<uint8_t> expected_img = dev0_, scratch = src;
                model(expected_img, scratch, p, ids, false);
                ASSERT_EQ(pkv_pool_scatter_blocks(pool_->pool, &id.t, buf.data(), buf.device(), order, stream_->get()),
                          PKV_SUCCESS)
                    << pkv_last_error_message();
                sync();
                EXPECT_TRUE(tier_is(PKV_TIER_DEVICE, expected_img, "device tier after scatter"));
                EXPECT_TRUE(bytes_equal(src, buf.get(), nullptr, "buffer after scatter (read only)"));
                EXPECT_TRUE(tier_is(PKV_TIER_HOST, host0_, "host tier (untouched)"));
            }
}

TEST_P(BlockMoves, GatherThenScatterMovesBlocks) {
    // Transfer between engines: gather blocks A, scatter the buffer into blocks B; B then holds
    // A's contents (whole blocks for block-major, K and V regions for layer-major).
    const TestPool &p = *pool_;
    const std::vector<int64_t> a = {2, 3, 4, 11, 0, 7}, b = {20, 13, 14, 15, 23, 12};
    for (pkv_block_order order : {PKV_BLOCK_ORDER_BLOCK_MAJOR, PKV_BLOCK_ORDER_LAYER_MAJOR}) {
        const bool bm = order == PKV_BLOCK_ORDER_BLOCK_MAJOR;
        SCOPED_TRACE(bm ? "block-major" : "layer-major");
        pool_->put(PKV_TIER_DEVICE, dev0_);
        const size_t bytes = a.size() * size_t(bm ? p.bpb : p.layer_major_bytes());
        TransferBuf buf(be() == Backend::CPU ? BufKind::HOST : BufKind::DEVICE, bytes);
        ASSERT_EQ(buf.status(), PKV_SUCCESS);
        Ids ia(be(), a, false), ib(be(), b, true);
        ASSERT_EQ(pkv_pool_gather_blocks(buf.data(), buf.device(), order, pool_->pool, &ia.t, stream_->get()),
                  PKV_SUCCESS)
            << pkv_last_error_message();
        ASSERT_EQ(pkv_pool_scatter_blocks(pool_->pool, &ib.t, buf.data(), buf.device(), order, stream_->get()),
                  PKV_SUCCESS)
            << pkv_last_error_message();
        sync();
        std::vector<uint8_t> expected = dev0_;
        for (size_t i = 0; i < a.size(); ++i) {
            const uint8_t *from = &dev0_[size_t(a[i] * p.bpb)];
            uint8_t *to = &expected[size_t(b[i] * p.bpb)];
            if (bm) {
                std::memcpy(to, from, size_t(p.bpb));
                continue;
            }
            for (const Region &r : p.regions) {
                std::memcpy(to + r.k_off, from + r.k_off, size_t(r.k_len));
                if (r.v_len) std::memcpy(to + r.v_off, from + r.v_off, size_t(r.v_len));
            }
        }
        EXPECT_TRUE(tier_is(PKV_TIER_DEVICE, expected, "device tier after gather + scatter"));
    }
}

TEST_P(BlockMoves, OffloadRoundTripThroughTheHostTier) {
    // offload = swap D2H, scribble over the device blocks, onboard = swap H2D: bytes come back.
    const TestPool &p = *pool_;
    const std::vector<int32_t> dev_ids = {1, 2, 3, 9, 17}, host_ids = {4, 5, 6, 0, 11};
    ASSERT_EQ(pkv_pool_swap_blocks(pool_->pool, PKV_TIER_DEVICE, dev_ids.data(), PKV_TIER_HOST, host_ids.data(), 5,
                                   stream_->get()),
              PKV_SUCCESS);
    const std::vector<int32_t> pairs = {20, 1, 20, 2, 20, 3, 20, 9, 20, 17};  // overwrite with block 20
    Buf pb = to_device(be(), pairs);
    pkv_tensor pt = make_tensor(pb.ptr(), PKV_DTYPE_INT32, p.dev, {5, 2}, {2, 1});
    ASSERT_EQ(pkv_pool_copy_blocks(pool_->pool, &pt, stream_->get()), PKV_SUCCESS);
    ASSERT_EQ(pkv_pool_swap_blocks(pool_->pool, PKV_TIER_HOST, host_ids.data(), PKV_TIER_DEVICE, dev_ids.data(), 5,
                                   stream_->get()),
              PKV_SUCCESS);
    sync();
    EXPECT_TRUE(tier_is(PKV_TIER_DEVICE, dev0_, "device tier after offload, overwrite, onboard"));
}

std::vector<MoveCase> move_cases(Backend be) {
    return {{be, 0, "aligned"}, {be, 1, "odd"}};
}
std::string move_name(const ::testing::TestParamInfo<MoveCase> &i) { return i.param.name; }
INSTANTIATE_TEST_SUITE_P(Cpu, BlockMoves, ::testing::ValuesIn(move_cases(Backend::CPU)), move_name);
INSTANTIATE_TEST_SUITE_P(Cuda, BlockMoves, ::testing::ValuesIn(move_cases(Backend::CUDA)), move_name);

// ------------------------------------------------------------------------------ errors
// Each bad call fails with a message naming the argument and changes no byte of either tier.
class BlockMovesErrors : public ::testing::Test {
protected:
    void make(Backend be, int64_t host_blocks) {
        pool_ = TestPool::make(be, aligned_cfg(), 8, host_blocks);
        ASSERT_EQ(pool_->status, PKV_SUCCESS) << pool_->message;
        Rng r(3);
        dev0_ = random_bytes(r, pool_->tier_bytes(PKV_TIER_DEVICE));
        host0_ = random_bytes(r, pool_->tier_bytes(PKV_TIER_HOST));
        pool_->put(PKV_TIER_DEVICE, dev0_);
        if (host_blocks) pool_->put(PKV_TIER_HOST, host0_);
    }
    ::testing::AssertionResult untouched() {
        if (pool_->be == Backend::CUDA) device_sync(Backend::CUDA);
        auto r = bytes_equal(dev0_, pool_->image(PKV_TIER_DEVICE), nullptr, "device tier");
        if (!r || pool_->NH == 0) return r;
        return bytes_equal(host0_, pool_->image(PKV_TIER_HOST), nullptr, "host tier");
    }
    std::unique_ptr<TestPool> pool_;
    std::vector<uint8_t> dev0_, host0_;
};

constexpr pkv_status INVALID = PKV_ERROR_INVALID_ARGUMENT;

TEST_F(BlockMovesErrors, CopyBlocks) {
    make(Backend::CPU, 0);
    pkv_pool *pool = pool_->pool;
    const pkv_device cpu = backend_device(Backend::CPU);
    std::vector<int64_t> pairs = {0, 1, 2, 3, 4, 5};
    pkv_tensor ok = make_tensor(pairs.data(), PKV_DTYPE_INT64, cpu, {3, 2}, {2, 1});
    EXPECT_TRUE(failed_with(pkv_pool_copy_blocks(nullptr, &ok, nullptr), INVALID, "pkv_pool_copy_blocks", {"pool"}));
    EXPECT_TRUE(failed_with(pkv_pool_copy_blocks(pool, nullptr, nullptr), INVALID, "pkv_pool_copy_blocks", {"pairs"}));
    struct Bad {
        const char *what;
        std::function<void(pkv_tensor &)> mutate;
        const char *fragment;
    };
    const std::vector<Bad> bad = {
        {"1-D", [](pkv_tensor &t) { t.ndim = 1; t.shape[0] = 6; t.strides[0] = 1; }, "2-D"},
        {"[3, 3]", [](pkv_tensor &t) { t.shape[0] = 2; t.shape[1] = 3; t.strides[0] = 3; }, "shape[1]"},
        {"f32", [](pkv_tensor &t) { t.dtype = PKV_DTYPE_F32; }, "dtype"},
        {"uint8", [](pkv_tensor &t) { t.dtype = PKV_DTYPE_UINT8; }, "dtype"},
        {"row stride 3", [](pkv_tensor &t) { t.shape[0] = 2; t.strides[0] = 3; }, "contiguous"},
        {"column stride 2", [](pkv_tensor &t) { t.shape[0] = 1; t.strides[1] = 2; }, "contiguous"},
        {"negative rows", [](pkv_tensor &t) { t.shape[0] = -1; }, "shape[0]"},
        {"NULL data", [](pkv_tensor &t) { t.data = nullptr; }, "data"},
        {"misaligned", [](pkv_tensor &t) { t.data = static_cast<char *>(t.data) + 4; }, "aligned"},
        {"on CUDA", [](pkv_tensor &t) { t.device = backend_device(Backend::CUDA); }, "pairs"},
    };
    for (const Bad &b : bad) {
        SCOPED_TRACE(b.what);
        pkv_tensor t = ok;
        b.mutate(t);
        EXPECT_TRUE(failed_with(pkv_pool_copy_blocks(pool, &t, nullptr), INVALID, "pkv_pool_copy_blocks",
                                {"pairs", b.fragment}));
        EXPECT_TRUE(untouched());
    }
    ASSERT_EQ(pkv_pool_copy_blocks(pool, &ok, nullptr), PKV_SUCCESS) << pkv_last_error_message();
    EXPECT_STREQ(pkv_last_error_message(), "");
}

TEST_F(BlockMovesErrors, SwapBlocks) {
    make(Backend::CPU, 4);
    pkv_pool *pool = pool_->pool;
    const std::vector<int32_t> src = {0, 1, 7}, dst = {0, 3, 2};
    const char *fn = "pkv_pool_swap_blocks";
    EXPECT_TRUE(failed_with(pkv_pool_swap_blocks(nullptr, PKV_TIER_DEVICE, src.data(), PKV_TIER_HOST, dst.data(), 3, nullptr),
                            INVALID, fn, {"pool"}));
    EXPECT_TRUE(failed_with(pkv_pool_swap_blocks(pool, pkv_tier(7), src.data(), PKV_TIER_HOST, dst.data(), 3, nullptr),
                            INVALID, fn, {"tier"}));
    EXPECT_TRUE(failed_with(pkv_pool_swap_blocks(pool, PKV_TIER_DEVICE, src.data(), pkv_tier(2), dst.data(), 3, nullptr),
                            INVALID, fn, {"tier"}));
    EXPECT_TRUE(failed_with(pkv_pool_swap_blocks(pool, PKV_TIER_DEVICE, nullptr, PKV_TIER_HOST, dst.data(), 3, nullptr),
                            INVALID, fn, {"src_ids"}));
    EXPECT_TRUE(failed_with(pkv_pool_swap_blocks(pool, PKV_TIER_DEVICE, src.data(), PKV_TIER_HOST, nullptr, 3, nullptr),
                            INVALID, fn, {"dst_ids"}));
    EXPECT_TRUE(failed_with(pkv_pool_swap_blocks(pool, PKV_TIER_DEVICE, src.data(), PKV_TIER_HOST, dst.data(), -1, nullptr),
                            INVALID, fn, {"n"}));
    // An id out of range anywhere (the last one here): nothing is copied, not even the valid pairs.
    const std::vector<int32_t> bad_dst = {0, 3, 4}, neg = {0, -1, 2}, big_src = {0, 1, 8};
    EXPECT_TRUE(failed_with(pkv_pool_swap_blocks(pool, PKV_TIER_DEVICE, src.data(), PKV_TIER_HOST, bad_dst.data(), 3, nullptr),
                            INVALID, fn, {"dst_ids[2] = 4", "host tier"}));
    EXPECT_TRUE(failed_with(pkv_pool_swap_blocks(pool, PKV_TIER_DEVICE, neg.data(), PKV_TIER_HOST, dst.data(), 3, nullptr),
                            INVALID, fn, {"src_ids[1] = -1"}));
    EXPECT_TRUE(failed_with(pkv_pool_swap_blocks(pool, PKV_TIER_DEVICE, big_src.data(), PKV_TIER_DEVICE, dst.data(), 3, nullptr),
                            INVALID, fn, {"src_ids[2] = 8", "device tier"}));
    EXPECT_TRUE(untouched());

    // A pool without a host tier.
    make(Backend::CPU, 0);
    EXPECT_TRUE(failed_with(pkv_pool_swap_blocks(pool_->pool, PKV_TIER_DEVICE, src.data(), PKV_TIER_HOST, dst.data(), 3, nullptr),
                            PKV_ERROR_INVALID_STATE, fn, {"dst_tier", "host tier"}));
    EXPECT_TRUE(failed_with(pkv_pool_swap_blocks(pool_->pool, PKV_TIER_HOST, dst.data(), PKV_TIER_DEVICE, src.data(), 3, nullptr),
                            PKV_ERROR_INVALID_STATE, fn, {"src_tier"}));
    EXPECT_TRUE(untouched());
}

TEST_F(BlockMovesErrors, GatherAndScatter) {
    make(Backend::CPU, 0);
    pkv_pool *pool = pool_->pool;
    const pkv_device cpu = backend_device(Backend::CPU), cuda = backend_device(Backend::CUDA);
    std::vector<int32_t> ids = {1, 2, 3};
    std::vector<uint8_t> buf0(size_t(3 * pool_->bpb), 0x5A), buf = buf0;
    pkv_tensor ok = make_tensor(ids.data(), PKV_DTYPE_INT32, cpu, {3}, {1});
    struct Bad {
        const char *what;
        std::function<void(pkv_tensor &, pkv_device &, pkv_block_order &, void *&)> mutate;
        pkv_status status;
        std::vector<const char *> fragments;
    };
    const std::vector<Bad> bad = {
        {"ids f32", [](pkv_tensor &t, pkv_device &, pkv_block_order &, void *&) { t.dtype = PKV_DTYPE_F32; }, INVALID,
         {"block_ids", "dtype"}},
        {"ids 2-D", [](pkv_tensor &t, pkv_device &, pkv_block_order &, void *&) { t.ndim = 2; t.shape[1] = 1; }, INVALID,
         {"block_ids", "1-D"}},
        {"ids NULL data", [](pkv_tensor &t, pkv_device &, pkv_block_order &, void *&) { t.data = nullptr; }, INVALID,
         {"block_ids"}},
        {"ids misaligned", [](pkv_tensor &t, pkv_device &, pkv_block_order &, void *&) { t.data = static_cast<char *>(t.data) + 2; },
         INVALID, {"block_ids", "aligned"}},
        {"ids on CUDA", [&](pkv_tensor &t, pkv_device &, pkv_block_order &, void *&) { t.device = cuda; }, INVALID,
         {"block_ids"}},
        {"buffer on CUDA", [&](pkv_tensor &, pkv_device &d, pkv_block_order &, void *&) { d = cuda; }, INVALID,
         {"buffer_device"}},
        {"buffer device type 9", [](pkv_tensor &, pkv_device &d, pkv_block_order &, void *&) { d.type = pkv_device_type(9); },
         INVALID, {"buffer_device"}},
        {"buffer NULL", [](pkv_tensor &, pkv_device &, pkv_block_order &, void *&b) { b = nullptr; }, INVALID,
         {"buffer"}},
        {"order 2", [](pkv_tensor &, pkv_device &, pkv_block_order &o, void *&) { o = pkv_block_order(2); }, INVALID,
         {"order"}},
    };
    for (const Bad &b : bad)
        for (bool gather : {true, false}) {
            SCOPED_TRACE(std::string(b.what) + (gather ? " (gather)" : " (scatter)"));
            pkv_tensor t = ok;
            pkv_device d = cpu;
            pkv_block_order o = PKV_BLOCK_ORDER_LAYER_MAJOR;
            void *p = buf.data();
            b.mutate(t, d, o, p);
            const pkv_status s = gather ? pkv_pool_gather_blocks(p, d, o, pool, &t, nullptr)
                                        : pkv_pool_scatter_blocks(pool, &t, p, d, o, nullptr);
            EXPECT_TRUE(failed_with(s, b.status, gather ? "pkv_pool_gather_blocks" : "pkv_pool_scatter_blocks",
                                    {b.fragments[0], b.fragments.size() > 1 ? b.fragments[1] : ""}));
            EXPECT_TRUE(untouched());
            EXPECT_EQ(buf, buf0);
        }
    EXPECT_TRUE(failed_with(pkv_pool_gather_blocks(buf.data(), cpu, PKV_BLOCK_ORDER_BLOCK_MAJOR, nullptr, &ok, nullptr),
                            INVALID, "pkv_pool_gather_blocks", {"pool"}));
    EXPECT_TRUE(failed_with(pkv_pool_scatter_blocks(pool, nullptr, buf.data(), cpu, PKV_BLOCK_ORDER_BLOCK_MAJOR, nullptr),
                            INVALID, "pkv_pool_scatter_blocks", {"block_ids"}));
    // n = 0: nothing to do, the buffer may be NULL.
    pkv_tensor empty = make_tensor(nullptr, PKV_DTYPE_INT64, cpu, {0}, {1});
    EXPECT_EQ(pkv_pool_gather_blocks(nullptr, cpu, PKV_BLOCK_ORDER_BLOCK_MAJOR, pool, &empty, nullptr), PKV_SUCCESS);
    EXPECT_EQ(pkv_pool_scatter_blocks(pool, &empty, nullptr, cpu, PKV_BLOCK_ORDER_LAYER_MAJOR, nullptr), PKV_SUCCESS);
    EXPECT_TRUE(untouched());
}

TEST_F(BlockMovesErrors, CudaPoolRejectsUnreachableBuffersAndHostIds) {
    if (!cuda_usable()) GTEST_SKIP() << "no CUDA device";
    make(Backend::CUDA, 2);
    pkv_pool *pool = pool_->pool;
    const pkv_device cpu = backend_device(Backend::CPU), other{PKV_DEVICE_CUDA, 1};
    std::vector<int32_t> host_ids = {0, 1};
    std::vector<uint8_t> buf(size_t(2 * pool_->bpb), 0);
    Buf dids = to_device(Backend::CUDA, host_ids);
    pkv_tensor on_host = make_tensor(host_ids.data(), PKV_DTYPE_INT32, cpu, {2}, {1});
    pkv_tensor on_dev = make_tensor(dids.ptr(), PKV_DTYPE_INT32, backend_device(Backend::CUDA), {2}, {1});
    EXPECT_TRUE(failed_with(pkv_pool_gather_blocks(buf.data(), cpu, PKV_BLOCK_ORDER_BLOCK_MAJOR, pool, &on_dev, nullptr),
                            INVALID, "pkv_pool_gather_blocks", {"buffer_device", "cpu"}));
    EXPECT_TRUE(failed_with(pkv_pool_gather_blocks(dids.ptr(), other, PKV_BLOCK_ORDER_BLOCK_MAJOR, pool, &on_dev, nullptr),
                            INVALID, "pkv_pool_gather_blocks", {"buffer_device", "cuda:1"}));
    EXPECT_TRUE(failed_with(pkv_pool_scatter_blocks(pool, &on_host, buf.data(), cpu, PKV_BLOCK_ORDER_BLOCK_MAJOR, nullptr),
                            INVALID, "pkv_pool_scatter_blocks", {"block_ids"}));
    std::vector<int32_t> pairs = {0, 1};
    pkv_tensor host_pairs = make_tensor(pairs.data(), PKV_DTYPE_INT32, cpu, {1, 2}, {2, 1});
    EXPECT_TRUE(failed_with(pkv_pool_copy_blocks(pool, &host_pairs, nullptr), INVALID, "pkv_pool_copy_blocks", {"pairs"}));
    EXPECT_TRUE(untouched());
}

}  // namespace
}  // namespace pkvt
