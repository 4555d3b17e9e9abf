//! magent's placement: `hashme()` (DJB2 over the key as signed chars,
//! `& 0x7fffffff`) modulo the number of servers.
//!
//! Owns only the hash and the modulo; imports nothing outside `route`.

use super::Member;

/// magent's DJB2 variant.
///
/// `hash = 5381; for c in key { hash = hash * 33 + c }` in wrapping 32-bit
/// arithmetic, where `c` is the byte read as a C `char`. magent is built for
/// x86, where `char` is signed, so bytes `>= 0x80` add a *negative* value
/// (`0xff` adds -1). The result drops the top bit (`& 0x7fffffff`).
///
/// magent hashes a NUL-terminated copy of the key, so hashing stops at the
/// first `0x00` byte. The memcached text protocol cannot carry such keys, but
/// we keep the rule so that the function is magent's for every input.
pub fn magent_hash(key: &[u8]) -> u32 {
    let mut hash: u32 = 5381;
    for &b in key {
        if b == 0 {
            break;
        }
        // `b as i8 as u32` sign-extends, which is what adding a signed char
        // to an unsigned int does in C.
        hash = hash.wrapping_mul(33).wrapping_add(b as i8 as u32);
    }
    hash & 0x7fff_ffff
}

/// Modula placement over `n` servers (weights ignored, as in magent).
#[derive(Clone, Debug)]
pub struct Modula {
    n: usize,
}

impl Modula {
    /// Build over `members`.
    pub fn new(members: &[Member]) -> Modula {
        Modula { n: members.len() }
    }

    /// Owner of `key`: `magent_hash(key) % n`. Returns 0 on an empty pool
    /// (the config layer refuses empty pools, so this never routes).
    pub fn server_for(&self, key: &[u8]) -> usize {
        self.server_for_hash(magent_hash(key))
    }

    /// Owner of a precomputed [`magent_hash`].
    pub fn server_for_hash(&self, hash: u32) -> usize {
        if self.n == 0 {
            return 0;
        }
        hash as usize % self.n
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pool(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                name: format!("127.0.0.1:{}", 10001 + i),
                weight: 1,
            })
            .collect()
    }

    /// Vectors derived by hand from the recurrence (and cross-checked with a
    /// three-line Python model, see the comments).
    #[test]
    fn magent_hash_vectors() {
        let table: &[(&[u8], u32)] = &[
            // No bytes: the seed.
            (b"", 5381),
            // 5381*33 + 97
            (b"a", 177_670),
            // 177670*33 + 98
            (b"ab", 5_863_208),
            // 5381*33 - 128: 0x80 is -128 as a signed char.
            (b"\x80", 177_445),
            // 5381*33 - 1
            (b"\xff", 177_572),
            // U+00E9 = C3 A9 -> -61, -87: (177573-61)*33 - 87
            ("é".as_bytes(), 5_857_809),
            // The classic djb2("hello"), wraps once at the 4th step.
            (b"hello", 261_238_937),
            // Raw 3126496216 has the top bit set; & 0x7fffffff drops it.
            (b"foo:bar", 979_012_568),
            (b"user:1000", 1_030_365_023),
            // Seven 0xff bytes: negative addends through several wraps
            // (raw 3026030270).
            (b"\xff\xff\xff\xff\xff\xff\xff", 878_546_622),
            // Cyrillic "ключ" in UTF-8, every byte >= 0x80 (raw 2918897873).
            ("ключ".as_bytes(), 771_414_225),
            // magent stops at the first NUL (C string).
            (b"ab\x00cd", 5_863_208),
        ];
        for (key, want) in table {
            assert_eq!(magent_hash(key), *want, "key {:?}", key);
        }
    }

    #[test]
    fn modula_vectors() {
        let three = Modula::new(&pool(3));
        let five = Modula::new(&pool(5));
        let table: &[(&[u8], usize, usize)] = &[
            (b"", 2, 1),
            (b"a", 1, 0),
            (b"ab", 2, 3),
            (b"\x80", 1, 0),
            ("é".as_bytes(), 0, 4),
            (b"hello", 2, 2),
            (b"foo:bar", 2, 3),
            (b"user:1000", 2, 3),
        ];
        for (key, want3, want5) in table {
            assert_eq!(three.server_for(key), *want3, "key {:?} over 3", key);
            assert_eq!(five.server_for(key), *want5, "key {:?} over 5", key);
        }
    }

    #[test]
    fn weights_are_ignored_and_empty_is_safe() {
        let mut heavy = pool(4);
        heavy[2].weight = 100;
        let a = Modula::new(&pool(4));
        let b = Modula::new(&heavy);
        for i in 0..1000 {
            let k = format!("k{i}");
            assert_eq!(a.server_for(k.as_bytes()), b.server_for(k.as_bytes()));
        }
        let empty = Modula::new(&[]);
        assert!(empty.is_empty());
        assert_eq!(empty.server_for(b"x"), 0);
    }

    proptest! {
        #[test]
        fn deterministic_and_in_range(key in proptest::collection::vec(any::<u8>(), 0..300), n in 1usize..64) {
            let m = Modula::new(&pool(n));
            let s = m.server_for(&key);
            prop_assert!(s < n);
            prop_assert_eq!(s, Modula::new(&pool(n)).server_for(&key));
            prop_assert!(magent_hash(&key) <= 0x7fff_ffff);
        }
    }
}
