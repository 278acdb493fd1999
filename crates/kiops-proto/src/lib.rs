//! Generated code for the `kiops.identity.v1` gRPC API.
//!
//! Nothing here is written by hand: the `.proto` files under `proto/` are the
//! contract, and this crate only turns them into tonic/prost types.

#[allow(clippy::all, missing_docs)]
pub mod kiops {
    pub mod identity {
        pub mod v1 {
            tonic::include_proto!("kiops.identity.v1");
        }
    }
}

#[allow(clippy::all, missing_docs)]
pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// Everything of `kiops.identity.v1` under a short path.
pub use kiops::identity::v1;

/// Encoded `FileDescriptorSet` of every compiled file (with imports and their
/// comments as source info), for the gRPC reflection service and the API
/// reference.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kiops_descriptor.bin"));

/// The Markdown API reference rendered from the descriptor set's comments.
pub mod reference;
