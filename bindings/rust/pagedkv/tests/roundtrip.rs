//! Write then gather round trips on host memory, checked against references computed in
//! Rust: plain and FP8 formats, every input / output dtype, padding and out-of-range slots,
//! NHD / HND / padded layouts, MLA entries, a per-token-head format.

mod common;

use common::*;
use pagedkv::{CacheFormat, CacheView, DType, HeadLayout, ScaleMode, Status, Stream, TensorMut, TensorRef};

const NB: i64 = 6;
const BS: i64 = 4;
const H: i64 = 2;
const D: i64 = 8;
const ROW: usize = (H * D) as usize;
const T_PAD: usize = 8;

/// Slots of the T = 7 tokens: padding (-1) and one past the cache (100); row 7 is not read.
const SLOTS: [i64; 7] = [5, 6, -1, 7, 8, 23, 100];
/// Gather: request A = blocks [1, 2] from position 1 (slots 5, 6, 7, 8 = tokens 0, 1, 3, 4),
/// request B = blocks [5, 0] from position 3 (slot 23 = token 5). Rows 5 and 6 stay untouched.
const TABLE: [i32; 4] = [1, 2, 5, 0];
const CU_SEQ_LENS: [i32; 3] = [0, 4, 5];
const SEQ_STARTS: [i32; 2] = [1, 3];
const TOKEN_OF_ROW: [usize; 5] = [0, 1, 3, 4, 5];
const N_OUT: usize = 7;

/// Host data of a tensor of f32 or 16-bit floats.
enum Host {
    F32(Vec<f32>),
    U16(Vec<u16>, DType),
}

impl Host {
    fn encode(xs: &[f32], dtype: DType) -> Host {
        match dtype {
            DType::F32 => Host::F32(xs.to_vec()),
            DType::BF16 => Host::U16(xs.iter().map(|&x| bf16_rne(x)).collect(), dtype),
            DType::F16 => Host::U16(xs.iter().map(|&x| f16_rne(x)).collect(), dtype),
            _ => unreachable!(),
        }
    }

    fn poisoned(n: usize, dtype: DType) -> Host {
        Host::encode(&vec![-777.0; n], dtype)
    }

    fn values(&self) -> Vec<f32> {
        match self {
            Host::F32(v) => v.clone(),
            Host::U16(v, DType::BF16) => v.iter().map(|&h| bf16_to_f32(h)).collect(),
            Host::U16(v, _) => v.iter().map(|&h| f16_to_f32(h)).collect(),
        }
    }

    fn tensor(&self, shape: &[i64]) -> TensorRef<'_> {
        match self {
            Host::F32(v) => TensorRef::from_slice(v, shape).unwrap(),
            Host::U16(v, dtype) => TensorRef::with_dtype(v, *dtype, shape).unwrap(),
        }
    }

    fn tensor_mut(&mut self, shape: &[i64]) -> TensorMut<'_> {
        match self {
            Host::F32(v) => TensorMut::from_slice(v, shape).unwrap(),
            Host::U16(v, dtype) => TensorMut::with_dtype(v, *dtype, shape).unwrap(),
        }
    }
}

/// Rounds a float32 cache value to the output dtype.
fn to_dtype(x: f32, dtype: DType) -> f32 {
    match dtype {
        DType::F32 => x,
        DType::BF16 => bf16_to_f32(bf16_rne(x)),
        DType::F16 => f16_to_f32(f16_rne(x)),
        _ => unreachable!(),
    }
}

/// What the cache stores and gives back as float32 for input value x of head h.
fn through_cache(format: CacheFormat, x: f32, scale: f32) -> f32 {
    match format {
        CacheFormat::F32 => x,
        CacheFormat::BF16 => bf16_to_f32(bf16_rne(x)),
        CacheFormat::F16 => f16_to_f32(f16_rne(x)),
        CacheFormat::FP8E4M3 => fp8_round_trip(x, scale),
        _ => unreachable!(),
    }
}

struct Case {
    format: CacheFormat,
    input: DType,
    output: DType,
    layout: HeadLayout,
    /// Explicit block stride in bytes (padded pages), else the layout's.
    padded_block: Option<i64>,
    /// FP8 scales: K and V, per tensor (1 value) or per head (H values).
    scales: Option<(Vec<f32>, Vec<f32>)>,
    int32_slots: bool,
}

