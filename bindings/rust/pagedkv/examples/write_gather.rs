//! Write keys/values into a paged KV cache, gather them back, check the round trip
//! (the Rust twin of examples/01_write_gather/main.c).
//!
//!     cargo run --example write_gather -- [--cpu] [--fp8]
//!
//! Two requests share a cache of 4 blocks x 4 slots (NHD layout, 2 KV heads x 8 dims):
//!   request A: 3 tokens in block 2            -> slots 8, 9, 10
//!   request B: 6 tokens in blocks 0 then 3    -> slots 0..3, 12, 13
//! The batch of new tokens also carries one padding row (slot -1), which is skipped.
//! The cache is bf16 (exact round trip) or, with --fp8, FP8 E4M3 with a per-tensor scale.
//! Runs on the GPU when one is present (unless --cpu), else on the CPU: the code is the same,
//! only the device of the buffers changes. Exits with status 1 on a mismatch.

use std::process::ExitCode;

use pagedkv::{CacheFormat, CacheView, DType, Device, DeviceBuffer, Result, ScaleMode, Stream};

const NUM_BLOCKS: i64 = 4;
const BLOCK_SIZE: i64 = 4;
const HEADS: i64 = 2;
const DIM: i64 = 8;
const ROW: usize = (HEADS * DIM) as usize;
const T: usize = 10; // new tokens, one of them padding
const BATCH: usize = 2;
const MAX_BLOCKS: usize = 2;
const N: usize = 9; // gathered rows

/// bf16 is the top half of a float32 (truncation is exact for the values below).
fn to_bf16(x: f32) -> u16 {
    (x.to_bits() >> 16) as u16
}

fn from_bf16(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("write_gather: {e}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<bool> {
    let mut use_cpu = false;
    let mut fp8 = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--cpu" => use_cpu = true,
            "--fp8" => fp8 = true,
            _ => {
                eprintln!("usage: write_gather [--cpu] [--fp8]");
                std::process::exit(2);
            }
        }
    }
    // 0.x: the ABI is MAJOR.MINOR; the loaded library must match the bindings' header.
    pagedkv::check_version()?;
    let dev = if !use_cpu && pagedkv::cuda_device_count()? > 0 { Device::cuda(0) } else { Device::CPU };

    let slots: [i64; T] = [8, 9, 10, -1, 0, 1, 2, 3, 12, 13]; // token 3 is padding
    let token_of_row: [usize; N] = [0, 1, 2, 4, 5, 6, 7, 8, 9]; // gathered row -> token
    let block_table: [[i32; MAX_BLOCKS]; BATCH] = [[2, 0], [0, 3]];
    let cu_seq_lens: [i32; BATCH + 1] = [0, 3, 9];
    let scale = 0.01f32; // fp8: |x| <= 2 -> |x / scale| <= 200 < 448

    // Random bf16 keys and values in [-2, 2).
    let mut rng = 12345u32;
    let mut next = || {
        rng = rng.wrapping_mul(1664525).wrapping_add(1013904223);
        to_bf16((rng >> 8) as f32 / 16777216.0 * 4.0 - 2.0)
    };
    let mut key = vec![0u16; T * ROW];
    let mut value = vec![0u16; T * ROW];
    for i in 0..T * ROW {
        key[i] = next();
        value[i] = next();
    }

    // The cache: NHD [NUM_BLOCKS, BLOCK_SIZE, HEADS, DIM] on `dev` (the builder's default
    // layout computes the strides and checks that they fit in the buffers).
    let elem = if fp8 { 1 } else { 2 };
    let cache_bytes = (NUM_BLOCKS * BLOCK_SIZE * HEADS * DIM) as usize * elem;
    let mut k_cache = DeviceBuffer::zeroed(dev, cache_bytes)?;
    let mut v_cache = DeviceBuffer::zeroed(dev, cache_bytes)?;
    let d_scale = DeviceBuffer::from_slice(dev, &[scale])?;
    let format = if fp8 { CacheFormat::FP8E4M3 } else { CacheFormat::BF16 };
    let mut builder =
        CacheView::builder(format, NUM_BLOCKS, BLOCK_SIZE, HEADS, DIM).key(&mut k_cache).value(&mut v_cache);
    if fp8 {
        builder = builder.scale_mode(ScaleMode::PerTensor).key_scale(&d_scale).value_scale(&d_scale);
    }
    let cache = builder.build()?;

    // Write the T new tokens (the padding row is skipped).
    let d_key = DeviceBuffer::from_slice(dev, &key)?;
    let d_value = DeviceBuffer::from_slice(dev, &value)?;
    let d_slots = DeviceBuffer::from_slice(dev, &slots)?;
    let shape = [T as i64, HEADS, DIM];
    cache.write_kv(
        &d_key.tensor(DType::BF16, &shape)?,
        Some(&d_value.tensor(DType::BF16, &shape)?),
        &d_slots.tensor(DType::I64, &[T as i64])?,
        Stream::DEFAULT,
    )?;

    // Gather both requests back to dense rows by block table + cu_seq_lens.
    let d_table = DeviceBuffer::from_slice(dev, block_table.as_flattened())?;
    let d_cu = DeviceBuffer::from_slice(dev, &cu_seq_lens)?;
    let out_bytes = N * ROW * 2;
    let mut d_out_key = DeviceBuffer::zeroed(dev, out_bytes)?;
    let mut d_out_value = DeviceBuffer::zeroed(dev, out_bytes)?;
    let out_shape = [N as i64, HEADS, DIM];
    cache.gather_kv(
        &mut d_out_key.tensor_mut(DType::BF16, &out_shape)?,
        Some(&mut d_out_value.tensor_mut(DType::BF16, &out_shape)?),
        &d_table.tensor(DType::I32, &[BATCH as i64, MAX_BLOCKS as i64])?,
        &d_cu.tensor(DType::I32, &[BATCH as i64 + 1])?,
        None,
        Stream::DEFAULT,
    )?;
    let out_key: Vec<u16> = d_out_key.to_vec()?; // waits for the stream
    let out_value: Vec<u16> = d_out_value.to_vec()?;

    // Check: exact for bf16; for fp8 e4m3 within half an fp8 step (3 mantissa bits) plus the
    // bf16 rounding of the output.
    let mut max_err = 0.0f64;
    let mut bad = 0;
    for (row, &token) in token_of_row.iter().enumerate() {
        for j in 0..ROW {
            for (src, out) in [(&key, &out_key), (&value, &out_value)] {
                let want = f64::from(from_bf16(src[token * ROW + j]));
                let got = f64::from(from_bf16(out[row * ROW + j]));
                let err = (got - want).abs();
                let tol = if fp8 { want.abs() / 16.0 + want.abs() / 256.0 + f64::from(scale) / 512.0 } else { 0.0 };
                max_err = max_err.max(err);
                if err.is_nan() || err > tol {
                    bad += 1;
                }
            }
        }
    }

    println!(
        "pagedkv {} on {dev}: {} cache, {NUM_BLOCKS} blocks x {BLOCK_SIZE} slots x {HEADS} heads x {DIM} dims (NHD)",
        pagedkv::version_string(),
        if fp8 { "fp8_e4m3 (per-tensor scale 0.01)" } else { "bf16" }
    );
    println!("wrote {} tokens (1 padding slot skipped), gathered {N} rows for {BATCH} requests", T - 1);
    println!(
        "round trip: {}, max abs error {max_err:.3}: {}",
        if fp8 { "within fp8 tolerance" } else { "exact" },
        if bad > 0 { "MISMATCH" } else { "ok" }
    );
    Ok(bad == 0)
}
