//! The key hashes nutcracker (twemproxy) offers, bit for bit as nutcracker
//! 0.5 computes them on x86-64, so that a fleet placed by nutcracker keeps
//! its keys behind memring. Golden vectors from the real nutcracker check
//! every one (`tests/ring_golden.rs`, `tests/data/README.md`).
//!
//! Nutcracker reads key bytes as C `char`, which is signed on x86: in the
//! hashes that do so, a byte >= 0x80 enters sign-extended (`b as i8`),
//! exactly as there. Imports nothing outside `route`.

use md5::{Digest, Md5};

/// A nutcracker `hash:` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyHash {
    /// Bob Jenkins' one-at-a-time.
    OneAtATime,
    /// The first 4 bytes of the key's MD5, little-endian (ketama's hash).
    Md5,
    /// CRC-16 (XMODEM table), without masking to 16 bits, as nutcracker does.
    Crc16,
    /// libmemcached's CRC-32 variant: `((~crc) >> 16) & 0x7fff`.
    Crc32,
    /// The standard CRC-32.
    Crc32a,
    /// FNV-1 with the 64-bit constants, truncated to 32 bits.
    Fnv1_64,
    /// FNV-1a with the 64-bit constants in 32-bit arithmetic (nutcracker's
    /// default hash).
    Fnv1a64,
    /// FNV-1, 32-bit.
    Fnv1_32,
    /// FNV-1a, 32-bit.
    Fnv1a32,
    /// Paul Hsieh's SuperFastHash.
    Hsieh,
    /// MurmurHash2 with nutcracker's seed.
    Murmur,
    /// Bob Jenkins' lookup3 `hashlittle`, initval 13.
    Jenkins,
}

impl KeyHash {
    /// Every hash, in nutcracker's order.
    pub const ALL: [KeyHash; 12] = [
        KeyHash::OneAtATime,
        KeyHash::Md5,
        KeyHash::Crc16,
        KeyHash::Crc32,
        KeyHash::Crc32a,
        KeyHash::Fnv1_64,
        KeyHash::Fnv1a64,
        KeyHash::Fnv1_32,
        KeyHash::Fnv1a32,
        KeyHash::Hsieh,
        KeyHash::Murmur,
        KeyHash::Jenkins,
    ];

    /// Its name in a nutcracker (and memring) configuration.
    pub fn name(self) -> &'static str {
        match self {
            KeyHash::OneAtATime => "one_at_a_time",
            KeyHash::Md5 => "md5",
            KeyHash::Crc16 => "crc16",
            KeyHash::Crc32 => "crc32",
            KeyHash::Crc32a => "crc32a",
            KeyHash::Fnv1_64 => "fnv1_64",
            KeyHash::Fnv1a64 => "fnv1a_64",
            KeyHash::Fnv1_32 => "fnv1_32",
            KeyHash::Fnv1a32 => "fnv1a_32",
            KeyHash::Hsieh => "hsieh",
            KeyHash::Murmur => "murmur",
            KeyHash::Jenkins => "jenkins",
        }
    }

    /// The hash named `name` (as nutcracker spells it).
    pub fn from_name(name: &str) -> Option<KeyHash> {
        KeyHash::ALL.into_iter().find(|h| h.name() == name)
    }

    /// The hash of `key`.
    pub fn hash(self, key: &[u8]) -> u32 {
        match self {
            KeyHash::OneAtATime => one_at_a_time(key),
            KeyHash::Md5 => md5(key),
            KeyHash::Crc16 => crc16(key),
            KeyHash::Crc32 => (!crc32_raw(key) >> 16) & 0x7fff,
            KeyHash::Crc32a => !crc32_raw(key),
            KeyHash::Fnv1_64 => fnv1_64(key),
            KeyHash::Fnv1a64 => fnv1a_64(key),
            KeyHash::Fnv1_32 => fnv1_32(key),
            KeyHash::Fnv1a32 => fnv1a_32(key),
            KeyHash::Hsieh => hsieh(key),
            KeyHash::Murmur => murmur(key),
            KeyHash::Jenkins => jenkins(key),
        }
    }
}

