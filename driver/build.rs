//! Finds the eBPF object built by `cargo xtask build-ebpf` and hands its path to the
//! driver, which embeds it. Without the object the build stops with the command to run.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=NETCLAIM_EBPF_OBJECT");
    let object = match std::env::var_os("NETCLAIM_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
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
