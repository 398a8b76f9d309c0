//! queryfs: a database you mount as a drive.
//!
//! # Layers
//! Data flows down; nothing reaches up. Each module uses only modules of
//! its own layer or below (`tests/layers.rs` checks it against this list).
//!
//! 1. `cli` (the binary, `src/main.rs` and `src/cli/`): clap commands, human
//!    and `--json` output, progress bars, exit codes. The only user of
//!    `anyhow` and `indicatif`.
//! 2. [`exchange`]: export to and import from plain QVFS images, through
//!    the core and the QVFS module.
//! 3. [`fuse`]: a thin adapter from fuser calls to the view. The only user
//!    of `fuser`.
//! 4. [`store`]: the composition root. Opens a store folder (the
//!    single-owner lock, recovery, the space reserve), builds the two
//!    backends and hands them to the core; `gc`, `fsck` and `info` run
//!    over the same two backends.
//! 5. [`view`]: the mounted tree, where a request enters: each one is
//!    sent once, by its inode numbers ([`types::Ino`]), to the query
//!    folders or to the core.
//! 6. [`folders`]: the query folders (`/by-tag`, `/sql`, `/queries`,
//!    windows onto directories made through them): virtual nodes and
//!    listings, over the core's narrow port ([`folders::Tree`]: read the
//!    tree, change it as a user would, tag a file, run a query).
//! 7. [`vfs`]: the filesystem core, the real tree only. Protocol-neutral
//!    operations, the open file table, write buffers, the durability
//!    protocol, users' SQL in the sandbox, split by concern (see its
//!    module doc). Errors are [`error::FsError`], mapped to errno in
//!    exactly one place.
//! 8. [`error`]: the core's error type and its errno mapping.
//! 9. [`query`]: tag syntax, `/by-tag` paths compiled to SQL with bound
//!    parameters, entry naming.
//! 10. [`blob`]: the blob-store port ([`blob::BlobStore`]) and its
//!     implementations: the QVFS container and memory.
//! 11. [`meta`]: the metadata-store port ([`meta::MetaStore`]) and its
//!     implementation on SQLite (a file, or `:memory:`): the only place SQL
//!     runs; migrations from `migrations/`, statements from `queries/meta/`,
//!     the `/sql` sandbox.
//! 12. [`qvfs`]: the QVFS cluster format (FAT + clusters) through one small
//!     device trait; it holds blob bytes, and serves plain images.
//! 13. [`types`], [`names`]: the vocabulary every layer shares (`Attr`,
//!     `FileKind`, `Ino`, `BlobHash`, `BlobLoc`; name encodings).
//!
//! Content: a file is a list of chunks (64 KiB by default); each chunk is a
//! blob named by its BLAKE3 hash and stored once with a reference count.
//! Small blobs live inline in SQLite, the rest in container cluster chains.

pub mod blob;
pub mod error;
pub mod exchange;
pub mod folders;
pub mod fuse;
pub mod meta;
pub mod names;
pub mod query;
pub mod qvfs;
pub mod store;
pub mod types;
pub mod vfs;
pub mod view;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod test_alloc;
