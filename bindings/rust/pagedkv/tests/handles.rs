//! Pool, block table and slots lifecycles on a CPU pool: allocation and reference counts,
//! append / fork / truncate / remove, copy-on-write, the mirror, block moves (copy, swap,
//! gather / scatter), request slots; plus the raw-cache copy, conversions and slot-mapping
//! builders. Expected values are computed in Rust.

mod common;

use common::*;
use pagedkv::{
    BlockOrder, BlockTableParams, CacheFormat, CacheView, DType, LayerSpec, Pool, ScaleMode, Status, Stream, TensorMut,
    TensorRef, Tier,
};

const BS: i64 = 4;
const H: i64 = 2;
const D: i64 = 8;
const ROW: usize = (H * D) as usize;

fn pool(num_blocks: i64, host_blocks: i64) -> Pool {
    Pool::builder()
        .block_size(BS)
        .num_blocks(num_blocks)
        .host_blocks(host_blocks)
        .layer(LayerSpec::new(CacheFormat::F32, H, D))
        .layer(LayerSpec::new(CacheFormat::FP8E4M3, H, D).scale_mode(ScaleMode::PerHead))
        .build()
        .unwrap()
}

/// Values of token `tag` (distinct per tag, exact in every format used: multiples of 1/4 in
/// [-2, 2]).
fn token(tag: u32) -> Vec<f32> {
    (0..ROW as u32).map(|j| ((tag * 7 + j * 3) % 17) as f32 / 4.0 - 2.0).collect()
}

/// Writes tokens to slots of every layer of the pool (values from their tags).
fn write(pool: &Pool, tags: &[u32], slots: &[i64]) {
    let key: Vec<f32> = tags.iter().flat_map(|&t| token(t)).collect();
    let value: Vec<f32> = key.iter().map(|x| -x).collect();
    let shape = [tags.len() as i64, H, D];
    for layer in 0..pool.layers().len() {
        pool.layer_view(layer, Tier::Device)
            .unwrap()
            .write_kv(
                &TensorRef::from_slice(&key, &shape).unwrap(),
                Some(&TensorRef::from_slice(&value, &shape).unwrap()),
                &TensorRef::from_slice(slots, &[slots.len() as i64]).unwrap(),
                Stream::DEFAULT,
            )
            .unwrap();
    }
}

/// Reads the keys of the first `n` positions of a request with block ids `blocks` from a view.
fn read(view: &CacheView<'_>, blocks: &[i32], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * ROW];
    let cu = [0i32, n as i32];
    view.gather_kv(
        &mut TensorMut::from_slice(&mut out, &[n as i64, H, D]).unwrap(),
        None,
        &TensorRef::from_slice(blocks, &[1, blocks.len() as i64]).unwrap(),
        &TensorRef::from_slice(&cu, &[2]).unwrap(),
        None,
        Stream::DEFAULT,
    )
    .unwrap();
    out
}

fn expected(tags: &[u32]) -> Vec<f32> {
    tags.iter().flat_map(|&t| token(t)).collect()
}

#[test]
fn pool_stats_and_block_reference_counts() {
    let pool = pool(16, 4);
    let stats = pool.stats().unwrap();
    assert_eq!((stats.block_size, stats.num_layers, stats.total_blocks, stats.free_blocks), (BS, 2, 16, 16));
    assert_eq!((stats.total_host_blocks, stats.free_host_blocks), (4, 4));
    // F32 K+V + FP8 K+V per token (padding of the block may come on top).
    assert_eq!(pool.bytes_per_token(0).unwrap(), 2 * H * D * 4);
    assert_eq!(pool.bytes_per_token(1).unwrap(), 2 * H * D);
    assert!(pool.bytes_per_block() >= BS * (2 * H * D * 4 + 2 * H * D));

    let ids = pool.alloc_blocks(Tier::Device, 3).unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(pool.block_refcount(Tier::Device, ids[0]).unwrap(), 1);
    pool.retain_blocks(Tier::Device, &ids[..1]).unwrap();
    assert_eq!(pool.block_refcount(Tier::Device, ids[0]).unwrap(), 2);
    pool.release_blocks(Tier::Device, &ids).unwrap();
    assert_eq!(pool.block_refcount(Tier::Device, ids[0]).unwrap(), 1);
    assert_eq!(pool.stats().unwrap().free_blocks, 15);
    pool.release_blocks(Tier::Device, &ids[..1]).unwrap();
    assert_eq!(pool.stats().unwrap().free_blocks, 16);

    // Exhaustion is recoverable and changes nothing.
    let all = pool.alloc_blocks(Tier::Device, 16).unwrap();
    let err = pool.alloc_blocks(Tier::Device, 1).unwrap_err();
    assert_eq!(err.status(), Status::OutOfBlocks);
    assert!(!err.message().is_empty());
    assert_eq!(pool.stats().unwrap().free_blocks, 0);
    pool.release_blocks(Tier::Device, &all).unwrap();
    let host = pool.alloc_blocks(Tier::Host, 4).unwrap();
    assert_eq!(pool.alloc_blocks(Tier::Host, 1).unwrap_err().status(), Status::OutOfBlocks);
    pool.release_blocks(Tier::Host, &host).unwrap();
}

