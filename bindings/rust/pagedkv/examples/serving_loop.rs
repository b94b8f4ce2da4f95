//! A tiny serving loop on pagedkv's handles: a pool, a block table, block moves
//! (the Rust twin of examples/02_serving_loop/main.c).
//!
//!     cargo run --example serving_loop -- [--cpu]
//!
//! The pool holds 2 layers per block (layer 0: bf16 NHD, layer 1: fp8 e4m3 HND with scale
//! 0.5) of 2 KV heads x 8 dims, 4 tokens per block, plus a host tier for offload. The loop:
//!   1. admit 3 requests and prefill their prompts (append -> slots -> write_kv);
//!   2. decode 3 steps: append 1 token each, upload the batch's device mirror, write the new
//!      keys/values through the mirror's slot mapping (what a captured CUDA graph would read);
//!   3. fork request 1 (a shared prefix, e.g. parallel sampling) and decode both: the first
//!      write into the shared partial block copies it first (copy-on-write);
//!   4. speculative decoding on request 3: append 3 draft tokens, accept 1, truncate the rest;
//!   5. offload request 2's blocks to the host tier, clobber them on the device, onboard them;
//!   6. check every token of every request, on both layers, through gather_kv driven by the
//!      mirror's block table (exact: the values are representable in bf16 and in e4m3).
//!
//! Runs on the GPU when one is present (unless --cpu), else on the CPU, with the same code.
//! Exits with status 1 on a mismatch or a leaked block.

use std::process::ExitCode;

use pagedkv::{
    BlockTable, BlockTableParams, CacheFormat, CacheView, DType, Device, DeviceBuffer, HeadLayout, LayerSpec, Pool,
    Result, Stream, TensorRef, Tier,
};

const BLOCK_SIZE: i64 = 4;
const NUM_BLOCKS: i64 = 32;
const HOST_BLOCKS: i64 = 8;
const HEADS: i64 = 2;
const DIM: i64 = 8;
const ROW: usize = (HEADS * DIM) as usize;
const LAYERS: usize = 2;
const MAX_TOK: usize = 64;
const MAX_BATCH: i64 = 8;
const MAX_BLOCKS: usize = 16;

/// K/V element `j` of a token: a multiple of 1/8 in [-2, 2] (exact in bf16, and in e4m3 after
/// the division by the 0.5 scale).
fn token_value(tag: u32, layer: usize, kv: usize, j: usize) -> f32 {
    let mut h = tag.wrapping_mul(2654435761) ^ ((layer * 977 + kv * 131 + j) as u32).wrapping_mul(40503);
    h ^= h >> 15;
    ((h % 33) as i32 - 16) as f32 / 8.0
}

/// The engine's own view of a request: the tag of each token (its K/V values derive from it).
#[derive(Clone)]
struct Request {
    id: u64,
    tags: Vec<u32>,
}

/// Writes tokens into every layer: the pool's layer views and device staging for K and V.
struct Writer<'p> {
    views: Vec<CacheView<'p>>,
    d_k: DeviceBuffer,
    d_v: DeviceBuffer,
}

impl Writer<'_> {
    /// Writes tokens with the given tags to the slots of `slot_mapping`, both layers.
    fn write_tokens(&mut self, tags: &[u32], slot_mapping: &TensorRef<'_>) -> Result<()> {
        let n = tags.len();
        let shape = [n as i64, HEADS, DIM];
        for (layer, view) in self.views.iter().enumerate() {
            let mut host_k = vec![0.0f32; n * ROW];
            let mut host_v = vec![0.0f32; n * ROW];
            for (i, &tag) in tags.iter().enumerate() {
                for j in 0..ROW {
                    host_k[i * ROW + j] = token_value(tag, layer, 0, j);
                    host_v[i * ROW + j] = token_value(tag, layer, 1, j);
                }
            }
            self.d_k.copy_from_slice(&host_k)?; // returns when the copy is done
            self.d_v.copy_from_slice(&host_v)?;
            let k = self.d_k.tensor(DType::F32, &shape)?;
            let v = self.d_v.tensor(DType::F32, &shape)?;
            view.write_kv(&k, Some(&v), slot_mapping, Stream::DEFAULT)?;
        }
        Ok(())
    }
}

/// The engine: the writer, the block table, the requests and their tags.
struct Engine<'p> {
    writer: Writer<'p>,
    table: BlockTable<'p>,
    requests: Vec<Request>,
    next_tag: u32,
    d_slots: DeviceBuffer,
}

