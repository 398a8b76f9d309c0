//! Images made by the exporter, then damaged on purpose: every planted fault
//! is reported by the check, and no mutation makes a reader panic, hang, or
//! allocate more than the image justifies.

use proptest::prelude::{any, prop_assert, prop_oneof, proptest, Just, ProptestConfig, Strategy};

use super::*;
use crate::qvfs::format::{RawEntry, ENTRY_SIZE};
use crate::qvfs::image::Image;
use crate::qvfs::MemDevice;
use crate::test_alloc;
use crate::vfs::Tuning;

fn mem_fs() -> Fs {
    crate::vfs::tests::Backend::Memory.fs_with(Tuning::default())
}

fn put(fs: &Fs, parent: u64, name: &str, data: &[u8]) -> u64 {
    let (i, fh) = fs
        .create(parent, name.as_bytes(), 0o644, Caller::current())
        .unwrap();
    fs.write(fh, 0, data).unwrap();
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    i.ino
}

/// root: docs/{hello.txt, big.bin (3 clusters), sub/}, a.txt, b.txt, a
/// 60-byte name.
fn sample() -> Fs {
    let fs = mem_fs();
    let me = Caller::current();
    let docs = fs.mkdir(ROOT, b"docs", 0o755, me).unwrap().ino;
    put(&fs, docs, "hello.txt", b"Hello, QVFS!\n");
    put(&fs, docs, "big.bin", &vec![7u8; 9000]);
    fs.mkdir(docs, b"sub", 0o755, me).unwrap();
    put(&fs, ROOT, "a.txt", b"aaaa");
    put(&fs, ROOT, "b.txt", b"bbbb");
    put(&fs, ROOT, &"L".repeat(60), b"long");
    fs
}

fn export_bytes(fs: &Fs, metadata: bool) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let qfi = dir.path().join("x.qfi");
    let opts = ExportOptions {
        from: "/".into(),
        skip_large: false,
        metadata,
    };
    let plan = plan_export(fs, &opts).unwrap();
    write_export(fs, plan, &qfi, false, &mut |_| {}).unwrap();
    (
        std::fs::read(&qfi).unwrap(),
        std::fs::read(dir.path().join("x.qfd")).unwrap(),
    )
}

fn open(qfi: &[u8], qfd: &[u8]) -> Image {
    Image::from_devices(
        Box::new(MemDevice::with_bytes(qfi.to_vec())),
        Box::new(MemDevice::with_bytes(qfd.to_vec())),
    )
    .unwrap()
}

/// Byte offset in `.qfd` of entry `slot` of the folder starting at `start`.
fn entry_at(img: &Image, start: i32, slot: usize) -> usize {
    let chain = img.chain_of(start, "test").unwrap();
    chain[slot / 64] as usize * 4096 + (slot % 64) * ENTRY_SIZE
}

fn find(img: &Image, path: &str) -> crate::qvfs::image::Item {
    img.resolve(path).unwrap().unwrap()
}

