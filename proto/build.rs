//! Compiles the worker and agent contracts with `protox`, a pure-Rust protobuf
//! compiler, so building needs no `protoc` binary on the machine.

use std::error::Error;

/// The contracts, relative to this crate; also the include root.
const PROTOS: &[&str] = &["worker.proto", "agent.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    // protox resolves google/protobuf/*.proto from its bundled copies.
    let descriptors = protox::compile(PROTOS, ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