impl Engine<'_> {
    fn admit(&mut self, id: u64) -> Result<()> {
        self.table.add(id)?;
        self.requests.push(Request { id, tags: Vec::new() });
        Ok(())
    }

    fn request(&mut self, id: u64) -> &mut Request {
        self.requests.iter_mut().find(|r| r.id == id).expect("a live request")
    }

    fn new_tags(&mut self, n: usize) -> Vec<u32> {
        let tags = (0..n as u32).map(|i| self.next_tag + i).collect();
        self.next_tag += n as u32;
        tags
    }

    /// Appends n new tokens to a request and writes them through the slots the table returns.
    fn append_and_write(&mut self, id: u64, n: usize) -> Result<()> {
        let slots = self.table.append(id, n, Stream::DEFAULT)?;
        let tags = self.new_tags(n);
        self.d_slots.copy_from_slice(&slots)?;
        self.writer.write_tokens(&tags, &self.d_slots.tensor(DType::I64, &[n as i64])?)?;
        self.request(id).tags.extend(tags);
        Ok(())
    }

    /// One decode step for every live request: append 1 token each, upload the batch's mirror,
    /// write the new tokens through the mirror's slot mapping (memory at a fixed address).
    fn decode_step(&mut self) -> Result<usize> {
        let ids: Vec<u64> = self.requests.iter().map(|r| r.id).collect();
        let tags = self.new_tags(ids.len());
        for (i, &id) in ids.iter().enumerate() {
            self.table.append(id, 1, Stream::DEFAULT)?;
            self.requests[i].tags.push(tags[i]);
        }
        self.table.upload(&ids, &vec![1; ids.len()], Stream::DEFAULT)?;
        let mirror = self.table.mirror()?;
        self.writer.write_tokens(&tags, &mirror.step_slot_mapping())?; // the step's tokens only
        Ok(ids.len())
    }

    fn count_shared(&self, a: u64, b: u64) -> Result<usize> {
        let (x, y) = (self.table.blocks(a)?, self.table.blocks(b)?);
        Ok(x.iter().zip(&y).filter(|(p, q)| p == q).count())
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("serving_loop: {e}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<bool> {
    let use_cpu = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--cpu") => true,
        Some(_) => {
            eprintln!("usage: serving_loop [--cpu]");
            std::process::exit(2);
        }
    };
    pagedkv::check_version()?;
    let dev = if !use_cpu && pagedkv::cuda_device_count()? > 0 { Device::cuda(0) } else { Device::CPU };

    // The pool: 2 layers of different formats and layouts, one allocation, a host tier.
    let pool = Pool::builder()
        .device(dev)
        .block_size(BLOCK_SIZE)
        .num_blocks(NUM_BLOCKS)
        .host_blocks(HOST_BLOCKS)
        .layer(LayerSpec::new(CacheFormat::BF16, HEADS, DIM).layout(HeadLayout::Nhd))
        .layer(LayerSpec::new(CacheFormat::FP8E4M3, HEADS, DIM).layout(HeadLayout::Hnd))
        .build()?;
    pool.set_scales(1, &[0.5], Some(&[0.5]), Stream::DEFAULT)?;
    let views = (0..LAYERS).map(|l| pool.layer_view(l, Tier::Device)).collect::<Result<Vec<_>>>()?;
    let params = BlockTableParams { max_batch: MAX_BATCH, max_blocks: MAX_BLOCKS as i64, max_tokens: MAX_TOK as i64 };
    let mut e = Engine {
        writer: Writer {
            views,
            d_k: DeviceBuffer::zeroed(dev, MAX_TOK * ROW * 4)?,
            d_v: DeviceBuffer::zeroed(dev, MAX_TOK * ROW * 4)?,
        },
        table: pool.block_table(params)?,
        requests: Vec::new(),
        next_tag: 1,
        d_slots: DeviceBuffer::zeroed(dev, MAX_TOK * 8)?,
    };

    // 1. Admit and prefill.
    for (id, prompt) in [(1, 7), (2, 5), (3, 10)] {
        e.admit(id)?;
        e.append_and_write(id, prompt)?;
    }

    // 2. Decode.
    let mut steps = 0;
    let mut decode_batch = 0;
    for _ in 0..3 {
        decode_batch = e.decode_step()?;
        steps += 1;
    }

    // 3. Fork request 1 (10 tokens: the third block is partial and now shared), decode both.
    e.table.fork(1, 4)?;
    let child = Request { id: 4, tags: e.request(1).tags.clone() };
    e.requests.push(child);
    let shared_after_fork = e.count_shared(1, 4)?;
    for _ in 0..2 {
        decode_batch = e.decode_step()?;
        steps += 1;
    }
    let shared_after_cow = e.count_shared(1, 4)?;

    // 4. Speculative decoding on request 3: 3 draft tokens written, 1 accepted.
    e.append_and_write(3, 3)?;
    let accepted = e.request(3).tags.len() - 2;
    e.table.truncate(3, accepted as i64)?;
    e.request(3).tags.truncate(accepted);

    // 5. Offload request 2 to the host tier, clobber its device blocks, onboard them back.
    let dev_ids = e.table.blocks(2)?;
    let host_ids = pool.alloc_blocks(Tier::Host, dev_ids.len())?;
    pool.swap_blocks(Tier::Device, &dev_ids, Tier::Host, &host_ids, Stream::DEFAULT)?;
    let poison_slots: Vec<i64> = (0..dev_ids.len() * BLOCK_SIZE as usize)
        .map(|s| i64::from(dev_ids[s / BLOCK_SIZE as usize]) * BLOCK_SIZE + (s % BLOCK_SIZE as usize) as i64)
        .collect();
    let poison_tags: Vec<u32> = (0..poison_slots.len() as u32).map(|s| 0xBAD0000 + s).collect();
    let d_poison = DeviceBuffer::from_slice(dev, &poison_slots)?;
    e.writer.write_tokens(&poison_tags, &d_poison.tensor(DType::I64, &[poison_slots.len() as i64])?)?;
    pool.swap_blocks(Tier::Host, &host_ids, Tier::Device, &dev_ids, Stream::DEFAULT)?;
    pool.release_blocks(Tier::Host, &host_ids)?;
    Stream::DEFAULT.synchronize()?;

    // 6. Check every token through the mirror: all tokens of each request are "new" tokens,
    // so query_start_loc is the gather's cu_seq_lens.
    let ids: Vec<u64> = e.requests.iter().map(|r| r.id).collect();
    let lens: Vec<i64> = e.requests.iter().map(|r| r.tags.len() as i64).collect();
    let total = lens.iter().sum::<i64>() as usize;
    e.table.upload(&ids, &lens, Stream::DEFAULT)?;
    let mut bad = 0usize;
    {
        let mirror = e.table.mirror()?;
        let mut d_out_k = DeviceBuffer::zeroed(dev, total * ROW * 4)?;
        let mut d_out_v = DeviceBuffer::zeroed(dev, total * ROW * 4)?;
        for (layer, view) in e.writer.views.iter().enumerate() {
            let shape = [total as i64, HEADS, DIM];
            view.gather_kv(
                &mut d_out_k.tensor_mut(DType::F32, &shape)?,
                Some(&mut d_out_v.tensor_mut(DType::F32, &shape)?),
                &mirror.step_block_table(),
                &mirror.step_query_start_loc(),
                None,
                Stream::DEFAULT,
            )?;
            let (out_k, out_v) = (d_out_k.to_vec::<f32>()?, d_out_v.to_vec::<f32>()?);
            let mut row = 0;
            for r in &e.requests {
                for &tag in &r.tags {
                    for j in 0..ROW {
                        bad += usize::from(out_k[row * ROW + j] != token_value(tag, layer, 0, j));
                        bad += usize::from(out_v[row * ROW + j] != token_value(tag, layer, 1, j));
                    }
                    row += 1;
                }
            }
        }
    }

    println!(
        "pagedkv {} on {dev}: pool of {NUM_BLOCKS} blocks x {BLOCK_SIZE} tokens (+{HOST_BLOCKS} host blocks), \
         layers bf16/NHD + fp8_e4m3/HND",
        pagedkv::version_string()
    );
    println!("prefill 3 requests (7, 5, 10 tokens), {steps} decode steps (last batch {decode_batch})");
    println!(
        "fork 1 -> 4: {shared_after_fork} blocks shared, {shared_after_cow} after copy-on-write of the partial block"
    );
    println!("request 3: 3 draft tokens, 1 accepted (truncated to {accepted} tokens)");
    println!("request 2: {} blocks offloaded to the host tier and onboarded back", dev_ids.len());
    println!(
        "checked {total} tokens of {} requests on {LAYERS} layers through the mirror: {}",
        ids.len(),
        if bad > 0 { "MISMATCH" } else { "ok" }
    );

    for id in ids {
        e.table.remove(id)?;
    }
    let free = pool.stats()?.free_blocks;
    if free != NUM_BLOCKS {
        eprintln!("blocks leaked: {free} of {NUM_BLOCKS} free");
        bad += 1;
    }
    Ok(bad == 0)
}