fn set_i32(b: &mut [u8], at: usize, v: i32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn clean_export_checks_clean() {
    let fs = sample();
    let (qfi, qfd) = export_bytes(&fs, true);
    let img = open(&qfi, &qfd);
    let r = img.check();
    assert!(r.is_clean(), "{:?}", r.problems);
    assert_eq!(r.files, 5 + 1); // with the metadata file
    assert_eq!(r.folders, 3);
    let long = find(&img, &"L".repeat(60));
    assert_eq!(long.long.as_deref(), Some("L".repeat(60).as_str()));
    assert!(long.short().len() <= 39);
}

#[test]
fn every_planted_fault_is_reported() {
    let fs = sample();
    let (qfi0, qfd0) = export_bytes(&fs, false);
    let img0 = open(&qfi0, &qfd0);
    let n = img0.cluster_count() as usize;
    let docs = find(&img0, "docs");
    let hello = find(&img0, "docs/hello.txt");
    let big = find(&img0, "docs/big.bin");
    let sub = find(&img0, "docs/sub");
    let a = find(&img0, "a.txt");
    let b = find(&img0, "b.txt");
    let long = find(&img0, &"L".repeat(60));
    let big_chain = img0.chain_of(big.entry.start, "big").unwrap();
    assert_eq!(big_chain.len(), 3);
    let fat_at = |c: u32| c as usize * 4;

    type Plant = Box<dyn Fn(&mut Vec<u8>, &mut Vec<u8>)>;
    let cases: Vec<(&str, Option<&str>, Plant)> = vec![
        ("bad-fat-value", None, {
            let c = big_chain[0];
            Box::new(move |i, _| {
                i[fat_at(c)..fat_at(c) + 4].copy_from_slice(&(n as u32 + 7).to_le_bytes())
            })
        }),
        ("loop", Some("/docs/big.bin"), {
            let (first, last) = (big_chain[0], big_chain[2]);
            Box::new(move |i, _| {
                i[fat_at(last)..fat_at(last) + 4].copy_from_slice(&first.to_le_bytes())
            })
        }),
        ("free-in-chain", Some("/docs/big.bin"), {
            let mid = big_chain[1];
            Box::new(move |i, _| {
                i[fat_at(mid)..fat_at(mid) + 4].copy_from_slice(&0u32.to_le_bytes())
            })
        }),
        ("cross-link", None, {
            let at = entry_at(&img0, 0, b.slot);
            let s = a.entry.start;
            Box::new(move |_, d| set_i32(d, at + 0x30, s))
        }),
        ("folder-cycle", Some("/docs/sub"), {
            let at = entry_at(&img0, docs.entry.start, sub.slot);
            let s = docs.entry.start;
            Box::new(move |_, d| set_i32(d, at + 0x30, s))
        }),
        ("bad-name", Some("/a?txt"), {
            let at = entry_at(&img0, 0, a.slot);
            Box::new(move |_, d| d[at + 2] = b'?')
        }),
        ("bad-name", None, {
            let at = entry_at(&img0, 0, b.slot);
            Box::new(move |_, d| d[at + 1] = 0xFF)
        }),
        ("duplicate-name", None, {
            let at = entry_at(&img0, 0, b.slot);
            Box::new(move |_, d| d[at + 1] = b'A')
        }),
        ("short-chain", Some("/docs/hello.txt"), {
            let at = entry_at(&img0, docs.entry.start, hello.slot);
            Box::new(move |_, d| set_i32(d, at + 0x34, i32::MAX))
        }),
        ("bad-size", Some("/docs/hello.txt"), {
            let at = entry_at(&img0, docs.entry.start, hello.slot);
            Box::new(move |_, d| set_i32(d, at + 0x34, -5))
        }),
        ("bad-chain", Some("/a.txt"), {
            let at = entry_at(&img0, 0, a.slot);
            Box::new(move |_, d| set_i32(d, at + 0x30, 1 << 30))
        }),
        ("bad-property", None, {
            let at = entry_at(&img0, 0, a.slot);
            Box::new(move |_, d| d[at] = 0x06)
        }),
        ("orphan-long-name", None, {
            let at = entry_at(&img0, 0, long.slot);
            Box::new(move |_, d| d[at + 1] ^= 0x20)
        }),
        (
            "truncated-data",
            None,
            Box::new(|_, d: &mut Vec<u8>| d.truncate(d.len() - 5000)),
        ),
        (
            "trailing-data",
            None,
            Box::new(|_, d: &mut Vec<u8>| d.extend_from_slice(&[1, 2, 3])),
        ),
        (
            "lost-clusters",
            None,
            Box::new(|i: &mut Vec<u8>, d: &mut Vec<u8>| {
                i.extend_from_slice(&u32::MAX.to_le_bytes());
                d.extend_from_slice(&[0u8; 4096]);
            }),
        ),
        ("entry-after-end", None, {
            let at = entry_at(&img0, docs.entry.start, sub.slot);
            Box::new(move |_, d| {
                let e = d[at..at + ENTRY_SIZE].to_vec();
                d[at..at + ENTRY_SIZE].fill(0);
                d[at + 2 * ENTRY_SIZE..at + 3 * ENTRY_SIZE].copy_from_slice(&e);
            })
        }),
    ];
    for (kind, path, plant) in cases {
        let (mut qfi, mut qfd) = (qfi0.clone(), qfd0.clone());
        plant(&mut qfi, &mut qfd);
        let r = open(&qfi, &qfd).check();
        assert!(
            r.has(kind, path),
            "planted {kind} at {path:?}, found {:#?}",
            r.problems
        );
        let warning_only = matches!(
            kind,
            "lost-clusters" | "trailing-data" | "entry-after-end" | "orphan-long-name"
        );
        assert_eq!(r.errors() == 0, warning_only, "{kind}: {:#?}", r.problems);
    }

    // Unreadable: a FAT length that is no multiple of 4, and a free root.
    let bad = Image::from_devices(
        Box::new(MemDevice::with_bytes(qfi0[..5].to_vec())),
        Box::new(MemDevice::with_bytes(qfd0.clone())),
    );
    assert!(bad.is_err());
    let mut free_root = qfi0.clone();
    free_root[..4].fill(0);
    assert!(Image::from_devices(
        Box::new(MemDevice::with_bytes(free_root)),
        Box::new(MemDevice::with_bytes(qfd0.clone())),
    )
    .is_err());
}

#[test]
fn import_refuses_a_damaged_image_and_writes_nothing() {
    let fs = sample();
    let (qfi, mut qfd) = export_bytes(&fs, true);
    let img0 = open(&qfi, &qfd);
    let b = find(&img0, "b.txt");
    let a = find(&img0, "a.txt");
    set_i32(&mut qfd, entry_at(&img0, 0, b.slot) + 0x30, a.entry.start);
    let target = mem_fs();
    let img = open(&qfi, &qfd);
    let err = import(&target, &img, &img.check(), "/", &mut |_| {}).unwrap_err();
    assert!(matches!(err, ExchangeError::Damaged(_)), "{err}");
    assert!(target.list(ROOT).unwrap().is_empty());
}

/// Reads everything an image offers, the way `ls -R` and `cat` would,
/// bounded against folder cycles.
fn read_everything(img: &Image) {
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![0i32];
    while let Some(start) = todo.pop() {
        if !seen.insert(start) || seen.len() > 10_000 {
            continue;
        }
        let Ok(items) = img.read_dir(start) else {
            continue;
        };
        for i in items {
            if i.is_dir() {
                todo.push(i.entry.start);
            } else {
                let mut got = 0u64;
                let _ = img.read_file(&i, 64 * 1024, |d| {
                    got += d.len() as u64;
                    Ok(())
                });
                assert!(got <= i.size());
            }
        }
    }
}

fn exercise(qfi: &[u8], qfd: &[u8]) {
    let base = test_alloc::live();
    test_alloc::reset_peak();
    if let Ok(img) = Image::from_devices(
        Box::new(MemDevice::with_bytes(qfi.to_vec())),
        Box::new(MemDevice::with_bytes(qfd.to_vec())),
    ) {
        let _ = img.check();
        read_everything(&img);
    }
    // The devices' own copies are 1x the image; the FAT, the owner table,
    // and one record per entry are the rest.
    let peak = test_alloc::peak_above(base) as usize;
    let allowed = 4 * qfi.len() + 6 * qfd.len() + (1 << 20);
    assert!(
        peak <= allowed,
        "peak {peak} bytes for an image of {} + {}",
        qfi.len(),
        qfd.len()
    );
}

#[test]
fn huge_claims_allocate_only_what_the_image_holds() {
    // A FAT of 2^20 clusters chained into one root folder, and a data file
    // of one cluster: the root "is" 4 GiB, the image is 4 MiB + 4 KiB.
    let n = 1u32 << 20;
    let mut qfi = Vec::with_capacity(n as usize * 4);
    for i in 0..n {
        let v = if i + 1 == n { u32::MAX } else { i + 1 };
        qfi.extend_from_slice(&v.to_le_bytes());
    }
    let mut qfd = vec![0u8; 4096];
    // One file claiming 2^31-1 bytes from cluster 5.
    let e = RawEntry {
        property: crate::qvfs::format::prop::FILE,
        name: crate::qvfs::format::name_field("huge"),
        created: 0,
        modified: 0,
        start: 5,
        size: i32::MAX,
    };
    qfd[..64].copy_from_slice(&e.encode());
    exercise(&qfi, &qfd);
    let r = open(&qfi, &qfd).check();
    assert!(r.has("truncated-data", None));
    assert!(r.has("cross-link", Some("/huge")));
}

#[derive(Debug, Clone)]
enum Mutation {
    Fat { at: u32, val: u32 },
    Byte { at: u32, val: u8 },
    Field { entry: u32, field: u8, val: i32 },
    TruncQfi(u32),
    TruncQfd(u32),
    CopyEntry { from: u32, to: u32 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let val = prop_oneof![Just(0u32), Just(u32::MAX), 0u32..64, any::<u32>()];
    let field = prop_oneof![Just(i32::MAX), Just(-1), Just(0), 0i32..64, any::<i32>()];
    prop_oneof![
        (any::<u32>(), val).prop_map(|(at, val)| Mutation::Fat { at, val }),
        (any::<u32>(), any::<u8>()).prop_map(|(at, val)| Mutation::Byte { at, val }),
        (any::<u32>(), 0u8..4, field).prop_map(|(entry, field, val)| Mutation::Field {
            entry,
            field,
            val
        }),
        any::<u32>().prop_map(Mutation::TruncQfi),
        any::<u32>().prop_map(Mutation::TruncQfd),
        (any::<u32>(), any::<u32>()).prop_map(|(from, to)| Mutation::CopyEntry { from, to }),
    ]
}

fn apply(m: &Mutation, qfi: &mut Vec<u8>, qfd: &mut Vec<u8>) {
    let entries = qfd.len() / ENTRY_SIZE;
    match *m {
        Mutation::Fat { at, val } if qfi.len() >= 4 => {
            let i = (at as usize % (qfi.len() / 4)) * 4;
            qfi[i..i + 4].copy_from_slice(&val.to_le_bytes());
        }
        Mutation::Byte { at, val } if !qfd.is_empty() => {
            let i = at as usize % qfd.len();
            qfd[i] = val;
        }
        Mutation::Field { entry, field, val } if entries > 0 => {
            let at = (entry as usize % entries) * ENTRY_SIZE;
            let off = [0x28, 0x2C, 0x30, 0x34][field as usize];
            set_i32(qfd, at + off, val);
        }
        Mutation::TruncQfi(k) => qfi.truncate(k as usize % (qfi.len() + 1)),
        Mutation::TruncQfd(k) => qfd.truncate(k as usize % (qfd.len() + 1)),
        Mutation::CopyEntry { from, to } if entries > 0 => {
            let (f, t) = (
                (from as usize % entries) * ENTRY_SIZE,
                (to as usize % entries) * ENTRY_SIZE,
            );
            let e = qfd[f..f + ENTRY_SIZE].to_vec();
            qfd[t..t + ENTRY_SIZE].copy_from_slice(&e);
        }
        _ => {}
    }
}

fn fuzz_base() -> &'static (Vec<u8>, Vec<u8>) {
    static BASE: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    BASE.get_or_init(|| export_bytes(&sample(), true))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn mutated_images_never_hurt(muts in proptest::collection::vec(mutation(), 1..8)) {
        let (mut qfi, mut qfd) = fuzz_base().clone();
        for m in &muts {
            apply(m, &mut qfi, &mut qfd);
        }
        exercise(&qfi, &qfd);
        // What the check passes, an import takes without failing.
        if let Ok(img) = Image::from_devices(
            Box::new(MemDevice::with_bytes(qfi.clone())),
            Box::new(MemDevice::with_bytes(qfd.clone())),
        ) {
            let r = img.check();
            let target = mem_fs();
            let res = import(&target, &img, &r, "/", &mut |_| {});
            if r.errors() == 0 {
                prop_assert!(res.is_ok(), "clean-enough image failed to import: {:?} {:?}", res.err(), r.problems);
            } else {
                prop_assert!(matches!(res, Err(ExchangeError::Damaged(_))));
            }
        }
    }
}
