//! queryfs: a database you mount as a drive.
//!
//! # Architecture
//! Data flows down; nothing reaches up.
//!
//! 1. `cli` (the binary, `src/main.rs` and `src/cli/`): clap commands, human
//!    and `--json` output, progress bars, exit codes. The only user of
//!    `anyhow` and `indicatif`.
//! 2. [`exchange`]: export to and import from plain QVFS images, through
//!    the core and the QVFS module.
//! 3. [`fuse`]: a thin adapter from fuser calls to the core. The only user
//!    of `fuser`.
//! 4. [`vfs`]: the filesystem core. Protocol-neutral operations, the open
//!    file table, write buffers, the durability protocol. Errors are
//!    [`error::FsError`], mapped to errno in exactly one place.
//! 5. [`query`]: query folders: tag syntax, `/by-tag` paths compiled to SQL
//!    with bound parameters, entry naming. The virtual nodes themselves live
//!    in `vfs::virt`.
//! 6. [`store`]: a store folder: opening, the single-owner lock, recovery,
//!    `fsck`, `gc`, `info`.
//! 7. [`meta`]: the only place SQL runs: connection setup, migrations from
//!    `migrations/`, statements from `queries/meta/`.
//! 8. [`qvfs`]: the QVFS cluster format (FAT + clusters) through one small
//!    device trait; it holds blob bytes, and serves plain images.
//!
//! Content: a file is a list of chunks (64 KiB by default); each chunk is a
//! blob named by its BLAKE3 hash and stored once with a reference count.
//! Small blobs live inline in SQLite, the rest in container cluster chains.

pub mod blob;
pub mod error;
pub mod exchange;
pub mod fuse;
pub mod meta;
pub mod names;
pub mod query;
pub mod qvfs;
pub mod store;
pub mod types;
pub mod vfs;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod test_alloc;