#[test]
fn block_table_append_fork_truncate_remove() {
    let pool = pool(16, 0);
    {
        let mut table = pool.block_table(BlockTableParams::default()).unwrap();
        table.add(1).unwrap();
        let slots = table.append(1, 6, Stream::DEFAULT).unwrap();
        let blocks = table.blocks(1).unwrap();
        assert_eq!(blocks.len(), 2);
        let want: Vec<i64> = (0..6).map(|p| i64::from(blocks[p / 4]) * BS + (p % 4) as i64).collect();
        assert_eq!(slots, want);
        write(&pool, &[10, 11, 12, 13, 14, 15], &slots);

        // Fork: the child shares both blocks.
        table.fork(1, 2).unwrap();
        assert_eq!(table.blocks(2).unwrap(), blocks);
        assert_eq!(pool.block_refcount(Tier::Device, blocks[1]).unwrap(), 2);
        assert_eq!(pool.stats().unwrap().free_blocks, 14);

        // Appending to the child copies its shared partial block first (copy-on-write).
        let child_slots = table.append(2, 1, Stream::DEFAULT).unwrap();
        let child_blocks = table.blocks(2).unwrap();
        assert_eq!(child_blocks[0], blocks[0]);
        assert_ne!(child_blocks[1], blocks[1]);
        assert_eq!(child_slots, [i64::from(child_blocks[1]) * BS + 2]);
        assert_eq!(pool.block_refcount(Tier::Device, blocks[1]).unwrap(), 1);
        write(&pool, &[99], &child_slots);
        for layer in 0..2 {
            let view = pool.layer_view(layer, Tier::Device).unwrap();
            assert_eq!(read(&view, &child_blocks, 7), expected(&[10, 11, 12, 13, 14, 15, 99]), "layer {layer}");
            assert_eq!(read(&view, &blocks, 6), expected(&[10, 11, 12, 13, 14, 15]), "parent unchanged");
        }

        // Truncate (speculative rollback) releases whole blocks past the kept tokens.
        table.truncate(2, 4).unwrap();
        assert_eq!(table.num_tokens(2).unwrap(), 4);
        assert_eq!(table.blocks(2).unwrap(), &blocks[..1]);
        assert_eq!(pool.block_refcount(Tier::Device, child_blocks[1]).unwrap(), 0);
        assert!(table.truncate(2, 5).is_err(), "cannot grow by truncating");

        table.remove(2).unwrap();
        assert_eq!(table.num_tokens(2).unwrap_err().status(), Status::InvalidArgument);
        assert_eq!(pool.stats().unwrap().free_blocks, 14);
        // Request 1 is still there: dropping the table releases its blocks.
    }
    assert_eq!(pool.stats().unwrap().free_blocks, 16);
}

#[test]
fn append_past_the_pool_changes_nothing() {
    let pool = pool(2, 0);
    let mut table = pool.block_table(BlockTableParams::default()).unwrap();
    table.add(5).unwrap();
    table.append(5, 7, Stream::DEFAULT).unwrap();
    let err = table.append(5, 2, Stream::DEFAULT).unwrap_err();
    assert_eq!(err.status(), Status::OutOfBlocks);
    assert_eq!(table.num_tokens(5).unwrap(), 7);
    assert_eq!(table.append(5, 1, Stream::DEFAULT).unwrap().len(), 1, "the last slot is still free");
}