impl Case {
    fn new(format: CacheFormat, input: DType, output: DType) -> Case {
        Case { format, input, output, layout: HeadLayout::Nhd, padded_block: None, scales: None, int32_slots: false }
    }

    fn run(&self) {
        let mut rng = Rng::new(self.format as u64 * 31 + self.input as u64 * 7 + self.output as u64);
        let key = Host::encode(&rng.vec(T_PAD * ROW, -2.0, 2.0), self.input);
        let value = Host::encode(&rng.vec(T_PAD * ROW, -2.0, 2.0), self.input);

        let row_bytes = self.format.row_bytes(D);
        let block_bytes = self.padded_block.unwrap_or(BS * H * row_bytes);
        let mut k_cache = vec![0u8; (NB * block_bytes) as usize];
        let mut v_cache = vec![0u8; (NB * block_bytes) as usize];
        let (k_scales, v_scales) = self.scales.clone().unwrap_or((vec![1.0], vec![1.0]));
        let mut builder =
            CacheView::builder(self.format, NB, BS, H, D).layout(self.layout).key(&mut k_cache).value(&mut v_cache);
        if let Some(b) = self.padded_block {
            builder = builder.key_strides(b, H * row_bytes, row_bytes).value_strides(b, H * row_bytes, row_bytes);
        }
        if self.scales.is_some() {
            let mode = if k_scales.len() > 1 { ScaleMode::PerHead } else { ScaleMode::PerTensor };
            builder = builder.scale_mode(mode).key_scale(&k_scales[..]).value_scale(&v_scales[..]);
        }
        let cache = builder.build().unwrap();

        // Write: T = 7 tokens of the 8 rows; one padding slot, one out of range.
        let slots32: Vec<i32> = SLOTS.iter().map(|&s| s as i32).collect();
        let slot_mapping = if self.int32_slots {
            TensorRef::from_slice(&slots32, &[7]).unwrap()
        } else {
            TensorRef::from_slice(&SLOTS, &[7]).unwrap()
        };
        let shape = [T_PAD as i64, H, D];
        let mut out_of_range = 0i64;
        cache
            .write_kv_counting(
                &key.tensor(&shape),
                Some(&value.tensor(&shape)),
                &slot_mapping,
                &mut out_of_range,
                Stream::DEFAULT,
            )
            .unwrap();
        assert_eq!(out_of_range, 1, "slot 100 is past the cache's 24 slots");

        // Gather into poisoned outputs.
        let mut out_k = Host::poisoned(N_OUT * ROW, self.output);
        let mut out_v = Host::poisoned(N_OUT * ROW, self.output);
        let out_shape = [N_OUT as i64, H, D];
        cache
            .gather_kv(
                &mut out_k.tensor_mut(&out_shape),
                Some(&mut out_v.tensor_mut(&out_shape)),
                &TensorRef::from_slice(&TABLE, &[2, 2]).unwrap(),
                &TensorRef::from_slice(&CU_SEQ_LENS, &[3]).unwrap(),
                Some(&TensorRef::from_slice(&SEQ_STARTS, &[2]).unwrap()),
                Stream::DEFAULT,
            )
            .unwrap();

        let (kin, vin) = (key.values(), value.values());
        let (kout, vout) = (out_k.values(), out_v.values());
        let scale_of = |scales: &[f32], h: usize| if scales.len() > 1 { scales[h] } else { scales[0] };
        for (row, &token) in TOKEN_OF_ROW.iter().enumerate() {
            for j in 0..ROW {
                let h = j / D as usize;
                let want_k =
                    to_dtype(through_cache(self.format, kin[token * ROW + j], scale_of(&k_scales, h)), self.output);
                let want_v =
                    to_dtype(through_cache(self.format, vin[token * ROW + j], scale_of(&v_scales, h)), self.output);
                let (got_k, got_v) = (kout[row * ROW + j], vout[row * ROW + j]);
                assert_eq!(
                    got_k.to_bits(),
                    want_k.to_bits(),
                    "{:?}: key row {row} elem {j}: {got_k} vs {want_k}",
                    self.format
                );
                assert_eq!(
                    got_v.to_bits(),
                    want_v.to_bits(),
                    "{:?}: value row {row} elem {j}: {got_v} vs {want_v}",
                    self.format
                );
            }
        }
        for row in TOKEN_OF_ROW.len()..N_OUT {
            for j in 0..ROW {
                assert_eq!(
                    kout[row * ROW + j],
                    to_dtype(-777.0, self.output),
                    "row {row} past cu_seq_lens[B] is untouched"
                );
                assert_eq!(vout[row * ROW + j], to_dtype(-777.0, self.output));
            }
        }
    }
}

