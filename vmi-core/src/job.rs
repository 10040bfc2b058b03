//! Where this process stands in a job of several processes: its rank, the job's size, and
//! every rank's key and host, learned from the launcher's environment so that a program
//! needs no launcher of its own (issue: launch and scale).
//!
//! Sources, first found wins:
//! - vmi's own variables (the documented fallback for tests and small runs): `VMI_RANK`,
//!   `VMI_PROCS`, optionally `VMI_JOB` (a name shared by the job's processes, default `vmi`)
//!   and `VMI_HOSTS`;
//! - Open MPI's `mpirun` (`OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`; the job's name is
//!   PMIx's namespace `PMIX_NAMESPACE`, unique per run);
//! - a PMI launcher (MPICH's Hydra, Slurm's PMI): `PMI_RANK`, `PMI_SIZE`.
//!
//! Rank `r`'s key is `<job>.<r>`. Its host comes from `VMI_HOSTS` when set: one host for all
//! ranks, one per rank (comma-separated), or `host*count` blocks in rank order
//! (`nodeA*4,nodeB*4`). Under `mpirun` without it, [`Job::from_env`] asks PMIx (put, fence,
//! get: see `pmix`). Otherwise every rank is on `localhost`.
#![deny(unsafe_code)]

/// What went wrong reading the job's environment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    /// A variable has a value that cannot be used.
    #[error("environment variable {var}='{value}': {reason}")]
    BadVariable {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// What is expected.
        reason: String,
    },
    /// Only one of a rank and a size was given.
    #[error(
        "{given} is set but {missing} is not; a job needs both (the rank of this process and the number of processes)"
    )]
    Incomplete {
        /// The variable that is set.
        given: &'static str,
        /// The one that is missing.
        missing: &'static str,
    },
}

/// Which launcher described the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobSource {
    /// `VMI_RANK` / `VMI_PROCS`.
    Vmi,
    /// Open MPI's `mpirun`.
    OpenMpi,
    /// A PMI launcher (`PMI_RANK` / `PMI_SIZE`).
    Pmi,
}

/// This process's place in a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// This process's rank, `0..size`.
    pub rank: u32,
    /// The number of processes.
    pub size: u32,
    /// The job's name, shared by its processes (part of every rank's key).
    pub id: String,
    /// Where the description came from.
    pub source: JobSource,
    /// Host of each rank (one entry for all when they share one).
    hosts: Vec<String>,
}

/// Most processes in a job.
pub const MAX_PROCS: u32 = 1 << 20;

impl Job {
    /// The job this process belongs to, from its environment; `None` when no launcher
    /// describes one.
    ///
    /// Under a PMIx launcher (`PMIX_RANK` set, as `mpirun` does) and with no `VMI_HOSTS`,
    /// the hosts come from PMIx: each process puts the host it is reached at (its host name,
    /// or `VMI_ADVERTISE_HOST`), fences once, and gets every peer's. `VMI_PMIX=0` skips this.
    /// Where PMIx cannot be used the reason is logged and every rank is taken to be on this
    /// host.
    pub fn from_env() -> Result<Option<Job>, JobError> {
        let var = |v: &str| std::env::var(v).ok();
        let mut job = Job::from_vars(&var)?;
        if let Some(j) = job.as_mut()
            && j.source == JobSource::OpenMpi
            && var("VMI_HOSTS").is_none()
            && var("PMIX_RANK").is_some()
            && var("VMI_PMIX").as_deref() != Some("0")
        {
            let host = var("VMI_ADVERTISE_HOST")
                .unwrap_or_else(|| host_name().unwrap_or_else(|| "localhost".into()));
            match crate::pmix::exchange(&host, j.size) {
                Ok(x) if x.rank == j.rank && x.hosts.len() == j.size as usize => {
                    log::info!(
                        "learned the hosts of {} ranks from PMIx (this one: {host})",
                        j.size
                    );
                    j.hosts = x.hosts;
                }
                Ok(x) => log::warn!(
                    "PMIx says rank {} with {} hosts, the environment rank {} of {}; assuming every rank is on this host",
                    x.rank,
                    x.hosts.len(),
                    j.rank,
                    j.size
                ),
                Err(e) => log::warn!(
                    "PMIx wire-up not used: {e}; assuming every rank is on this host (set VMI_HOSTS otherwise)"
                ),
            }
        }
        Ok(job)
    }

