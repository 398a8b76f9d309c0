//! The QVFS cluster container as a blob store: a blob is a cluster chain,
//! its location the chain's start cluster (see `crate::qvfs::container` for
//! the allocation, FAT and sync rules this relies on).

use std::io;

use super::{BlobCheck, BlobHash, BlobLoc, BlobRef, BlobStore, BlobUsage, DamagedBlob, Reclaim};
use crate::qvfs::container::{ChainRef, DamagedChain, Reclaim as ChainReclaim};
use crate::qvfs::Container;

/// A container location: a start cluster.
fn cluster(loc: BlobLoc) -> io::Result<u32> {
    u32::try_from(loc.0).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a cluster of a QVFS container", loc.0),
        )
    })
}

/// `refs` as chains; a location that is no cluster at all becomes a chain
/// that cannot exist (start past every FAT), so the check reports it.
fn chains(refs: &[BlobRef]) -> Vec<ChainRef> {
    refs.iter()
        .map(|r| ChainRef {
            start: cluster(r.loc).unwrap_or(u32::MAX),
            len: r.len,
        })
        .collect()
}

fn units(keep: &[u64]) -> Vec<u32> {
    keep.iter().filter_map(|&k| u32::try_from(k).ok()).collect()
}

fn damaged(d: DamagedChain) -> DamagedBlob {
    DamagedBlob {
        index: d.index,
        reason: d.reason,
        units: d.clusters.into_iter().map(u64::from).collect(),
        dangling: d.dangling.map(u64::from),
    }
}

impl BlobStore for Container {
    fn put(&self, _hash: &BlobHash, bytes: &[u8]) -> io::Result<BlobLoc> {
        self.write_chain(bytes).map(|c| BlobLoc(u64::from(c)))
    }

    fn get(&self, loc: BlobLoc, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_chain(cluster(loc)?, offset, buf)
    }

    fn has(&self, loc: BlobLoc) -> bool {
        cluster(loc).is_ok_and(|c| c != 0 && self.chain(c).is_ok())
    }

    fn delete(&self, loc: BlobLoc) -> io::Result<()> {
        self.free_chain(cluster(loc)?)
    }

    fn sync(&self) -> io::Result<()> {
        Container::sync(self)
    }

    fn sync_failures(&self) -> u64 {
        Container::sync_failures(self)
    }

    fn clear_sync_failure(&self) {
        Container::clear_sync_failure(self)
    }

    fn verify_reads(&self) -> bool {
        self.append_only()
    }

    fn check(&self, refs: &[BlobRef], keep: &[u64]) -> io::Result<BlobCheck> {
        let c = Container::check(self, &chains(refs), &units(keep))?;
        let orphans = self.with_fat(|fat| c.orphans(fat));
        Ok(BlobCheck {
            orphans: orphans.into_iter().map(u64::from).collect(),
            damaged: c.damaged.into_iter().map(damaged).collect(),
            units: self.cluster_count(),
        })
    }

    fn reclaim(&self, refs: &[BlobRef], keep: &[u64]) -> io::Result<Reclaim> {
        Ok(
            match Container::reclaim(self, &chains(refs), &units(keep))? {
                ChainReclaim::Freed(n) => Reclaim::Freed(n),
                ChainReclaim::Damaged(d) => Reclaim::Damaged(d.into_iter().map(damaged).collect()),
            },
        )
    }

    fn usage(&self) -> io::Result<BlobUsage> {
        let (qfi, qfd) = self.file_sizes()?;
        Ok(BlobUsage {
            bytes: qfi + qfd,
            units: self.cluster_count(),
            units_used: self.allocated_count(),
        })
    }
}