#[test]
fn f32_cache() {
    Case::new(CacheFormat::F32, DType::F32, DType::F32).run();
}

#[test]
fn bf16_cache_bf16_io_int32_slots() {
    Case { int32_slots: true, ..Case::new(CacheFormat::BF16, DType::BF16, DType::BF16) }.run();
}

#[test]
fn bf16_cache_converts_f32_with_rne() {
    Case::new(CacheFormat::BF16, DType::F32, DType::F32).run();
}

#[test]
fn f16_cache_from_bf16_to_f16() {
    Case::new(CacheFormat::F16, DType::BF16, DType::F16).run();
}

#[test]
fn bf16_cache_hnd_layout() {
    Case { layout: HeadLayout::Hnd, ..Case::new(CacheFormat::BF16, DType::F32, DType::BF16) }.run();
}

#[test]
fn f32_cache_padded_pages() {
    let padded = BS * H * D * 4 + 64;
    Case { padded_block: Some(padded), ..Case::new(CacheFormat::F32, DType::F16, DType::F32) }.run();
}

#[test]
fn fp8_e4m3_per_tensor_scale() {
    let scales = Some((vec![0.01], vec![0.02]));
    Case { scales: scales.clone(), ..Case::new(CacheFormat::FP8E4M3, DType::F32, DType::F32) }.run();
    Case { scales, int32_slots: true, ..Case::new(CacheFormat::FP8E4M3, DType::BF16, DType::BF16) }.run();
}

#[test]
fn fp8_e4m3_per_head_scales_hnd() {
    let scales = Some((vec![0.01, 0.005], vec![0.03, 0.25]));
    Case { scales, layout: HeadLayout::Hnd, ..Case::new(CacheFormat::FP8E4M3, DType::F32, DType::F16) }.run();
}

#[test]
fn fp8_without_scales_is_scale_one() {
    // |x| < 2: no saturation; scale 1.0 when no scale memory is given.
    Case::new(CacheFormat::FP8E4M3, DType::F32, DType::F32).run();
}

#[test]
fn mla_entries_round_trip() {
    // K-only cache of entries [kv_c (6) | k_pe (2)], bf16, 4 blocks x 2 slots.
    let (r, p) = (6usize, 2usize);
    let mut k_cache = vec![0u16; 4 * 2 * (r + p)];
    let cache = CacheView::builder(CacheFormat::BF16, 4, 2, 1, (r + p) as i64).key(&mut k_cache).build().unwrap();
    assert!(!cache.has_value());
    let mut rng = Rng::new(5);
    let kv_c = rng.vec(3 * r, -1.0, 1.0);
    let k_pe = rng.vec(3 * p, -1.0, 1.0);
    let slots = [1i64, -1, 6];
    cache
        .write_mla(
            &TensorRef::from_slice(&kv_c, &[3, r as i64]).unwrap(),
            &TensorRef::from_slice(&k_pe, &[3, p as i64]).unwrap(),
            &TensorRef::from_slice(&slots, &[3]).unwrap(),
            Stream::DEFAULT,
        )
        .unwrap();
    // Gather slots 1 (block 0) and 6 (block 3): two requests of one token each.
    let (table, cu, starts) = ([0i32, 3], [0i32, 1, 2], [1i32, 0]);
    let mut out = vec![0.0f32; 2 * (r + p)];
    cache
        .gather_kv(
            &mut TensorMut::from_slice(&mut out, &[2, 1, (r + p) as i64]).unwrap(),
            None,
            &TensorRef::from_slice(&table, &[2, 1]).unwrap(),
            &TensorRef::from_slice(&cu, &[3]).unwrap(),
            Some(&TensorRef::from_slice(&starts, &[2]).unwrap()),
            Stream::DEFAULT,
        )
        .unwrap();
    for (row, token) in [(0usize, 0usize), (1, 2)] {
        let entry: Vec<f32> =
            kv_c[token * r..][..r].iter().chain(&k_pe[token * p..][..p]).map(|&x| bf16_to_f32(bf16_rne(x))).collect();
        assert_eq!(out[row * (r + p)..][..r + p], entry[..], "row {row}");
    }
}

