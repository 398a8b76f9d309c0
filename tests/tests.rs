//! All integration tests, built as one binary: the real `queryfs` binary,
//! real stores on disk, and real FUSE mounts.

mod cli;
mod crash;
mod exercise;
mod faults;
mod hostile;
mod layers;
mod mount;
mod names;
mod permissions;
mod programs;
mod qvfs;
mod semantics;
mod system;
mod tags;
mod util;