    /// As [`Job::from_env`], reading variables through `env`.
    pub fn from_vars(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Job>, JobError> {
        let sources: [(JobSource, &'static str, &'static str); 3] = [
            (JobSource::Vmi, "VMI_RANK", "VMI_PROCS"),
            (
                JobSource::OpenMpi,
                "OMPI_COMM_WORLD_RANK",
                "OMPI_COMM_WORLD_SIZE",
            ),
            (JobSource::Pmi, "PMI_RANK", "PMI_SIZE"),
        ];
        for (source, rank_var, size_var) in sources {
            let (rank, size) = match (env(rank_var), env(size_var)) {
                (None, None) => continue,
                (Some(_), None) => {
                    return Err(JobError::Incomplete {
                        given: rank_var,
                        missing: size_var,
                    });
                }
                (None, Some(_)) => {
                    return Err(JobError::Incomplete {
                        given: size_var,
                        missing: rank_var,
                    });
                }
                (Some(r), Some(s)) => (r, s),
            };
            let size = number(size_var, &size, 1, MAX_PROCS)?;
            let rank = number(rank_var, &rank, 0, size - 1)?;
            let id = match source {
                JobSource::Vmi => env("VMI_JOB").unwrap_or_else(|| "vmi".into()),
                JobSource::OpenMpi => env("VMI_JOB")
                    .or_else(|| env("PMIX_NAMESPACE"))
                    .or_else(|| env("OMPI_MCA_orte_ess_jobid"))
                    .unwrap_or_else(|| "mpirun".into()),
                JobSource::Pmi => env("VMI_JOB")
                    .or_else(|| env("PMI_KVSNAME"))
                    .unwrap_or_else(|| "pmi".into()),
            };
            let id = key_safe(&id);
            if id.is_empty() || id.len() > 200 {
                return Err(JobError::BadVariable {
                    var: "VMI_JOB".into(),
                    value: id,
                    reason: "a job name is 1 to 200 characters".into(),
                });
            }
            let hosts = match env("VMI_HOSTS") {
                Some(list) => hosts(&list, size)?,
                None => vec!["localhost".into()],
            };
            return Ok(Some(Job {
                rank,
                size,
                id,
                source,
                hosts,
            }));
        }
        Ok(None)
    }

    /// The key rank `rank` serves under.
    pub fn key_of(&self, rank: u32) -> String {
        format!("{}.{rank}", self.id)
    }

    /// This process's key.
    pub fn key(&self) -> String {
        self.key_of(self.rank)
    }

    /// The host of rank `rank`.
    pub fn host_of(&self, rank: u32) -> &str {
        if self.hosts.len() == 1 {
            &self.hosts[0]
        } else {
            &self.hosts[rank as usize]
        }
    }

    /// Every other rank, in order.
    pub fn peers(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.size).filter(move |&r| r != self.rank)
    }
}

/// This machine's host name.
#[allow(unsafe_code)]
fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    if unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) } != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

fn number(var: &str, value: &str, min: u32, max: u32) -> Result<u32, JobError> {
    match value.trim().parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(JobError::BadVariable {
            var: var.into(),
            value: value.into(),
            reason: format!("a whole number from {min} to {max} is expected"),
        }),
    }
}

/// `s` with whitespace and control characters (which keys may not hold) replaced by `-`.
fn key_safe(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '-'
            } else {
                c
            }
        })
        .collect()
}

