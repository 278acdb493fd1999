//! Compiles `proto/` with protox (pure Rust), so a fresh machine needs no
//! system `protoc`. The descriptor set, comments included, is kept for gRPC
//! server reflection and the API reference.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "kiops/identity/v1/types.proto",
        "kiops/identity/v1/auth.proto",
        "kiops/identity/v1/user.proto",
        "kiops/identity/v1/organization.proto",
        "kiops/identity/v1/membership.proto",
        "kiops/identity/v1/invitation.proto",
        "kiops/identity/v1/approval.proto",
        "kiops/identity/v1/service_account.proto",
        "kiops/identity/v1/audit.proto",
        "kiops/identity/v1/platform.proto",
        // Not imported by our services, but compiled into the descriptor set so
        // that reflection clients (grpcurl) can decode error details.
        "google/rpc/status.proto",
        "google/rpc/error_details.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    // Source info (comments) stays in: reflection clients show it, and the
    // API reference (`reference.rs`) is rendered from it.
    let fds = protox::Compiler::new([&root])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(files.iter().map(|f| root.join(f)))?
        .file_descriptor_set();

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut encoded = Vec::new();
    prost::Message::encode(&fds, &mut encoded)?;
    std::fs::write(out_dir.join("kiops_descriptor.bin"), encoded)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // RPCs that a later release implements answer UNIMPLEMENTED by default.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
