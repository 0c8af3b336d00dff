//! Elemental OS images and the stamp each one carries.

/// An Elemental OS image: its `imageUri` and the stamp its `/etc/os-release` carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsImage {
    /// `oci://registry.example/os@sha256:<64 hex>`.
    pub uri: String,
    /// The build's stamp, e.g. `os-v1-31-1-b2`.
    pub stamp: String,
}

impl OsImage {
    /// The `build`-th build of the OS for Kubernetes v1.31.1: digest `<build as 2 hex>` × 32,
    /// stamp `os-v1-31-1-b<build>`.
    pub fn build(build: u8) -> Self {
        Self::of_version("v1.31.1", build)
    }

    /// The `build`-th build for `version` (`vX.Y.Z`).
    pub fn of_version(version: &str, build: u8) -> Self {
        let digest = format!("{build:02x}").repeat(32);
        Self {
            uri: format!("oci://registry.example/os@sha256:{digest}"),
            stamp: format!("os-{}-b{build}", version.replace('.', "-")),
        }
    }

    /// What a Node booted from this image reports as `status.nodeInfo.osImage`.
    pub fn os_release(&self) -> String {
        os_release(&self.stamp)
    }
}

/// The `PRETTY_NAME` of an image stamped `stamp` (the kubelet's `osImage`).
pub fn os_release(stamp: &str) -> String {
    format!("Elemental OS {stamp}")
}
