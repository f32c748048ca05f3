//! `--shard I/N`: which bindings this replica reconciles.
//!
//! A binding belongs to the shard whose slice of the 64-bit hash space holds
//! the FNV-1a 64 hash of its `metadata.uid`. That is the hash the Kubernetes
//! 1.36 alpha `shardSelector` (`shardRange(object.metadata.uid, start, end)`,
//! KEP-5866, feature gate `ShardedListAndWatch`) computes on the API server:
//! FNV-1a 64 over the uid's bytes, compared as a number against the half-open
//! range `[start, end)`, with bounds between `0x0` and `0x10000000000000000`
//! (2^64). The KEP leaves the split to the client; we cut the space into N
//! equal contiguous slices, so [`Shard::selector`] is exactly the selector a
//! server-side sharded watch would send and this client-side filter can be
//! swapped for it without moving a single binding to another replica.

use std::fmt;
use std::str::FromStr;

/// One of N replicas' share of the bindings. `0/1` (the default) owns all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shard {
    /// Zero-based: `0..count`.
    pub index: u32,
    /// How many shards there are; at least 1.
    pub count: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

/// Why a `--shard` value was refused; each message says what is accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardParseError {
    /// Not two decimal numbers around a `/` (the value as given).
    #[error("--shard {0:?}: expected I/N with decimal digits only, e.g. 0/2 (shard 0 of 2)")]
    Format(String),
    /// A shard count of 0, which would own no binding (the value as given).
    #[error("--shard {0:?}: the shard count N must be at least 1")]
    ZeroCount(String),
    #[error("--shard {value:?}: the index must be below the count (0..={max} for {count} shards)")]
    /// An index at or past the count.
    IndexOutOfRange {
        /// The `--shard` value as given.
        value: String,
        /// The shard count it names.
        count: u32,
        /// The largest index that count allows (`count - 1`).
        max: u32,
    },
}

/// 2^64: the end of the hash space, one past the largest hash.
const SPACE: u128 = 1 << 64;

impl Shard {
    /// The hash range this shard owns, `[start, end)`. u128 because the last
    /// shard's end is 2^64 and `index * 2^64` overflows u64.
    pub fn range(&self) -> (u128, u128) {
        let bound = |i: u32| u128::from(i) * SPACE / u128::from(self.count);
        (bound(self.index), bound(self.index + 1))
    }

    /// Whether the binding with this `metadata.uid` is this replica's to reconcile.
    pub fn owns(&self, uid: &str) -> bool {
        let (start, end) = self.range();
        let hash = u128::from(fnv1a64(uid.as_bytes()));
        start <= hash && hash < end
    }

    /// The Lease that elects this shard's leader: shards are independent, so
    /// each needs its own; one shard keeps the plain name so turning sharding
    /// off again reuses the Lease every replica already knows.
    pub fn lease_name(&self, base: &str) -> String {
        if self.count == 1 {
            base.to_string()
        } else {
            format!("{base}-shard-{}-of-{}", self.index, self.count)
        }
    }

    /// The `shardSelector` of a server-side sharded list/watch owning exactly
    /// the same uids, in the form the API server documents (16-digit lowercase
    /// hex, the last end written as `0x10000000000000000`).
    pub fn selector(&self) -> String {
        let (start, end) = self.range();
        format!("shardRange(object.metadata.uid, '{start:#018x}', '{end:#018x}')")
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = ShardParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let format = || ShardParseError::Format(value.to_string());
        let (index, count) = value.split_once('/').ok_or_else(format)?;
        // u32::from_str takes a leading '+'; "+1/2" is a typo, not a shard.
        let number = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format());
            }
            s.parse::<u32>().map_err(|_| format())
        };
        let (index, count) = (number(index)?, number(count)?);
        if count == 0 {
            return Err(ShardParseError::ZeroCount(value.to_string()));
        }
        if index >= count {
            return Err(ShardParseError::IndexOutOfRange {
                value: value.to_string(),
                count,
                max: count - 1,
            });
        }
        Ok(Shard { index, count })
    }
}

