//! Kill the mount in the middle of a write-heavy workload, many times, and
//! check that the store recovers and that every fsync'd file survived.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::*;

/// Writes files of random sizes, fsyncing most, until told to stop or the
/// mount dies. Records each file only after its fsync returned.
fn workload(
    root: std::path::PathBuf,
    round: u64,
    durable: Arc<Mutex<BTreeMap<String, u64>>>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let seed = round * 1_000_000 + i;
        let len = match i % 4 {
            0 => 100,
            1 => 70_000,
            2 => 1_500_000,
            _ => (seed * 7919 % 3_000_000) as usize,
        };
        let name = format!("r{round}-f{i}");
        let path = root.join(&name);
        let data = pattern(seed, len);
        let Ok(mut f) = File::create(&path) else {
            return;
        };
        // Odd-sized writes.
        for piece in data.chunks(50_001) {
            if f.write_all(piece).is_err() {
                return;
            }
        }
        if i % 5 != 4 {
            if f.sync_all().is_err() {
                return;
            }
            durable.lock().unwrap().insert(name.clone(), seed);
        }
        drop(f);
        // Delete some older durable files (forget them first).
        if i % 7 == 6 {
            let victim = durable.lock().unwrap().keys().next().cloned();
            if let Some(v) = victim {
                durable.lock().unwrap().remove(&v);
                if fs::remove_file(root.join(&v)).is_err() {
                    return;
                }
            }
        }
        i += 1;
    }
}

fn len_for(seed: u64) -> usize {
    let i = seed % 1_000_000;
    match i % 4 {
        0 => 100,
        1 => 70_000,
        2 => 1_500_000,
        _ => (seed * 7919 % 3_000_000) as usize,
    }
}

#[test]
fn sigkill_during_writes_loses_nothing_fsynced() {
    let t = tempfile::tempdir().unwrap();
    let mut m = Mount::new(t.path());
    let durable: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let rounds = 24u64;
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let w = {
            let (root, d, s) = (m.mp.clone(), durable.clone(), stop.clone());
            std::thread::spawn(move || workload(root, round, d, s))
        };
        // A random moment: 30..600 ms into the workload.
        let delay = 30 + (pattern(round + 777, 8)[0] as u64 * 570 / 255);
        std::thread::sleep(Duration::from_millis(delay));
        m.kill();
        stop.store(true, Ordering::Relaxed);
        w.join().unwrap();
        m.clear_dead();

        // The store opens; gc reclaims leftovers; fsck is then clean.
        qfs_ok(&m.store, &["gc"]);
        let o = qfs(&m.store, &["fsck", "--verify"]);
        assert!(
            o.status.success(),
            "round {round}: fsck after gc: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        // Every fsync'd file reads back exactly.
        m.start();
        for (name, &seed) in durable.lock().unwrap().iter() {
            let got =
                fs::read(m.path(name)).unwrap_or_else(|e| panic!("round {round}: {name}: {e}"));
            assert!(
                got == pattern(seed, len_for(seed)),
                "round {round}: {name} differs"
            );
        }
    }
    assert!(
        durable.lock().unwrap().len() > 10,
        "the workload made too few durable files"
    );
    m.stop();
}