#[test]
fn int8_per_token_head_with_scale_planes() {
    let (nb, bs, h, d) = (3i64, 2i64, 2i64, 16i64);
    let mut k_cache = vec![0u8; (nb * bs * h * d) as usize];
    let mut v_cache = k_cache.clone();
    let mut k_plane = vec![0f32; (nb * bs * h) as usize];
    let mut v_plane = k_plane.clone();
    let mut rng = Rng::new(11);
    let key = rng.vec((2 * h * d) as usize, -3.0, 3.0);
    let value = rng.vec((2 * h * d) as usize, -0.5, 0.5);
    let slots = [3i64, 4];
    let mut out_k = vec![0f32; key.len()];
    let mut out_v = vec![0f32; key.len()];
    {
        let cache = CacheView::builder(CacheFormat::Int8PerTokenHead, nb, bs, h, d)
            .key(&mut k_cache)
            .value(&mut v_cache)
            .key_scale_plane(&mut k_plane)
            .value_scale_plane(&mut v_plane)
            .build()
            .unwrap();
        let shape = [2, h, d];
        cache
            .write_kv(
                &TensorRef::from_slice(&key, &shape).unwrap(),
                Some(&TensorRef::from_slice(&value, &shape).unwrap()),
                &TensorRef::from_slice(&slots, &[2]).unwrap(),
                Stream::DEFAULT,
            )
            .unwrap();
        let (table, cu, starts) = ([1i32, 2], [0i32, 2], [1i32]);
        cache
            .gather_kv(
                &mut TensorMut::from_slice(&mut out_k, &shape).unwrap(),
                Some(&mut TensorMut::from_slice(&mut out_v, &shape).unwrap()),
                &TensorRef::from_slice(&table, &[1, 2]).unwrap(),
                &TensorRef::from_slice(&cu, &[2]).unwrap(),
                Some(&TensorRef::from_slice(&starts, &[1]).unwrap()),
                Stream::DEFAULT,
            )
            .unwrap();
    }
    // Reference: s = max(amax / 127, 1e-6); q = clamp(rne(x * (1/s)), -128, 127); q * s.
    for (input, out, plane, cache) in [(&key, &out_k, &k_plane, &k_cache), (&value, &out_v, &v_plane, &v_cache)] {
        for t in 0..2usize {
            for head in 0..h as usize {
                let row = &input[(t * h as usize + head) * d as usize..][..d as usize];
                let amax = row.iter().fold(0f32, |m, &x| m.max(x.abs()));
                let s = (amax / 127.0).max(1e-6);
                let slot = slots[t] as usize;
                assert_eq!(plane[slot * h as usize + head], s, "scale of token {t} head {head}");
                for (j, &x) in row.iter().enumerate() {
                    let q = (x * (1.0 / s)).round_ties_even().clamp(-128.0, 127.0);
                    let code = cache[(slot * h as usize + head) * d as usize + j] as i8;
                    assert_eq!(f32::from(code), q, "code of token {t} head {head} elem {j}");
                    assert_eq!(out[(t * h as usize + head) * d as usize + j], q * s);
                }
            }
        }
    }
}

#[test]
fn gather_counts_out_of_range_rows() {
    let mut k = vec![0f32; (NB * BS * H * D) as usize];
    let cache = CacheView::builder(CacheFormat::F32, NB, BS, H, D).key(&mut k).build().unwrap();
    // One request of 8 rows over blocks [1, 99]: positions 4..8 name block 99.
    let (table, cu) = ([1i32, 99], [0i32, 8]);
    let mut out = vec![-1.0f32; 8 * ROW];
    let mut count = 0i64;
    cache
        .gather_kv_counting(
            &mut TensorMut::from_slice(&mut out, &[8, H, D]).unwrap(),
            None,
            &TensorRef::from_slice(&table, &[1, 2]).unwrap(),
            &TensorRef::from_slice(&cu, &[2]).unwrap(),
            None,
            &mut count,
            Stream::DEFAULT,
        )
        .unwrap();
    assert_eq!(count, 4);
    assert!(out[..4 * ROW].iter().all(|&x| x == 0.0));
    assert!(out[4 * ROW..].iter().all(|&x| x == -1.0), "out-of-range rows are left unwritten");
}

