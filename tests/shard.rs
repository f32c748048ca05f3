//! `--shard I/N` as the command line will take it, and the ownership rule
//! seen from outside: each uid has exactly one owner, the same one the API
//! server's `shardRange` selector would pick.

use clap::Parser;
use kvsync::shard::{Shard, fnv1a64};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "0/1")]
    shard: Shard,
}

#[test]
fn clap_takes_i_of_n() {
    let args = Args::try_parse_from(["kvsync", "--shard", "1/3"]).unwrap();
    assert_eq!(args.shard, Shard { index: 1, count: 3 });
    let args = Args::try_parse_from(["kvsync"]).unwrap();
    assert_eq!(args.shard, Shard::default());
}

#[test]
fn clap_reports_our_message_for_a_bad_shard() {
    let err = Args::try_parse_from(["kvsync", "--shard", "3/3"]).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("index must be below the count"), "{text}");
    let err = Args::try_parse_from(["kvsync", "--shard", "two/3"]).unwrap_err();
    assert!(err.to_string().contains("e.g. 0/2"), "{err}");
}

/// The rule the API server applies for `shardRange(object.metadata.uid, start, end)`:
/// `start <= fnv1a64(uid) < end`, bounds as written in the selector.
fn server_side_match(selector: &str, uid: &str) -> bool {
    let bounds: Vec<u128> = selector
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(|hex| u128::from_str_radix(hex.trim_start_matches("0x"), 16).unwrap())
        .collect();
    let hash = u128::from(fnv1a64(uid.as_bytes()));
    bounds[0] <= hash && hash < bounds[1]
}

#[test]
fn client_side_filter_agrees_with_the_server_side_selector() {
    let uids = [
        "",
        "a",
        "0b6c1f2e-9d4a-4c1e-8f3b-2a7d5e6c9b10",
        "ffffffff-ffff-4fff-bfff-ffffffffffff",
        "00000000-0000-4000-8000-000000000000",
        "7e3c0f58-2b1d-4a9e-9c47-5d8e1f0a3b62",
    ];
    for count in 1..=5 {
        for uid in uids {
            let owners: Vec<u32> = (0..count)
                .filter(|&index| Shard { index, count }.owns(uid))
                .collect();
            assert_eq!(owners.len(), 1, "{uid:?} of {count}");
            for index in 0..count {
                let shard = Shard { index, count };
                assert_eq!(shard.owns(uid), server_side_match(&shard.selector(), uid));
            }
        }
    }
}
