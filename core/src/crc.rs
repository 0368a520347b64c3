//! CRC-32C arithmetic beyond what the `crc32c` crate offers: re-deriving a batch's CRC after a
//! few bytes near its start change, without another pass over the batch.
//!
//! CRC-32C is linear over GF(2): for two messages of equal length that differ only in their
//! first bytes, `crc(a) ^ crc(b)` equals the CRC difference of those prefixes advanced past the
//! unchanged rest, i.e. multiplied by `x^(8·rest)` modulo the polynomial. Computing that power
//! takes O(log rest) multiplications (the method of zlib's `crc32_combine` since 1.2.12; the
//! `crc32c` crate's own `crc32c_combine` uses the older matrix method, ~10 µs per call). Batches
//! of one size tend to follow each other (a stream's messages, a producer's batches), so the
//! last size's multiplier is kept per thread as 32 partial products: applying it is 32
//! independent masked XORs, cheaper than reading even a 1 KiB batch again.

use std::cell::RefCell;

/// CRC-32C (Castagnoli), bit-reflected: bit 31 holds x^0, bit 0 holds x^31.
const POLY: u32 = 0x82F6_3B78;

/// `a · b mod P`.
const fn mul_mod_p(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut p = 0u32;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                return p;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
}

/// `X_POW_2K[k] = x^(2^k) mod P`.
const X_POW_2K: [u32; 64] = {
    let mut t = [0u32; 64];
    let mut p = 1u32 << 30; // x^1
    let mut k = 0;
    while k < 64 {
        t[k] = p;
        p = mul_mod_p(p, p);
        k += 1;
    }
    t
};

/// `x^(8·len) mod P`: what advancing a CRC difference past `len` zero bytes multiplies it by.
fn zero_bytes_factor(len: usize) -> u32 {
    let mut n = len as u64;
    let mut k = 3; // 8·len = len · 2^3
    let mut p = 1u32 << 31; // x^0
    while n != 0 {
        if n & 1 != 0 {
            p = mul_mod_p(X_POW_2K[k], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// Multiplication by one fixed factor `f`, as the products `f · x^i mod P` for i in 0..32.
struct Multiplier([u32; 32]);

impl Multiplier {
    fn new(f: u32) -> Multiplier {
        let mut parts = [0u32; 32];
        let mut b = f;
        for part in &mut parts {
            *part = b;
            b = (b >> 1) ^ (POLY & (b & 1).wrapping_neg());
        }
        Multiplier(parts)
    }

    fn apply(&self, a: u32) -> u32 {
        let mut p = 0;
        for (i, part) in self.0.iter().enumerate() {
            p ^= part & ((a >> (31 - i)) & 1).wrapping_neg();
        }
        p
    }
}

/// Advances a CRC difference past `len` zero bytes.
fn shift(crc: u32, len: usize) -> u32 {
    mul_mod_p(zero_bytes_factor(len), crc)
}

/// The multiplier of the last region length that came twice in a row, per thread.
struct LastLength {
    len: usize,
    /// Set once `len` is seen a second time.
    multiplier: Option<Multiplier>,
}

thread_local! {
    static LAST: RefCell<LastLength> = const {
        RefCell::new(LastLength { len: usize::MAX, multiplier: None })
    };
}

/// The CRC-32C of a region after its first bytes change from `old_prefix` to `new_prefix`
/// (of equal length), given `crc`, the region's CRC before, and `rest`, the length of the
/// unchanged part after the prefix. Reads only the two prefixes. A `crc` that did not match the
/// old region gives one that does not match the new region: a corrupt batch is never made to
/// look whole (a fresh pass would bless it).
pub fn after_prefix_change(crc: u32, old_prefix: &[u8], new_prefix: &[u8], rest: usize) -> u32 {
    assert_eq!(
        old_prefix.len(),
        new_prefix.len(),
        "prefixes of different lengths"
    );
    let diff = crc32c::crc32c(old_prefix) ^ crc32c::crc32c(new_prefix);
    let advanced = LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.len == rest {
            let m = last
                .multiplier
                .get_or_insert_with(|| Multiplier::new(zero_bytes_factor(rest)));
            return m.apply(diff);
        }
        last.len = rest;
        last.multiplier = None;
        shift(diff, rest)
    });
    crc ^ advanced
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Rewrites the region's prefix and returns its CRC by [`after_prefix_change`].
    fn replace_prefix(region: &mut [u8], crc: u32, new_prefix: &[u8]) -> u32 {
        let n = new_prefix.len();
        let old = region[..n].to_vec();
        region[..n].copy_from_slice(new_prefix);
        after_prefix_change(crc, &old, new_prefix, region.len() - n)
    }

    #[test]
    fn shift_matches_crc_of_appended_zeros() {
        // crc(a ‖ 0^n) = shift(crc(a) ^ crc(0^|a|), n) ^ crc(0^(|a|+n)), by linearity.
        let a = b"sluice batch";
        for n in [0usize, 1, 7, 8, 1000, 8191, 8192, 70_001] {
            let mut padded = a.to_vec();
            padded.resize(a.len() + n, 0);
            let zeros_a = crc32c::crc32c(&vec![0u8; a.len()]);
            let zeros_all = crc32c::crc32c(&vec![0u8; a.len() + n]);
            let derived = shift(crc32c::crc32c(a) ^ zeros_a, n) ^ zeros_all;
            assert_eq!(derived, crc32c::crc32c(&padded), "n = {n}");
        }
    }

    proptest! {
        #[test]
        fn a_multiplier_multiplies(f in any::<u32>(), a in any::<u32>()) {
            prop_assert_eq!(Multiplier::new(f).apply(a), mul_mod_p(a, f));
        }

        /// Lengths repeat (the multiplier path) and change (the computed path).
        #[test]
        fn replace_prefix_agrees_with_a_full_pass(
            cases in proptest::collection::vec(
                (0usize..3, any::<u8>(), proptest::collection::vec(any::<u8>(), 0..22)),
                1..12,
            ),
        ) {
            for (size, fill, prefix) in cases {
                let len = [22usize, 1_100, 40_000][size];
                let mut region: Vec<u8> =
                    (0..len).map(|i| (i as u8).wrapping_mul(fill)).collect();
                let old = crc32c::crc32c(&region);
                let new = replace_prefix(&mut region, old, &prefix);
                prop_assert_eq!(&region[..prefix.len()], &prefix[..]);
                prop_assert_eq!(new, crc32c::crc32c(&region));
            }
        }

        #[test]
        fn a_wrong_crc_stays_wrong(
            region in proptest::collection::vec(any::<u8>(), 22..5_000),
            flip in 1u32..,
        ) {
            let mut region = region;
            let mut claimed = crc32c::crc32c(&region) ^ flip;
            // The second call has the same length: the multiplier path.
            for byte in [9u8, 10] {
                claimed = replace_prefix(&mut region, claimed, &[byte; 22]);
                prop_assert_eq!(claimed ^ flip, crc32c::crc32c(&region));
            }
        }
    }
}
