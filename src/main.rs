//! The `queryfs` command.

mod cli;

fn main() {
    // Before SQLite is first used: query sandboxes get a heap limit of
    // their own (see `meta::sqlmem`).
    queryfs::meta::sqlmem::install();
    std::process::exit(cli::main());
}
