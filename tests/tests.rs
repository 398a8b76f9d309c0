//! All integration tests, built as one binary: the real `queryfs` binary,
//! real stores on disk, and real FUSE mounts.

mod cli;
mod crash;
mod exercise;
mod faults;
mod garage;
mod habits;
mod hostile;
mod json;
mod layers;
mod live;
mod mount;
mod names;
mod permissions;
mod programs;
mod qvfs;
mod s3;
mod semantics;
mod system;
mod tags;
mod util;