#[test]
fn zero_tokens_is_a_no_op() {
    let mut k = vec![1u16; (NB * BS * H * D) as usize];
    let cache = CacheView::builder(CacheFormat::BF16, NB, BS, H, D).key(&mut k).build().unwrap();
    let key: [u16; 0] = [];
    let slots: [i64; 0] = [];
    cache
        .write_kv(
            &TensorRef::with_dtype(&key, DType::BF16, &[0, H, D]).unwrap(),
            None,
            &TensorRef::from_slice(&slots, &[0]).unwrap(),
            Stream::DEFAULT,
        )
        .unwrap();
    assert!(k.iter().all(|&x| x == 1));
}

#[test]
fn write_errors_leave_the_cache_untouched() {
    let mut k = vec![0u16; (NB * BS * H * D) as usize];
    let cache = CacheView::builder(CacheFormat::BF16, NB, BS, H, D).key(&mut k).build().unwrap();
    let key = vec![0x3F80u16; 2 * ROW];
    let slots = [0i64, 1];
    // Wrong head count in the key.
    let err = cache
        .write_kv(
            &TensorRef::with_dtype(&key, DType::BF16, &[2, 1, 2 * D]).unwrap(),
            None,
            &TensorRef::from_slice(&slots, &[2]).unwrap(),
            Stream::DEFAULT,
        )
        .unwrap_err();
    assert_eq!(err.status(), Status::InvalidArgument);
    assert!(err.message().starts_with("pkv_write_kv: key shape[1]"), "{err}");
    assert!(k.iter().all(|&x| x == 0));
}
#[test]
fn references_of_known_values() {
    assert_eq!(bf16_rne(1.0), 0x3F80);
    assert_eq!(bf16_rne(f32::from_bits(0x3F80_8000)), 0x3F80); // tie to even
    assert_eq!(bf16_rne(f32::from_bits(0x3F81_8000)), 0x3F82);
    assert_eq!(f16_rne(1.0), 0x3C00);
    assert_eq!(f16_rne(65504.0), 0x7BFF);
    assert_eq!(f16_rne(2f32.powi(-24)), 0x0001);
    assert_eq!(f16_to_f32(0xC000), -2.0);
    assert_eq!(e4m3_rne_sat(1.0), 0x38);
    assert_eq!(e4m3_rne_sat(448.0), 0x7E);
    assert_eq!(e4m3_rne_sat(1e6), 0x7E);
    assert_eq!(e4m3_rne_sat(-2.5), 0xC2);
    assert_eq!(e4m3_rne_sat(2f32.powi(-9)), 0x01);
    assert_eq!(e4m3_rne_sat(1.0625), 0x38); // tie to even (1.0)
    assert_eq!(e4m3_rne_sat(1.1875), 0x3A); // tie to even (1.25)
    for q in 0..=0xFEu8 {
        if q & 0x7F != 0x7F {
            assert_eq!(e4m3_rne_sat(e4m3_to_f32(q)), if q == 0x80 { 0x80 } else { q });
        }
    }
}

#[test]
fn fp8_ds_mla_entries() {
    // K-only cache of 656-byte entries: 2 blocks x 2 slots; u32 memory for the 4-byte alignment.
    let mut memory = vec![0u32; 2 * 2 * 656 / 4];
    let mut rng = Rng::new(21);
    let kv_c: Vec<u16> = rng.vec(2 * 512, -3.0, 3.0).iter().map(|&x| bf16_rne(x)).collect();
    let k_pe: Vec<u16> = rng.vec(2 * 64, -1.0, 1.0).iter().map(|&x| bf16_rne(x)).collect();
    let slots = [3i32, 0];
    let mut out = vec![0f32; 2 * 576];
    {
        let cache = CacheView::builder(CacheFormat::FP8DsMla, 2, 2, 1, 576).key(&mut memory).build().unwrap();
        cache
            .write_mla(
                &TensorRef::with_dtype(&kv_c, DType::BF16, &[2, 512]).unwrap(),
                &TensorRef::with_dtype(&k_pe, DType::BF16, &[2, 64]).unwrap(),
                &TensorRef::from_slice(&slots, &[2]).unwrap(),
                Stream::DEFAULT,
            )
            .unwrap();
        let (table, cu, starts) = ([1i32, 0], [0i32, 1, 2], [1i32, 0]);
        cache
            .gather_kv(
                &mut TensorMut::from_slice(&mut out, &[2, 1, 576]).unwrap(),
                None,
                &TensorRef::from_slice(&table, &[2, 1]).unwrap(),
                &TensorRef::from_slice(&cu, &[3]).unwrap(),
                Some(&TensorRef::from_slice(&starts, &[2]).unwrap()),
                Stream::DEFAULT,
            )
            .unwrap();
    }
    for t in 0..2 {
        let entry = &memory[slots[t] as usize * 656 / 4..][..656 / 4];
        for tile in 0..4 {
            let xs: Vec<f32> = kv_c[t * 512 + tile * 128..][..128].iter().map(|&h| bf16_to_f32(h)).collect();
            let amax = xs.iter().fold(0f32, |m, &x| m.max(x.abs()));
            let s = (amax / 448.0).max(f32::MIN_POSITIVE);
            assert_eq!(f32::from_bits(entry[128 + tile]), s, "token {t} tile {tile} scale");
            for (i, &x) in xs.iter().enumerate() {
                let want = e4m3_to_f32(e4m3_rne_sat(x / s)) * s;
                assert_eq!(out[t * 576 + tile * 128 + i], want, "token {t} latent {}", tile * 128 + i);
            }
        }
        for i in 0..64 {
            assert_eq!(out[t * 576 + 512 + i], bf16_to_f32(k_pe[t * 64 + i]), "token {t} rope {i}");
        }
    }
}