#[test]
fn mirror_holds_the_uploaded_batch() {
    let pool = pool(16, 0);
    let params = BlockTableParams { max_batch: 4, max_blocks: 4, max_tokens: 16 };
    let mut table = pool.block_table(params).unwrap();
    let mut all_slots = Vec::new();
    for (id, n) in [(7u64, 5usize), (9, 2)] {
        table.add(id).unwrap();
        all_slots.push(table.append(id, n, Stream::DEFAULT).unwrap());
    }
    // Request 7: its last 2 tokens are new; request 9: both.
    table.upload(&[7, 9], &[2, 2], Stream::DEFAULT).unwrap();
    assert!(table.upload(&[7], &[1, 1], Stream::DEFAULT).is_err(), "lengths must match");
    let m = table.mirror().unwrap();
    assert_eq!((m.batch(), m.num_tokens()), (2, 4));
    assert_eq!(m.block_table().shape(), &[4, 4]);
    let want_slots: Vec<i64> = all_slots[0][3..].iter().chain(&all_slots[1]).copied().collect();
    assert_eq!(m.step_slot_mapping().to_vec::<i64>().unwrap(), want_slots);
    assert_eq!(m.step_seq_lens().to_vec::<i32>().unwrap(), [5, 2]);
    assert_eq!(m.step_query_start_loc().to_vec::<i32>().unwrap(), [0, 2, 4]);
    let rows = m.step_block_table().to_vec::<i32>().unwrap();
    let b7 = table.blocks(7).unwrap();
    let b9 = table.blocks(9).unwrap();
    assert_eq!(rows, [b7[0], b7[1], 0, 0, b9[0], 0, 0, 0]);
    assert!(m.slot_mapping().to_vec::<i64>().unwrap()[4..].iter().all(|&s| s == -1), "unused slots are padding");

    // The device-side builder gives the same slot mapping from the mirror's tensors.
    let mut built = [0i64; 6];
    pagedkv::build_slot_mapping(
        &mut TensorMut::from_slice(&mut built, &[6]).unwrap(),
        &m.step_block_table(),
        &m.step_seq_lens(),
        &m.step_query_start_loc(),
        BS,
        Stream::DEFAULT,
    )
    .unwrap();
    assert_eq!(built[..4], want_slots[..]);
    assert_eq!(built[4..], [-1, -1], "tokens past the batch are padding");
}

#[test]
fn copy_blocks_on_a_cpu_pool() {
    let pool = pool(8, 0);
    write(&pool, &[1, 2, 3, 4], &[4, 5, 6, 7]); // block 1
    write(&pool, &[5, 6, 7, 8], &[8, 9, 10, 11]); // block 2
    let pairs = [1i64, 5, 2, 6, 3, 3, 1, 99]; // (3, 3) and id 99 are skipped
    pool.copy_blocks(&TensorRef::from_slice(&pairs, &[4, 2]).unwrap(), Stream::DEFAULT).unwrap();
    for layer in 0..2 {
        let view = pool.layer_view(layer, Tier::Device).unwrap();
        assert_eq!(read(&view, &[5, 6], 8), expected(&[1, 2, 3, 4, 5, 6, 7, 8]), "layer {layer}");
    }
    let bad = [0.0f32, 1.0];
    let err = pool.copy_blocks(&TensorRef::from_slice(&bad, &[1, 2]).unwrap(), Stream::DEFAULT).unwrap_err();
    assert!(err.message().contains("pairs dtype"), "{err}");
}

#[test]
fn swap_to_the_host_tier_and_back() {
    let pool = pool(8, 4);
    write(&pool, &[1, 2, 3, 4, 5], &[8, 9, 10, 11, 12]); // blocks 2, 3
    let host = pool.alloc_blocks(Tier::Host, 2).unwrap();
    pool.swap_blocks(Tier::Device, &[2, 3], Tier::Host, &host, Stream::DEFAULT).unwrap();
    let host_view = pool.layer_view(1, Tier::Host).unwrap();
    assert_eq!(read(&host_view, &host, 5), expected(&[1, 2, 3, 4, 5]));
    write(&pool, &[9, 9, 9, 9, 9], &[8, 9, 10, 11, 12]); // clobber
    pool.swap_blocks(Tier::Host, &host, Tier::Device, &[6, 7], Stream::DEFAULT).unwrap();
    let view = pool.layer_view(0, Tier::Device).unwrap();
    assert_eq!(read(&view, &[6, 7], 5), expected(&[1, 2, 3, 4, 5]));
    let err = pool.swap_blocks(Tier::Host, &host, Tier::Device, &[6], Stream::DEFAULT).unwrap_err();
    assert!(err.message().contains("2 source ids and 1 destination"), "{err}");
    let err = pool.swap_blocks(Tier::Host, &[4], Tier::Device, &[0], Stream::DEFAULT).unwrap_err();
    assert!(err.message().contains("src_ids[0] = 4"), "{err}");
}

