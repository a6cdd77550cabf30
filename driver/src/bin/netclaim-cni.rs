//! `netclaim-cni`: the CNI plugin chained after the pod's network that starts
//! netclaim's hand-over at the CNI ADD ([`netclaim::cni`]).

fn main() {
    std::process::exit(netclaim::cni::plugin::main());
}
