//! Seeded restart chaos: kill -9 and restart the manager at random moments while objects
//! reconcile, then check the final state.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::manager::Manager;

/// The seed used when `E2E_SEED` is unset.
pub const DEFAULT_SEED: u64 = 0x6b75_6265_7570_6772;
/// Kill/restart cycles when `E2E_CHAOS_ITERATIONS` is unset.
pub const DEFAULT_ITERATIONS: u32 = 20;

/// What a chaos run does.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// Seed of every random choice (`E2E_SEED`).
    pub seed: u64,
    /// Kill/restart cycles (`E2E_CHAOS_ITERATIONS`).
    pub iterations: u32,
    /// Shortest time the manager runs before it is killed.
    pub min_uptime: Duration,
    /// Longest time the manager runs before it is killed.
    pub max_uptime: Duration,
    /// Longest time the manager stays down between a kill and its restart.
    pub max_downtime: Duration,
}

impl ChaosConfig {
    /// From `E2E_SEED` and `E2E_CHAOS_ITERATIONS`, with uptimes of 50 ms to 3 s and
    /// downtimes up to 500 ms. Prints the seed, so a failure can be replayed.
    pub fn from_env() -> Result<Self> {
        Self::from_env_or(DEFAULT_ITERATIONS)
    }

    /// [`ChaosConfig::from_env`] with `iterations` cycles when `E2E_CHAOS_ITERATIONS` is unset.
    pub fn from_env_or(iterations: u32) -> Result<Self> {
        let seed = match std::env::var("E2E_SEED") {
            Ok(s) if !s.trim().is_empty() => {
                parse_seed(s.trim()).with_context(|| format!("E2E_SEED={s}"))?
            }
            _ => DEFAULT_SEED,
        };
        let iterations = match std::env::var("E2E_CHAOS_ITERATIONS") {
            Ok(s) if !s.trim().is_empty() => s
                .trim()
                .parse()
                .with_context(|| format!("E2E_CHAOS_ITERATIONS={s}"))?,
            _ => iterations,
        };
        let config = Self {
            seed,
            iterations,
            min_uptime: Duration::from_millis(50),
            max_uptime: Duration::from_secs(3),
            max_downtime: Duration::from_millis(500),
        };
        crate::cluster::print_line(&format!(
            "chaos: E2E_SEED={seed} E2E_CHAOS_ITERATIONS={iterations} (set them to replay this run)"
        ));
        Ok(config)
    }
}

fn parse_seed(s: &str) -> Result<u64> {
    Ok(match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16)?,
        None => s.parse()?,
    })
}

/// One kill/restart cycle, for the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cycle {
    /// Cycle number, from 0.
    pub iteration: u32,
    /// How long the manager ran before SIGKILL.
    pub uptime: Duration,
    /// How long it stayed down.
    pub downtime: Duration,
}

/// Runs `config.iterations` cycles on `manager`. Each cycle first calls `perturb(iteration,
/// rng)` (to create, change or fault objects while the manager works; it gets the seeded
/// generator), lets the manager run for a random uptime, kills it with SIGKILL, waits a random
/// downtime and restarts it. After the last cycle the manager is left running; then
/// `assert_final()` checks the end state and its error fails the run.
pub async fn run<P, PF, A, AF>(
    manager: &mut Manager,
    config: &ChaosConfig,
    mut perturb: P,
    assert_final: A,
) -> Result<Vec<Cycle>>
where
    P: FnMut(u32, &mut StdRng) -> PF,
    PF: Future<Output = Result<()>>,
    A: FnOnce() -> AF,
    AF: Future<Output = Result<()>>,
{
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut cycles = Vec::new();
    for iteration in 0..config.iterations {
        perturb(iteration, &mut rng)
            .await
            .with_context(|| format!("chaos cycle {iteration}: perturbing"))?;
        let uptime = random_between(&mut rng, config.min_uptime, config.max_uptime);
        let downtime = random_between(&mut rng, Duration::ZERO, config.max_downtime);
        tokio::time::sleep(uptime).await;
        if let Some(status) = manager.try_exit()? {
            anyhow::bail!(
                "chaos cycle {iteration}: the manager exited by itself with {status} (seed {}); log tail:\n{}",
                config.seed,
                manager.log_tail()
            );
        }
        manager.kill()?;
        tokio::time::sleep(downtime).await;
        manager.restart()?;
        cycles.push(Cycle {
            iteration,
            uptime,
            downtime,
        });
    }
    assert_final().await.with_context(|| {
        format!(
            "after {} chaos cycles (E2E_SEED={}); manager log tail:\n{}",
            cycles.len(),
            config.seed,
            manager.log_tail()
        )
    })?;
    Ok(cycles)
}

fn random_between(rng: &mut StdRng, min: Duration, max: Duration) -> Duration {
    let (lo, hi) = (min.as_millis(), max.as_millis().max(min.as_millis()));
    let lo = u64::try_from(lo).unwrap_or(u64::MAX);
    let hi = u64::try_from(hi).unwrap_or(u64::MAX);
    Duration::from_millis(rng.random_range(lo..=hi))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn seeded_choices_repeat() {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..5)
                .map(|_| {
                    random_between(&mut rng, Duration::from_millis(50), Duration::from_secs(3))
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert!(
            draw(7)
                .iter()
                .all(|d| *d >= Duration::from_millis(50) && *d <= Duration::from_secs(3))
        );
        assert_eq!(parse_seed("0x10").unwrap(), 16);
        assert_eq!(parse_seed("42").unwrap(), 42);
    }
}
