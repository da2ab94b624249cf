//! Rebuilds the server when a migration is added: `sqlx::migrate!` embeds the files it finds,
//! and a new file is no change to any source cargo watches.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
