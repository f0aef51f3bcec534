//! Which instances go first on scale-in: unhealthy and not-yet-in-service ones, then the
//! group's `termination_policy` rules in order (as an EC2 Auto Scaling group does).

use flotilla_config::TerminationPolicy;

pub struct Candidate<'a> {
    pub zone: Option<&'a str>,
    pub launch_version: u32,
    /// Launch order within the group (lower = older).
    pub seq: u64,
    pub in_service: bool,
}

/// Indices of `n` victims, in the order they were chosen.
pub fn pick(cands: &[Candidate<'_>], n: usize, rules: &[TerminationPolicy]) -> Vec<usize> {
    let mut left: Vec<usize> = (0..cands.len()).collect();
    let mut out = Vec::new();
    while out.len() < n && !left.is_empty() {
        let mut pool: Vec<usize> = left.iter().copied().filter(|&i| !cands[i].in_service).collect();
        if pool.is_empty() {
            pool = left.clone();
        }
        for rule in rules {
            if pool.len() <= 1 {
                break;
            }
            pool = match rule {
                TerminationPolicy::ZoneBalance => {
                    // Zone sizes count every instance still left, so scale-in evens zones out.
                    let size = |z: Option<&str>| left.iter().filter(|&&i| cands[i].zone == z).count();
                    let biggest = pool.iter().map(|&i| size(cands[i].zone)).max().unwrap_or(0);
                    pool.into_iter().filter(|&i| size(cands[i].zone) == biggest).collect()
                }
                TerminationPolicy::OldestLaunchTemplate => {
                    let oldest = pool.iter().map(|&i| cands[i].launch_version).min().unwrap_or(0);
                    pool.into_iter().filter(|&i| cands[i].launch_version == oldest).collect()
                }
                TerminationPolicy::OldestInstance => {
                    let oldest = pool.iter().map(|&i| cands[i].seq).min().unwrap_or(0);
                    pool.into_iter().filter(|&i| cands[i].seq == oldest).collect()
                }
                TerminationPolicy::NewestInstance => {
                    let newest = pool.iter().map(|&i| cands[i].seq).max().unwrap_or(0);
                    pool.into_iter().filter(|&i| cands[i].seq == newest).collect()
                }
            };
        }
        let Some(&victim) = pool.iter().min_by_key(|&&i| cands[i].seq) else { break };
        out.push(victim);
        left.retain(|&i| i != victim);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use TerminationPolicy::*;

    fn c(zone: &'static str, launch_version: u32, seq: u64, in_service: bool) -> Candidate<'static> {
        Candidate { zone: Some(zone), launch_version, seq, in_service }
    }

    #[test]
    fn unhealthy_first_then_zone_balance_then_oldest_template() {
        let cands =
            [c("a", 1, 1, true), c("a", 2, 2, true), c("a", 2, 3, true), c("b", 1, 4, true), c("b", 2, 5, false)];
        let rules = [ZoneBalance, OldestLaunchTemplate, OldestInstance];
        // 5 (not in service) first; then zone a (3 vs 1) and its oldest template (v1): 0;
        // then a and b are 2:1 → a again, oldest instance: 1.
        assert_eq!(pick(&cands, 3, &rules), vec![4, 0, 1]);
        assert_eq!(pick(&cands, 1, &[NewestInstance]), vec![4]);
        let healthy = [c("a", 1, 1, true), c("a", 1, 2, true)];
        assert_eq!(pick(&healthy, 1, &[NewestInstance]), vec![1]);
        assert_eq!(pick(&healthy, 5, &rules).len(), 2);
    }
}
