//! The controllers, one module each. The binary hands [`ALL`] to the manager, which knows none of
//! them by name. `controllers/README.md` has the checklist for adding one.

pub mod debian_source;
pub mod images;
pub mod machine_image;
pub mod machine_image_syncer;
pub mod machine_image_template;
pub mod plan;
pub mod rollout;
pub mod upgrader;

use crate::runtime::Registration;

/// Every controller this build ships.
pub const ALL: &[Registration] = &[
    debian_source::REGISTRATION,
    machine_image::REGISTRATION,
    machine_image_template::REGISTRATION,
    machine_image_syncer::REGISTRATION,
    plan::REGISTRATION,
    upgrader::CLUSTER_CLASS_REGISTRATION,
    upgrader::IN_CLUSTER_REGISTRATION,
];
