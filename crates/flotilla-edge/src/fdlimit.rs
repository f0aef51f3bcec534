//! Open-file descriptors, which every client connection, target connection, cached file and
//! listener costs one of.
//!
//! Many systems start a process with a soft `RLIMIT_NOFILE` of 1024 (systemd's default, and
//! most shells'). Past it `accept` fails with EMFILE, new connections wait in the kernel's queue
//! and normal clients stall for seconds while a slowloris flood holds the descriptors — measured:
//! 1 100 slow connections against a 1024 soft limit left 605 of 1 000 fresh requests waiting
//! over 3 s. So the edge raises the soft limit to the hard one at start (as HAProxy, nginx's
//! `worker_rlimit_nofile` and Go's runtime do), and caps `max_connections` to what the limit
//! can hold, so an overload waits at the connection cap with descriptors left for targets.

/// Descriptors kept outside the connection budget: listeners, the admin API, health checks,
/// the disk cache, logs, the fleet's children's pipes.
const RESERVE: u64 = 256;

/// `rlim_t` is `u64` on 64-bit Linux but not on every target.
#[allow(clippy::unnecessary_cast)]
fn as_u64(v: libc::rlim_t) -> u64 {
    v as u64
}

/// The soft and hard limits after raising the soft one to the hard one (capped at 1 M: some
/// kernels report "unlimited", and tables sized from it would be huge). Errors leave it as is.
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write/read only the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let target = lim.rlim_max.min(1 << 20);
    if lim.rlim_cur < target {
        let raised = libc::rlimit { rlim_cur: target, rlim_max: lim.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim.rlim_cur = target;
    }
    Ok((as_u64(lim.rlim_cur), as_u64(lim.rlim_max)))
}

/// The current soft limit, if it can be read.
fn soft_limit() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes only the struct passed.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(as_u64(lim.rlim_cur))
}

/// `max_connections` as the descriptor limit allows: each client connection may hold a target
/// connection too, so two descriptors each, after the reserve.
pub(crate) fn connection_cap(configured: usize) -> usize {
    let Some(soft) = soft_limit() else { return configured };
    cap_for(configured, soft)
}

fn cap_for(configured: usize, soft: u64) -> usize {
    let fits = (soft.saturating_sub(RESERVE) / 2).max(16);
    let cap = (configured as u64).min(fits) as usize;
    if cap < configured {
        tracing::warn!(
            configured,
            cap,
            open_file_limit = soft,
            "edge.limits.max_connections is more than the open-file limit allows; raise the limit \
             (systemd LimitNOFILE=, ulimit -n) to use it"
        );
    }
    cap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_for_targets_and_the_reserve() {
        assert_eq!(cap_for(10_000, 1024), 384);
        assert_eq!(cap_for(10_000, 65_536), 10_000);
        assert_eq!(cap_for(100, 1024), 100);
        assert_eq!(cap_for(10_000, 100), 16, "never below a usable floor");
    }

    #[test]
    fn raising_never_lowers_the_limit() {
        let before = soft_limit().unwrap();
        let (soft, hard) = raise_nofile().unwrap();
        assert!(soft >= before && soft <= hard.max(soft));
    }
}
