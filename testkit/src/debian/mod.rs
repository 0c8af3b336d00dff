//! Test support shared with the end-to-end crate: generated OpenPGP keys, signed Debian
//! repositories in both layouts, and a loopback HTTP server with fault injection.
//!
//! ```ignore
//! let key = TestKey::generate("archive")?;
//! let repo = RepoBuilder::flat().kubeadm("1.31.2-1.1", "amd64").signed_by(&key).build()?;
//! let server = RepoServer::start().await?;
//! server.publish(&repo);
//! // sync server.url() with key.keyring()?
//! ```

mod index;
mod keys;
mod repo;
mod server;

pub use index::{compress, synthetic_index};
pub use keys::{
    KeyOptions, TestKey, binary_keyring, clearsign, clearsign_flooded, detached_signature,
};
pub use repo::{Layout, RepoBuilder, Repository, TestPackage};
pub use server::{Fault, RepoServer};