/// A key byte as C reads a signed `char` into a wider unsigned integer.
fn signed(b: u8) -> u32 {
    b as i8 as u32
}

fn one_at_a_time(key: &[u8]) -> u32 {
    let mut v: u32 = 0;
    for &b in key {
        v = v.wrapping_add(signed(b));
        v = v.wrapping_add(v << 10);
        v ^= v >> 6;
    }
    v = v.wrapping_add(v << 3);
    v ^= v >> 11;
    v.wrapping_add(v << 15)
}

fn md5(key: &[u8]) -> u32 {
    let d = Md5::digest(key);
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

/// The CRC-16/XMODEM table entry for `i` (polynomial 0x1021).
const fn crc16_entry(i: u16) -> u16 {
    let mut c = i << 8;
    let mut k = 0;
    while k < 8 {
        c = if c & 0x8000 != 0 {
            (c << 1) ^ 0x1021
        } else {
            c << 1
        };
        k += 1;
    }
    c
}

const CRC16: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = crc16_entry(i as u16);
        i += 1;
    }
    t
};

fn crc16(key: &[u8]) -> u32 {
    // nutcracker keeps shifting a 32-bit register: the high bits survive.
    let mut crc: u32 = 0;
    for &b in key {
        let i = ((crc >> 8) ^ signed(b)) & 0xff;
        crc = (crc << 8) ^ u32::from(CRC16[i as usize]);
    }
    crc
}

/// The reflected CRC-32 table entry for `i` (polynomial 0xEDB88320).
const fn crc32_entry(i: u32) -> u32 {
    let mut c = i;
    let mut k = 0;
    while k < 8 {
        c = if c & 1 != 0 {
            0xEDB8_8320 ^ (c >> 1)
        } else {
            c >> 1
        };
        k += 1;
    }
    c
}

const CRC32: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = crc32_entry(i as u32);
        i += 1;
    }
    t
};

/// The CRC-32 register after `key`, before the final inversion.
fn crc32_raw(key: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &b in key {
        crc = (crc >> 8) ^ CRC32[((crc ^ u32::from(b)) & 0xff) as usize];
    }
    crc
}

const FNV64_INIT: u64 = 0xcbf2_9ce4_8422_2325;
const FNV64_PRIME: u64 = 0x0000_0100_0000_01b3;
const FNV32_INIT: u32 = 2_166_136_261;
const FNV32_PRIME: u32 = 16_777_619;

fn fnv1_64(key: &[u8]) -> u32 {
    let mut h = FNV64_INIT;
    for &b in key {
        h = h.wrapping_mul(FNV64_PRIME);
        h ^= b as i8 as u64;
    }
    h as u32
}

fn fnv1a_64(key: &[u8]) -> u32 {
    // 32-bit arithmetic with the 64-bit constants truncated, as nutcracker.
    let mut h = FNV64_INIT as u32;
    for &b in key {
        h ^= signed(b);
        h = h.wrapping_mul(FNV64_PRIME as u32);
    }
    h
}

fn fnv1_32(key: &[u8]) -> u32 {
    let mut h = FNV32_INIT;
    for &b in key {
        h = h.wrapping_mul(FNV32_PRIME);
        h ^= signed(b);
    }
    h
}

fn fnv1a_32(key: &[u8]) -> u32 {
    let mut h = FNV32_INIT;
    for &b in key {
        h ^= signed(b);
        h = h.wrapping_mul(FNV32_PRIME);
    }
    h
}

fn get16(k: &[u8], at: usize) -> u32 {
    u32::from(k[at]) | (u32::from(k[at + 1]) << 8)
}

