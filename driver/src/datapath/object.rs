//! The eBPF object embedded at build time (`cargo xtask build-ebpf`) and its loading.

use aya::{Ebpf, EbpfLoader};

/// The object file produced by `cargo xtask build-ebpf`, embedded in the binary.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("NETCLAIM_EBPF_OBJECT"));

/// Capacities the maps are created with; the defaults fit validated claims, and
/// benchmarks raise `prefixes` to measure large tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub prefixes: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            prefixes: netclaim_common::MAX_PREFIXES,
        }
    }
}

/// Loads a fresh instance of every map and program definition in the object.
/// Nothing is attached or verified yet; programs are verified on `load()`.
pub fn load(sizes: MapSizes) -> Result<Ebpf, aya::EbpfError> {
    let mut loader = EbpfLoader::new();
    for name in netclaim_common::MAP_ROUTES_V4
        .iter()
        .chain(netclaim_common::MAP_ROUTES_V6.iter())
    {
        loader.map_max_entries(name, sizes.prefixes);
    }
    loader.map_max_entries(netclaim_common::MAP_ROUTE_HITS, sizes.prefixes);
    loader.load(OBJECT)
}
