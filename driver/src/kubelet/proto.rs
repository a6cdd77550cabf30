//! Generated gRPC code for the kubelet protocols (see `proto/` and PROTOCOLS.md §1-3):
//! servers used by the driver, clients used by the fake kubelet in the tests.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod dra_v1 {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod dra_v1beta1 {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1beta1");
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod health_v1alpha1 {
    tonic::include_proto!("v1alpha1");
}