/// Parses `VMI_HOSTS` for a job of `size`: one host, one per rank, or `host*count` blocks.
fn hosts(list: &str, size: u32) -> Result<Vec<String>, JobError> {
    let bad = |reason: String| JobError::BadVariable {
        var: "VMI_HOSTS".into(),
        value: list.into(),
        reason,
    };
    let mut out: Vec<String> = Vec::new();
    for item in list.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(bad("an empty host name".into()));
        }
        let (host, count) = match item.rsplit_once('*') {
            Some((h, n)) => {
                let n: u32 = n
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1 && n <= size)
                    .ok_or_else(|| {
                        bad(format!("'{item}': the count after * must be 1 to {size}"))
                    })?;
                (h, n)
            }
            None => (item, 1),
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(format!("'{item}' is not a host name")));
        }
        for _ in 0..count {
            if out.len() >= size as usize {
                return Err(bad(format!("more hosts than the {size} processes")));
            }
            out.push(host.to_string());
        }
    }
    if out.len() != 1 && out.len() != size as usize {
        return Err(bad(format!(
            "{} host(s) for {size} processes: give one host for all, or one per process (host*count for blocks)",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_fallback_variables_describe_a_job() {
        let j = Job::from_vars(&env(&[
            ("VMI_RANK", "2"),
            ("VMI_PROCS", "4"),
            ("VMI_JOB", "t1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((j.rank, j.size, j.source), (2, 4, JobSource::Vmi));
        assert_eq!(j.key(), "t1.2");
        assert_eq!(j.key_of(0), "t1.0");
        assert_eq!(j.host_of(3), "localhost");
        assert_eq!(j.peers().collect::<Vec<_>>(), [0, 1, 3]);
        assert_eq!(Job::from_vars(&env(&[])).unwrap(), None, "no launcher");
    }

    #[test]
    fn mpirun_and_pmi_variables_are_read() {
        let j = Job::from_vars(&env(&[
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_SIZE", "64"),
            ("PMIX_NAMESPACE", "prterun-box-123@1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((j.rank, j.size, j.source), (0, 64, JobSource::OpenMpi));
        assert_eq!(j.key_of(63), "prterun-box-123@1.63");
        let j = Job::from_vars(&env(&[("PMI_RANK", "1"), ("PMI_SIZE", "2")]))
            .unwrap()
            .unwrap();
        assert_eq!((j.source, j.key()), (JobSource::Pmi, "pmi.1".to_string()));
    }

    #[test]
    fn hosts_are_one_for_all_one_per_rank_or_blocks() {
        let j = Job::from_vars(&env(&[
            ("VMI_RANK", "5"),
            ("VMI_PROCS", "6"),
            ("VMI_HOSTS", "a*2, b, c*3"),
        ]))
        .unwrap()
        .unwrap();
        let all: Vec<&str> = (0..6).map(|r| j.host_of(r)).collect();
        assert_eq!(all, ["a", "a", "b", "c", "c", "c"]);
        let one = Job::from_vars(&env(&[
            ("VMI_RANK", "0"),
            ("VMI_PROCS", "3"),
            ("VMI_HOSTS", "h"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(one.host_of(2), "h");
    }

    #[test]
    fn bad_variables_say_what_is_expected() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("VMI_RANK", "4"), ("VMI_PROCS", "4")], "0 to 3"),
            (&[("VMI_RANK", "x"), ("VMI_PROCS", "4")], "whole number"),
            (&[("VMI_RANK", "0"), ("VMI_PROCS", "0")], "1 to"),
            (&[("VMI_RANK", "0")], "VMI_PROCS is not"),
            (&[("VMI_PROCS", "2")], "VMI_RANK is not"),
            (
                &[("VMI_RANK", "0"), ("VMI_PROCS", "3"), ("VMI_HOSTS", "a,b")],
                "2 host(s) for 3",
            ),
            (
                &[("VMI_RANK", "0"), ("VMI_PROCS", "2"), ("VMI_HOSTS", "a*3")],
                "1 to 2",
            ),
            (
                &[("VMI_RANK", "0"), ("VMI_PROCS", "2"), ("VMI_HOSTS", "a,,b")],
                "empty host",
            ),
            (
                &[("VMI_RANK", "0"), ("VMI_PROCS", "2"), ("VMI_JOB", " ")],
                "1 to 200",
            ),
        ];
        for (vars, needle) in cases {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            let e = Job::from_vars(&|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
                .unwrap_err();
            assert!(e.to_string().contains(needle), "{e} (wanted '{needle}')");
        }
    }
}
