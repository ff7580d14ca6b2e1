//! Which shards of a gallery one worker of many takes: shard k of the sorted listing goes to
//! worker k mod N. Deterministic, so any worker can be rerun or retried (Slurm requeue,
//! Kubernetes `backoffLimitPerIndex`) and takes the same shards.
//!
//! The worker's place comes from flags, else from what the scheduler sets:
//! - Slurm job arrays: `SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_MIN`, `SLURM_ARRAY_TASK_COUNT`
//!   (index = id − min; arrays with a step other than 1 are refused, as their ids have gaps);
//! - Kubernetes Indexed Jobs: `JOB_COMPLETION_INDEX`, with the count from the flag or
//!   `ISOCLIP_NUM_SHARDS` (Kubernetes does not export `completions`).

use crate::error::{Error, Result};

/// Worker `index` of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardSelection {
    pub count: usize,
    pub index: usize,
}

impl Default for ShardSelection {
    fn default() -> Self {
        ShardSelection { count: 1, index: 0 }
    }
}

impl ShardSelection {
    /// Checked: `count >= 1` and `index < count`.
    pub fn new(count: usize, index: usize) -> Result<Self> {
        if count == 0 {
            return Err(Error::invalid("the number of workers must be at least 1"));
        }
        if index >= count {
            return Err(Error::invalid(format!(
                "worker index {index} is out of range for {count} workers (0 to {})",
                count - 1
            )));
        }
        Ok(ShardSelection { count, index })
    }

    /// True when this worker takes every shard.
    pub fn is_all(&self) -> bool {
        self.count == 1
    }

    /// Whether the shard at position `k` of the sorted listing is this worker's.
    pub fn takes(&self, k: usize) -> bool {
        k % self.count == self.index
    }

    /// The worker's place from explicit values, else the environment `env` (a lookup, so tests
    /// can drive it), else the whole gallery. Explicit values win over the environment.
    pub fn resolve(
        count: Option<usize>,
        index: Option<usize>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let var = |name: &str| -> Result<Option<usize>> {
            match env(name) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                    Error::invalid(format!(
                        "environment variable {name}={v:?} is not a non-negative integer"
                    ))
                }),
            }
        };
        let (env_count, env_index, source) = if let Some(id) = var("SLURM_ARRAY_TASK_ID")? {
            if let Some(step) = var("SLURM_ARRAY_TASK_STEP")? {
                if step != 1 {
                    return Err(Error::invalid(format!(
                        "a Slurm array with step {step} has gaps in its task ids; use a step of 1 (e.g. --array=0-9)"
                    )));
                }
            }
            let min = var("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let index = id.checked_sub(min).ok_or_else(|| {
                Error::invalid(format!(
                    "SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}"
                ))
            })?;
            (var("SLURM_ARRAY_TASK_COUNT")?, Some(index), "Slurm array")
        } else if let Some(index) = var("JOB_COMPLETION_INDEX")? {
            (
                var("ISOCLIP_NUM_SHARDS")?,
                Some(index),
                "Kubernetes Indexed Job",
            )
        } else {
            (var("ISOCLIP_NUM_SHARDS")?, var("ISOCLIP_SHARD_INDEX")?, "")
        };
        let count = count.or(env_count);
        let index = index.or(env_index);
        match (count, index) {
            (None, None) => Ok(ShardSelection::default()),
            (Some(count), Some(index)) => Self::new(count, index),
            (Some(1), None) => Ok(ShardSelection::default()),
            (Some(count), None) => Err(Error::invalid(format!(
                "{count} workers but no worker index: give the index, or run under a Slurm array or a Kubernetes Indexed Job"
            ))),
            (None, Some(index)) => Err(Error::invalid(if source.is_empty() {
                format!("worker index {index} but no number of workers")
            } else {
                format!(
                    "this is worker {index} of a {source}, but the number of workers is unknown: give it (or set ISOCLIP_NUM_SHARDS)"
                )
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn every_shard_goes_to_exactly_one_worker() {
        for count in 1..6 {
            for k in 0..50 {
                let takers = (0..count)
                    .filter(|&i| ShardSelection::new(count, i).unwrap().takes(k))
                    .count();
                assert_eq!(takers, 1, "shard {k} of {count} workers");
            }
        }
    }

    #[test]
    fn slurm_and_kubernetes_variables_place_the_worker() {
        let slurm = [
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
            ("SLURM_ARRAY_TASK_STEP", "1"),
        ];
        assert_eq!(
            ShardSelection::resolve(None, None, env(&slurm)).unwrap(),
            ShardSelection { count: 8, index: 4 }
        );
        // Flags win over the environment.
        assert_eq!(
            ShardSelection::resolve(Some(3), Some(0), env(&slurm)).unwrap(),
            ShardSelection { count: 3, index: 0 }
        );
        let k8s = [("JOB_COMPLETION_INDEX", "2"), ("ISOCLIP_NUM_SHARDS", "3")];
        assert_eq!(
            ShardSelection::resolve(None, None, env(&k8s)).unwrap(),
            ShardSelection { count: 3, index: 2 }
        );
        assert_eq!(
            ShardSelection::resolve(None, None, env(&[])).unwrap(),
            ShardSelection::default()
        );
    }

    #[test]
    fn incomplete_or_inconsistent_placements_are_refused_with_the_reason() {
        let err = |c, i, vars: &[(&str, &str)]| {
            ShardSelection::resolve(c, i, env(vars))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(Some(3), Some(3), &[]),
            "worker index 3 is out of range for 3 workers (0 to 2)"
        );
        assert_eq!(
            err(Some(0), Some(0), &[]),
            "the number of workers must be at least 1"
        );
        assert!(err(None, None, &[("JOB_COMPLETION_INDEX", "1")]).contains(
            "worker 1 of a Kubernetes Indexed Job, but the number of workers is unknown"
        ));
        assert!(err(None, None, &[("SLURM_ARRAY_TASK_ID", "x")])
            .contains("SLURM_ARRAY_TASK_ID=\"x\" is not a non-negative integer"));
        assert!(err(
            None,
            None,
            &[
                ("SLURM_ARRAY_TASK_ID", "4"),
                ("SLURM_ARRAY_TASK_STEP", "2"),
                ("SLURM_ARRAY_TASK_COUNT", "3")
            ]
        )
        .contains("step 2"));
        assert!(err(Some(4), None, &[]).contains("4 workers but no worker index"));
    }
}
