//! Reference conversions computed in Rust (never by the library), and a small RNG.
#![allow(dead_code)]

/// float32 -> bfloat16 bits, round to nearest even (NaN stays NaN).
pub fn bf16_rne(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// float32 -> float16 bits, round to nearest even (finite inputs of the tests).
pub fn f16_rne(x: f32) -> u16 {
    let sign = ((x.to_bits() >> 16) & 0x8000) as u16;
    let a = f64::from(x.abs());
    if a == 0.0 {
        return sign;
    }
    let e = a.log2().floor() as i32;
    let quantum = 2f64.powi(e.max(-14) - 10);
    let r = (a / quantum).round_ties_even() * quantum;
    if r >= 65520.0 {
        return sign | 0x7C00; // overflow to infinity
    }
    let (exp, mant) = if r < 2f64.powi(-14) {
        (0, (r / 2f64.powi(-24)) as u16)
    } else {
        let e = r.log2().floor() as i32;
        ((e + 15) as u16, ((r / 2f64.powi(e) - 1.0) * 1024.0) as u16)
    };
    sign | (exp << 10) | mant
}

pub fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1F);
    let mant = f64::from(h & 0x3FF);
    let v = if exp == 0 { mant * 2f64.powi(-24) } else { (1.0 + mant / 1024.0) * 2f64.powi(exp - 15) };
    (sign * v) as f32
}

/// float32 -> OCP e4m3fn, round to nearest even, saturating to +-448 (finite inputs).
pub fn e4m3_rne_sat(x: f32) -> u8 {
    assert!(x.is_finite());
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = f64::from(x.abs());
    if a == 0.0 {
        return sign;
    }
    let e = a.log2().floor() as i32;
    let quantum = 2f64.powi(e.max(-6) - 3);
    let r = ((a / quantum).round_ties_even() * quantum).min(448.0);
    if r == 0.0 {
        return sign;
    }
    let (exp, mant) = if r < 2f64.powi(-6) {
        (0u8, (r / 2f64.powi(-9)) as u8)
    } else {
        let e = r.log2().floor() as i32;
        ((e + 7) as u8, ((r / 2f64.powi(e) - 1.0) * 8.0) as u8)
    };
    sign | (exp << 3) | mant
}

pub fn e4m3_to_f32(q: u8) -> f32 {
    let sign = if q & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((q >> 3) & 0xF);
    let mant = f64::from(q & 7);
    if exp == 15 && mant == 7.0 {
        return f32::NAN;
    }
    let v = if exp == 0 { mant * 2f64.powi(-9) } else { (1.0 + mant / 8.0) * 2f64.powi(exp - 7) };
    (sign * v) as f32
}

/// What an FP8 E4M3 cache with scale `s` gives back for `x`, as float32.
pub fn fp8_round_trip(x: f32, s: f32) -> f32 {
    e4m3_to_f32(e4m3_rne_sat(x / s)) * s
}

/// A deterministic LCG of values in [lo, hi).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        lo + (hi - lo) * ((self.0 >> 40) as f32 / (1u64 << 24) as f32)
    }

    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}
