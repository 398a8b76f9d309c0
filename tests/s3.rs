//! The S3 blob store on a real three-node Garage cluster (replication
//! factor 3): the blob-store contract, the durability barrier, a node lost
//! and the whole cluster lost.

use std::path::PathBuf;
use std::time::Duration;

use queryfs::blob::s3::{S3Blobs, S3Config};
use queryfs::blob::{check_contract, BlobStore};
use queryfs::types::{BlobHash, BlobLoc};

use crate::garage::Garage;

fn on(g: &Garage, node: usize, writer: u64, cache: Option<(PathBuf, u64)>) -> S3Blobs {
    let mut cfg = S3Config::new("s3://queryfs/t", writer);
    cfg.endpoint = Some(g.endpoint(node));
    cfg.region = Some("garage".into());
    cfg.credentials = Some(g.credentials());
    cfg.cache = cache;
    cfg.retry_for = Duration::from_secs(5);
    S3Blobs::open(&cfg).unwrap()
}

/// The blob-store contract, the durability barrier and node loss, on a
/// real three-node Garage cluster (replication factor 3).
#[test]
fn s3_store_on_a_garage_cluster_keeps_the_contract_and_survives_a_node() {
    let mut g = Garage::start();
    let cache = g.path().join("cache");
    let s = on(&g, 0, 1, Some((cache, 1 << 20)));
    check_contract(&s);
    // What a sync acknowledged is read back by another session through
    // another node, byte for byte.
    let blobs: Vec<(BlobLoc, Vec<u8>)> = (0..40u32)
        .map(|i| {
            let b: Vec<u8> = (0..(i * 997 % 70_000)).map(|k| (k ^ i) as u8).collect();
            (s.put(&BlobHash::of(&b), &b).unwrap(), b)
        })
        .collect();
    s.sync().unwrap();
    let other = on(&g, 1, 2, None);
    for (loc, b) in &blobs {
        let mut got = vec![0u8; b.len()];
        other.get(*loc, 0, &mut got).unwrap();
        assert_eq!(&got, b);
    }
    // Two sessions never share a location.
    let x = other.put(&BlobHash::of(b"x"), b"x").unwrap();
    assert!(blobs.iter().all(|(l, _)| *l != x));
    // One node killed: puts, syncs and reads go on through the others.
    g.kill_node(2);
    let more: Vec<(BlobLoc, Vec<u8>)> = (0..20u32)
        .map(|i| {
            let b = vec![i as u8; 5_000 + i as usize];
            (s.put(&BlobHash::of(&b), &b).unwrap(), b)
        })
        .collect();
    s.sync().unwrap();
    for (loc, b) in blobs.iter().chain(&more) {
        let mut got = vec![0u8; b.len()];
        other.get(*loc, 0, &mut got).unwrap();
        assert_eq!(&got, b);
    }
    g.start_node(2);
    // Every node down: a sync fails with a clear error, keeps failing
    // (sticky) and keeps the bytes; once the cluster is back and the
    // failure cleared, the same bytes are stored.
    for i in 0..3 {
        g.kill_node(i);
    }
    let late = s.put(&BlobHash::of(b"late"), b"late").unwrap();
    let e = s.sync().unwrap_err();
    assert!(e.to_string().contains("object store"), "{e}");
    assert_eq!(s.sync_failures(), 1);
    for i in 0..3 {
        g.start_node(i);
    }
    assert!(s.sync().is_err(), "a failed sync is sticky");
    s.clear_sync_failure();
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while let Err(e) = s.sync() {
        assert!(
            std::time::Instant::now() < until,
            "cluster did not come back: {e}"
        );
        s.clear_sync_failure();
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut got = [0u8; 4];
    on(&g, 0, 3, None).get(late, 0, &mut got).unwrap();
    assert_eq!(&got, b"late");
}
