//! A gate built on first use. Every account has a second gate for the mini-program subscribe
//! messages' own daily count, but most accounts never send one; for a platform's thousands of
//! authorizers, building it only when needed halves what their gates cost.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::limiter::{AccountGate, GateId};
use super::link::RedisLink;
use crate::metrics::Metrics;

/// What [`AccountGate::with_shared`] takes.
pub(crate) struct GateRecipe {
    pub(crate) id: GateId,
    pub(crate) rate_per_sec: u32,
    pub(crate) daily_quota: Option<u64>,
    pub(crate) probe_every: Duration,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shared: Option<Arc<RedisLink>>,
    pub(crate) expected_replicas: u32,
}

impl GateRecipe {
    pub(crate) fn build(&self) -> AccountGate {
        AccountGate::with_shared(
            self.id.clone(),
            self.rate_per_sec,
            self.daily_quota,
            self.probe_every,
            self.metrics.clone(),
            self.shared.clone(),
            self.expected_replicas,
        )
    }
}

/// A gate, built now or on its first use. Boxed, so one not built takes a pointer's room in
/// its account, not a gate's.
pub struct GateLater {
    gate: OnceLock<Box<AccountGate>>,
    recipe: Option<GateRecipe>,
}

impl GateLater {
    /// Built now (its series exist from the start).
    pub(crate) fn now(recipe: GateRecipe) -> GateLater {
        GateLater {
            gate: OnceLock::from(Box::new(recipe.build())),
            recipe: None,
        }
    }

    /// Built on its first use.
    pub(crate) fn later(recipe: GateRecipe) -> GateLater {
        GateLater {
            gate: OnceLock::new(),
            recipe: Some(recipe),
        }
    }

    pub fn get(&self) -> &AccountGate {
        self.gate.get_or_init(|| {
            Box::new(
                self.recipe
                    .as_ref()
                    .expect("a gate not built has its recipe")
                    .build(),
            )
        })
    }

    /// The gate if it was built.
    pub fn built(&self) -> Option<&AccountGate> {
        self.gate.get().map(|g| &**g)
    }
}