/// FNV-1a, 64 bit (offset basis and prime from the FNV reference), the same
/// function as Go's `hash/fnv.New64a` that the API server uses.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic uuid-v4-shaped strings (splitmix64), so a failure
    /// reproduces.
    fn uids(n: usize) -> Vec<String> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        (0..n)
            .map(|_| {
                let (a, b) = (next(), next());
                format!(
                    "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                    a >> 32,
                    (a >> 16) & 0xffff,
                    a & 0xfff,
                    0x8000 | (b >> 48) & 0x3fff,
                    b & 0xffff_ffff_ffff
                )
            })
            .collect()
    }

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn every_uid_is_owned_by_exactly_one_shard() {
        let uids = uids(10_000);
        for count in 1..=7 {
            for uid in &uids {
                let owners = (0..count)
                    .filter(|&index| Shard { index, count }.owns(uid))
                    .count();
                assert_eq!(owners, 1, "{uid} with {count} shards");
            }
        }
    }

    #[test]
    fn four_shards_share_the_uids_evenly() {
        let uids = uids(10_000);
        for index in 0..4 {
            let shard = Shard { index, count: 4 };
            let owned = uids.iter().filter(|u| shard.owns(u)).count();
            assert!((2125..=2875).contains(&owned), "{shard} owns {owned}");
        }
    }

    #[test]
    fn ranges_tile_the_hash_space() {
        for count in 1..=7 {
            let mut next = 0;
            for index in 0..count {
                let (start, end) = Shard { index, count }.range();
                assert_eq!(start, next);
                assert!(end > start);
                next = end;
            }
            assert_eq!(next, SPACE);
        }
        let last = Shard {
            index: u32::MAX - 1,
            count: u32::MAX,
        };
        assert_eq!(last.range().1, SPACE);
    }

    #[test]
    fn ownership_is_by_the_uid_hash_range() {
        let uid = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
        let upper_half = fnv1a64(uid.as_bytes()) >= 1 << 63;
        assert_eq!(Shard { index: 1, count: 2 }.owns(uid), upper_half);
        assert_eq!(Shard { index: 0, count: 2 }.owns(uid), !upper_half);
        assert!(Shard::default().owns(uid));
    }

    #[test]
    fn selector_is_the_api_servers_shard_range() {
        assert_eq!(
            Shard { index: 0, count: 2 }.selector(),
            "shardRange(object.metadata.uid, '0x0000000000000000', '0x8000000000000000')"
        );
        assert_eq!(
            Shard { index: 1, count: 2 }.selector(),
            "shardRange(object.metadata.uid, '0x8000000000000000', '0x10000000000000000')"
        );
    }

    #[test]
    fn lease_names() {
        assert_eq!(Shard::default().lease_name("kvsync"), "kvsync");
        assert_eq!(
            Shard { index: 0, count: 2 }.lease_name("kvsync"),
            "kvsync-shard-0-of-2"
        );
    }

    #[test]
    fn parses_i_of_n() {
        assert_eq!("0/1".parse(), Ok(Shard { index: 0, count: 1 }));
        assert_eq!("3/4".parse(), Ok(Shard { index: 3, count: 4 }));
        assert_eq!(Shard { index: 3, count: 4 }.to_string(), "3/4");
    }

    #[test]
    fn parse_errors_say_what_is_accepted() {
        for bad in [
            "", "1", "1/", "/2", "a/2", "+1/2", "1/-2", " 1/2", "1/2/3", "0x1/2",
        ] {
            assert_eq!(
                bad.parse::<Shard>(),
                Err(ShardParseError::Format(bad.into())),
                "{bad:?}"
            );
        }
        assert_eq!(
            "99999999999/100000000000".parse::<Shard>(),
            Err(ShardParseError::Format("99999999999/100000000000".into()))
        );
        assert_eq!(
            "0/0".parse::<Shard>(),
            Err(ShardParseError::ZeroCount("0/0".into()))
        );
        let err = "2/2".parse::<Shard>().unwrap_err();
        assert_eq!(
            err,
            ShardParseError::IndexOutOfRange {
                value: "2/2".into(),
                count: 2,
                max: 1
            }
        );
        assert!(err.to_string().contains("0..=1"), "{err}");
        assert!(
            ShardParseError::Format("x".into())
                .to_string()
                .contains("e.g. 0/2")
        );
    }
}