#[test]
fn int4_rotation_signs_and_domains() {
    // The same INT4 write with the library's default signs (NULL) and with
    // pagedkv::default_rotation_signs passed explicitly gives the same bytes; a gather in the
    // rotated domain differs from the original-domain one and is close to H * x.
    let (nb, bs, h, d) = (2i64, 2i64, 1i64, 16i64);
    let mut rng = Rng::new(8);
    let key = rng.vec(d as usize, -1.0, 1.0);
    let slots = [1i64];
    let signs = pagedkv::default_rotation_signs(d as usize);
    let run = |explicit: bool, rotated: bool| {
        let mut k = vec![0u8; (nb * bs * h * d / 2) as usize];
        let mut plane = vec![0f32; (nb * bs * h) as usize];
        let mut out = vec![0f32; d as usize];
        {
            let mut builder =
                CacheView::builder(CacheFormat::Int4PerTokenHead, nb, bs, h, d).key(&mut k).key_scale_plane(&mut plane);
            if explicit {
                builder = builder.key_rotation_signs(&signs[..]);
            }
            if rotated {
                builder = builder.flags(pagedkv::CacheFlags::ROTATED_DOMAIN);
            }
            let cache = builder.build().unwrap();
            cache
                .write_kv(
                    &TensorRef::from_slice(&key, &[1, h, d]).unwrap(),
                    None,
                    &TensorRef::from_slice(&slots, &[1]).unwrap(),
                    Stream::DEFAULT,
                )
                .unwrap();
            let (table, cu, starts) = ([0i32], [0i32, 1], [1i32]);
            cache
                .gather_kv(
                    &mut TensorMut::from_slice(&mut out, &[1, h, d]).unwrap(),
                    None,
                    &TensorRef::from_slice(&table, &[1, 1]).unwrap(),
                    &TensorRef::from_slice(&cu, &[2]).unwrap(),
                    Some(&TensorRef::from_slice(&starts, &[1]).unwrap()),
                    Stream::DEFAULT,
                )
                .unwrap();
        }
        (k, plane, out)
    };
    let (k_default, plane_default, original) = run(false, false);
    let (k_explicit, plane_explicit, _) = run(true, false);
    assert_eq!(k_default, k_explicit);
    assert_eq!(plane_default, plane_explicit);
    assert!(plane_default[1] > 0.0, "slot 1 has a scale");
    // Original domain: within the INT4 step of the input.
    let max_err = original.iter().zip(&key).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(max_err < 0.5, "max error {max_err}");
    // Rotated domain: x' = H (signs * x), unnormalized Sylvester Hadamard.
    let (_, _, rotated) = run(false, true);
    let n = d as usize;
    let rotated_ref: Vec<f32> = (0..n)
        .map(|i| (0..n).map(|j| if (i & j).count_ones() % 2 == 0 { 1.0 } else { -1.0 } * signs[j] * key[j]).sum())
        .collect();
    let scale = rotated_ref.iter().fold(0f32, |m, &x| m.max(x.abs()));
    for (got, want) in rotated.iter().zip(&rotated_ref) {
        assert!((got - want).abs() <= scale / 7.0, "rotated {got} vs {want}");
    }
}