fn hsieh(key: &[u8]) -> u32 {
    if key.is_empty() {
        return 0;
    }
    let mut h: u32 = 0;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        h = h.wrapping_add(get16(c, 0));
        let tmp = (get16(c, 2) << 11) ^ h;
        h = (h << 16) ^ tmp;
        h = h.wrapping_add(h >> 11);
    }
    let rest = chunks.remainder();
    match rest.len() {
        3 => {
            h = h.wrapping_add(get16(rest, 0));
            h ^= h << 16;
            h ^= signed(rest[2]) << 18;
            h = h.wrapping_add(h >> 11);
        }
        2 => {
            h = h.wrapping_add(get16(rest, 0));
            h ^= h << 11;
            h = h.wrapping_add(h >> 17);
        }
        1 => {
            h = h.wrapping_add(u32::from(rest[0]));
            h ^= h << 10;
            h = h.wrapping_add(h >> 1);
        }
        _ => {}
    }
    h ^= h << 3;
    h = h.wrapping_add(h >> 5);
    h ^= h << 4;
    h = h.wrapping_add(h >> 17);
    h ^= h << 25;
    h.wrapping_add(h >> 6)
}

fn murmur(key: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let len = key.len() as u32;
    let seed = 0xdead_beef_u32.wrapping_mul(len);
    let mut h = seed ^ len;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

fn jenkins(key: &[u8]) -> u32 {
    let init = 0xdead_beef_u32
        .wrapping_add(key.len() as u32)
        .wrapping_add(13);
    let (mut a, mut b, mut c) = (init, init, init);
    let word = |k: &[u8], at: usize| -> u32 {
        (0..4).fold(0u32, |w, i| {
            w | (u32::from(k.get(at + i).copied().unwrap_or(0)) << (8 * i))
        })
    };
    let mut rest = key;
    while rest.len() > 12 {
        a = a.wrapping_add(word(rest, 0));
        b = b.wrapping_add(word(rest, 4));
        c = c.wrapping_add(word(rest, 8));
        // mix(a, b, c)
        a = a.wrapping_sub(c);
        a ^= c.rotate_left(4);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= a.rotate_left(6);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= b.rotate_left(8);
        b = b.wrapping_add(a);
        a = a.wrapping_sub(c);
        a ^= c.rotate_left(16);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= a.rotate_left(19);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= b.rotate_left(4);
        b = b.wrapping_add(a);
        rest = &rest[12..];
    }
    if rest.is_empty() {
        return c;
    }
    // The last 1..=12 bytes, zero-padded (the byte-wise path of lookup3).
    a = a.wrapping_add(word(rest, 0));
    b = b.wrapping_add(word(rest, 4));
    c = c.wrapping_add(word(rest, 8));
    // final(a, b, c)
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c.wrapping_sub(b.rotate_left(24))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for h in KeyHash::ALL {
            assert_eq!(KeyHash::from_name(h.name()), Some(h));
        }
        assert_eq!(KeyHash::from_name("sha1"), None);
    }

    #[test]
    fn the_tables_are_the_standard_ones() {
        // Spot values of the published CRC-16/XMODEM and CRC-32 tables.
        assert_eq!((CRC16[1], CRC16[2], CRC16[255]), (0x1021, 0x2042, 0x1ef0));
        assert_eq!(
            (CRC32[1], CRC32[2], CRC32[255]),
            (0x7707_3096, 0xee0e_612c, 0x2d02_ef8d)
        );
        // The standard CRC-32 check value.
        assert_eq!(KeyHash::Crc32a.hash(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn published_check_values() {
        // FNV test vectors (32-bit and the 64-bit FNV-1 truncated).
        assert_eq!(KeyHash::Fnv1a32.hash(b"a"), 0xe40c_292c);
        assert_eq!(KeyHash::Fnv1_32.hash(b"a"), 0x050c_5d7e);
        assert_eq!(
            KeyHash::Fnv1_64.hash(b"a"),
            0xaf63_bd4c_8601_b7be_u64 as u32
        );
        // lookup3: hashlittle("", 0) = 0xdeadbeef; "Four score..." with
        // initval 0 is 0x17770551, but nutcracker's initval is 13.
        assert_eq!(KeyHash::Jenkins.hash(b""), 0xdead_beef_u32.wrapping_add(13));
        // Empty keys hash like nutcracker never lets them (it returns 0
        // before hashing an empty key); the functions themselves are total.
        for h in KeyHash::ALL {
            let _ = h.hash(b"");
            let _ = h.hash(&[0xff; 300]);
        }
    }
}
