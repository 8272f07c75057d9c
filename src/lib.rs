//! stratus: a folder kept in sync with object storage, served through FUSE.
//!
//! Dependencies point one way: `cli` and `daemon` assemble the parts; `fuse` translates
//! kernel requests into calls on `control` and `vfs`; `vfs` and `sync` never import each
//! other and meet in `store` (the database) and at `cache::FileGate` (the block cache's
//! hand-off, which `daemon` wires); `cache` (the block cache, which fetches file data
//! itself) sits on `store` and `remote`, which are leaves; `types` holds the vocabulary
//! every layer shares.

pub mod cache;
pub mod cli;
pub mod control;
pub mod daemon;
pub mod fuse;
pub mod remote;
pub mod store;
pub mod sync;
pub mod types;
pub mod vfs;
pub mod web;
