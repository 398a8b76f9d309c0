//! QVFS: the FAT32-like two-file cluster format (`.qfi` FAT + `.qfd`
//! clusters), used both as the store's blob container and for plain images.
//!
//! The format in brief (the full normative description is
//! `docs/qvfs-format.md`): all integers little-endian; `.qfi` is an array of
//! u32 FAT entries, one per 4096-byte cluster of `.qfd`; `0` is free,
//! `0xFFFFFFFF` ends a chain, any other value is the next cluster. Cluster 0
//! is the root folder of a plain image.
//!
//! The store's internal container is itself a valid plain image: cluster 0
//! starts with a `0x00` byte (an empty root folder to a plain reader) followed
//! by the container header that ties it to its SQLite database.

pub mod container;
pub mod device;
pub mod format;
pub mod image;

pub use container::{
    clusters_for, walk_chain, walk_chain_partial, ChainError, Container, CLUSTER_SIZE, FAT_EOC,
    FAT_FREE,
};
pub use device::{Device, MemDevice};