#[test]
fn gather_and_scatter_blocks_through_a_buffer() {
    let pool = pool(8, 0);
    write(&pool, &[1, 2, 3, 4, 5, 6, 7, 8], &[4, 5, 6, 7, 8, 9, 10, 11]);
    let bpb = pool.bytes_per_block() as usize;
    for order in [BlockOrder::BlockMajor, BlockOrder::LayerMajor] {
        let ids = [1i32, 2];
        let mut buffer = vec![0u8; 2 * bpb];
        pool.gather_blocks(&mut buffer, order, &TensorRef::from_slice(&ids, &[2]).unwrap(), Stream::DEFAULT).unwrap();
        let targets = [6i64, 7];
        pool.scatter_blocks(&TensorRef::from_slice(&targets, &[2]).unwrap(), &buffer, order, Stream::DEFAULT).unwrap();
        for layer in 0..2 {
            let view = pool.layer_view(layer, Tier::Device).unwrap();
            assert_eq!(read(&view, &[6, 7], 8), expected(&[1, 2, 3, 4, 5, 6, 7, 8]), "{order:?} layer {layer}");
        }
        let mut small = vec![0u8; 2 * bpb - 1];
        let err = pool
            .gather_blocks(&mut small, order, &TensorRef::from_slice(&ids, &[2]).unwrap(), Stream::DEFAULT)
            .unwrap_err();
        assert_eq!(err.status(), Status::InvalidArgument);
    }
}

#[test]
fn fp8_pool_scales() {
    let pool = pool(4, 0);
    assert!(pool.set_scales(1, &[0.5], Some(&[0.5, 0.5]), Stream::DEFAULT).is_err(), "per head: 2 values");
    pool.set_scales(1, &[0.5, 0.25], Some(&[2.0, 1.0]), Stream::DEFAULT).unwrap();
    let err = pool.set_scales(1, &[0.0, 1.0], Some(&[1.0, 1.0]), Stream::DEFAULT).unwrap_err();
    assert!(err.message().contains("must be finite and > 0"), "{err}");
    let err = pool.set_scales(0, &[1.0], Some(&[1.0]), Stream::DEFAULT).unwrap_err();
    assert!(err.message().contains("no scales"), "{err}");
    // Values 3.75 / 0.25 = 15 and -3.75 / 2 = -1.875 are exact in e4m3: K head 1 round trips.
    let key: Vec<f32> = (0..ROW).map(|j| if j < D as usize { 0.5 } else { 3.75 }).collect();
    let slots = [0i64];
    let view = pool.layer_view(1, Tier::Device).unwrap();
    view.write_kv(
        &TensorRef::from_slice(&key, &[1, H, D]).unwrap(),
        Some(&TensorRef::from_slice(&key, &[1, H, D]).unwrap()),
        &TensorRef::from_slice(&slots, &[1]).unwrap(),
        Stream::DEFAULT,
    )
    .unwrap();
    let got = read(&view, &[0], 1);
    let want: Vec<f32> =
        key.iter().enumerate().map(|(j, &x)| fp8_round_trip(x, if j < 8 { 0.5 } else { 0.25 })).collect();
    assert_eq!(got, want);
}

#[test]
fn slots_lifecycle() {
    let pool = pool(4, 0);
    let mut region_a = vec![0u32; 3 * 4];
    let mut region_b = vec![0u32; 3 * 8];
    {
        let mut slots = pool.slots(3).unwrap();
        assert_eq!(slots.max_requests(), 3);
        slots.register_region(&mut region_a, 16, 16, 0xAAAA_AAAA).unwrap();
        // Slot stride 32 bytes, 8 bytes each: the gaps are left alone.
        slots.register_region(&mut region_b, 8, 32, 7).unwrap();
        assert_eq!(slots.acquire(Stream::DEFAULT).unwrap(), 0);
        assert_eq!(slots.acquire(Stream::DEFAULT).unwrap(), 1);
        slots.release(0).unwrap();
        assert_eq!(slots.release(0).unwrap_err().status(), Status::InvalidArgument);
        assert_eq!(slots.acquire(Stream::DEFAULT).unwrap(), 0, "the lowest free id");
        assert_eq!(slots.acquire(Stream::DEFAULT).unwrap(), 2);
        assert_eq!(slots.acquire(Stream::DEFAULT).unwrap_err().status(), Status::OutOfBlocks);
    }
    assert!(region_a.iter().all(|&w| w == 0xAAAA_AAAA));
    for s in 0..3 {
        assert_eq!(region_b[s * 8..][..2], [7, 7]);
        assert!(region_b[s * 8 + 2..][..6].iter().all(|&w| w == 0), "slot {s}: outside bytes_per_slot");
    }
    let mut small = vec![0u32; 3 * 4 - 1];
    let mut slots = pool.slots(3).unwrap();
    let err = slots.register_region(&mut small, 16, 16, 0).unwrap_err();
    assert!(err.message().contains("needs 48"), "{err}");
    assert_eq!(pool.slots(0).unwrap_err().status(), Status::InvalidArgument);
}

