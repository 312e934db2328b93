//! A small, fixed 64-bit hash: the same on every platform and release, so that placements can be
//! written in tests and reproduced by anyone with the seed.

/// FNV-1a over `bytes`, started from `seed`, then a SplitMix64 finaliser for avalanche.
pub(crate) fn hash64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// SplitMix64's finaliser.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_fixed_and_seeded() {
        assert_eq!(hash64(0, b"node-a"), hash64(0, b"node-a"));
        assert_ne!(hash64(0, b"node-a"), hash64(1, b"node-a"));
        assert_ne!(hash64(0, b"node-a"), hash64(0, b"node-b"));
        // Pinned: a placement written in a test or a document stays true.
        assert_eq!(hash64(0, b""), mix(0xcbf2_9ce4_8422_2325));
    }
}
