//! qfs-exercise: placeholder, being written.
fn main() {}