#[test]
fn raw_cache_copy_blocks() {
    // Two caches of different dtypes and block sizes, as an engine that owns its memory has.
    let mut k: Vec<f32> = (0..4 * 6).map(|i| i as f32).collect(); // [4 blocks, 6]
    let mut v: Vec<u16> = (0..4 * 3).map(|i| i as u16).collect(); // [4 blocks, 3] bf16
    let pairs = [0i32, 2, 1, 3];
    pagedkv::copy_blocks(
        &mut [
            TensorMut::from_slice(&mut k, &[4, 6]).unwrap(),
            TensorMut::with_dtype(&mut v, DType::BF16, &[4, 3]).unwrap(),
        ],
        &TensorRef::from_slice(&pairs, &[2, 2]).unwrap(),
        Stream::DEFAULT,
    )
    .unwrap();
    assert_eq!(k[12..18], k[0..6]);
    assert_eq!(k[18..24], k[6..12]);
    assert_eq!(v[6..], [0, 1, 2, 3, 4, 5]);
}

#[test]
fn convert_matches_the_cache_rounding() {
    let mut rng = Rng::new(3);
    let src = rng.vec(64, -500.0, 500.0);
    let scale = 0.75f32;
    let mut fp8 = vec![0u8; 64];
    pagedkv::convert_scaled(
        &mut TensorMut::with_dtype(&mut fp8, DType::FP8E4M3, &[8, 8]).unwrap(),
        &TensorRef::from_slice(&src, &[8, 8]).unwrap(),
        &scale,
        Stream::DEFAULT,
    )
    .unwrap();
    let want: Vec<u8> = src.iter().map(|&x| e4m3_rne_sat(x / scale)).collect();
    assert_eq!(fp8, want);
    let mut back = vec![0u16; 64];
    pagedkv::convert_scaled(
        &mut TensorMut::with_dtype(&mut back, DType::BF16, &[8, 8]).unwrap(),
        &TensorRef::with_dtype(&fp8, DType::FP8E4M3, &[8, 8]).unwrap(),
        &scale,
        Stream::DEFAULT,
    )
    .unwrap();
    let want: Vec<u16> = fp8.iter().map(|&q| bf16_rne(e4m3_to_f32(q) * scale)).collect();
    assert_eq!(back, want);
    let mut wrong = vec![0f32; 63];
    let err = pagedkv::convert(
        &mut TensorMut::from_slice(&mut wrong, &[63]).unwrap(),
        &TensorRef::from_slice(&src, &[64]).unwrap(),
        Stream::DEFAULT,
    )
    .unwrap_err();
    assert_eq!(err.status(), Status::InvalidArgument);
}

#[test]
fn slot_mapping_from_a_csr_page_table() {
    // Request 0: pages [3, 1], last page 2 tokens (6 tokens), 2 new; request 1: page [0], 3
    // tokens, 3 new.
    let (indptr, indices, last, append) = ([0i32, 2, 3], [3i32, 1, 0], [2i32, 3], [0i32, 2, 5]);
    let mut out = [0i32; 6];
    pagedkv::build_slot_mapping_csr(
        &mut TensorMut::from_slice(&mut out, &[6]).unwrap(),
        &TensorRef::from_slice(&indptr, &[3]).unwrap(),
        &TensorRef::from_slice(&indices, &[3]).unwrap(),
        &TensorRef::from_slice(&last, &[2]).unwrap(),
        &TensorRef::from_slice(&append, &[3]).unwrap(),
        BS,
        Stream::DEFAULT,
    )
    .unwrap();
    assert_eq!(out, [4, 5, 0, 1, 2, -1]); // page 1 offsets 0, 1; page 0 offsets 0..3; padding
}
