//! Finds the eBPF object built by `cargo xtask build-ebpf` and hands its path to the
//! driver, which embeds it. Without the object the build stops with the command to run.
//!
//! Also generates the kubelet gRPC code (registration, DRA v1/v1beta1, health v1alpha1)
//! from `proto/*.proto` with protox, so no `protoc` is needed on the build machine.

use std::path::PathBuf;

/// The project's .proto files, relative to the workspace's `proto/` directory.
const PROTOS: &[&str] = &[
    "pluginregistration.proto",
    "dra_v1.proto",
    "dra_v1beta1.proto",
    "health_v1alpha1.proto",
];

fn compile_protos() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let proto_dir = manifest.join("../proto");
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    for file in PROTOS {
        println!("cargo:rerun-if-changed={}", proto_dir.join(file).display());
    }
    let fds = match protox::compile(PROTOS, [&proto_dir]) {
        Ok(fds) => fds,
        Err(err) => panic!(
            "\n\nnetclaim: cannot parse the .proto files in {}:\n{err:?}\n",
            proto_dir.display()
        ),
    };
    if let Err(err) = tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)
    {
        panic!("\n\nnetclaim: gRPC code generation failed: {err}\n");
    }
}

/// NRI messages (`proto/nri.proto`): prost messages only. The ttrpc framing and the
/// service dispatch are hand-written in `src/nri/`, so no service code is generated.
fn compile_nri_proto() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let proto_dir = manifest.join("../proto");
    println!(
        "cargo:rerun-if-changed={}",
        proto_dir.join("nri.proto").display()
    );
    let fds = match protox::compile(["nri.proto"], [&proto_dir]) {
        Ok(fds) => fds,
        Err(err) => panic!(
            "\n\nnetclaim: cannot parse {}/nri.proto:\n{err:?}\n",
            proto_dir.display()
        ),
    };
    if let Err(err) = tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .compile_fds(fds)
    {
        panic!("\n\nnetclaim: NRI message code generation failed: {err}\n");
    }
}

fn main() {
    compile_protos();
    compile_nri_proto();
    println!("cargo:rerun-if-env-changed=NETCLAIM_EBPF_OBJECT");
    let object = match std::env::var_os("NETCLAIM_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            let manifest =
                PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
            manifest.join("../target/ebpf/netclaim.bpf.o")
        }
    };
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.is_file() {
        panic!(
            "\n\nnetclaim: the eBPF object {} does not exist.\n\
             Build it first with:\n\n    cargo xtask build-ebpf\n\n\
             (or point NETCLAIM_EBPF_OBJECT at a built object)\n",
            object.display()
        );
    }
    let object = object.canonicalize().unwrap_or(object);
    println!("cargo:rustc-env=NETCLAIM_EBPF_OBJECT={}", object.display());
}
