//! Cluster admin state: the operator's drain / enable / weight per gateway, versioned,
//! persisted and merged between agents.
//!
//! Each gateway's entry carries its own version and the node the change was made on
//! (`origin`). An entry is newer than another when its `(version, origin)` is greater:
//! the version counter orders changes, the origin name breaks the tie of two changes made
//! concurrently on two nodes from the same starting version. [`AdminState::merge`] keeps
//! the newer entry per gateway, so merging is commutative, associative and idempotent,
//! and every agent that has seen the same entries holds the same state, in whatever order
//! they arrived (a last-writer-wins map). A change made here takes the entry's version + 1.
//!
//! The state is written to `state_dir/admin-state.json` atomically (temp file, fsync,
//! rename, fsync of the directory) before a change is acknowledged, so an acknowledged
//! change survives a crash; on start the agent loads it and pulls from its peers, so a
//! node that was down catches up.
use std::{
    collections::BTreeMap,
    fmt, fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// File name inside the state directory.
pub const STATE_FILE: &str = "admin-state.json";

/// Whether a gateway takes new flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AdminMode {
    /// In the ring when healthy.
    #[default]
    Enabled,
    /// Out of the ring: no new flows; existing flows finish.
    Drained,
}

impl fmt::Display for AdminMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AdminMode::Enabled => "enabled",
            AdminMode::Drained => "drained",
        })
    }
}

/// The operator's settings for one gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayAdmin {
    pub mode: AdminMode,
    /// Overrides the configured weight.
    pub weight: Option<u32>,
    /// Incremented by every change.
    pub version: u64,
    /// The node the change was made on.
    pub origin: String,
}

impl GatewayAdmin {
    fn newer_than(&self, other: &GatewayAdmin) -> bool {
        (self.version, &self.origin) > (other.version, &other.origin)
    }
}

/// A change an operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "op", content = "value")]
pub enum Change {
    Drain,
    Enable,
    Weight(u32),
}

/// The whole admin state: one entry per gateway that was ever changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AdminState {
    pub gateways: BTreeMap<String, GatewayAdmin>,
}

/// Reading or writing the state file failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a valid admin state file: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl AdminState {
    /// The entry of `gateway`, if it was ever changed.
    pub fn get(&self, gateway: &str) -> Option<&GatewayAdmin> {
        self.gateways.get(gateway)
    }

    /// The mode of `gateway` (enabled when never changed).
    pub fn mode(&self, gateway: &str) -> AdminMode {
        self.get(gateway).map(|g| g.mode).unwrap_or_default()
    }

    /// The weight to use for `gateway`: the override, else `configured`.
    pub fn weight(&self, gateway: &str, configured: u32) -> u32 {
        self.get(gateway)
            .and_then(|g| g.weight)
            .unwrap_or(configured)
    }

    /// The highest version of any entry (0 for an empty state): a summary for status.
    pub fn max_version(&self) -> u64 {
        self.gateways.values().map(|g| g.version).max().unwrap_or(0)
    }

    /// Applies an operator change made on `origin`; returns the new entry.
    pub fn apply(&mut self, gateway: &str, change: Change, origin: &str) -> GatewayAdmin {
        let old = self.gateways.get(gateway);
        let (mut mode, mut weight) = old.map_or((AdminMode::Enabled, None), |g| (g.mode, g.weight));
        match change {
            Change::Drain => mode = AdminMode::Drained,
            Change::Enable => mode = AdminMode::Enabled,
            Change::Weight(w) => weight = Some(w),
        }
        let entry = GatewayAdmin {
            mode,
            weight,
            version: old.map_or(0, |g| g.version) + 1,
            origin: origin.to_owned(),
        };
        self.gateways.insert(gateway.to_owned(), entry.clone());
        entry
    }

    /// Takes every entry of `other` that is newer than ours; returns whether anything
    /// changed.
    pub fn merge(&mut self, other: &AdminState) -> bool {
        let mut changed = false;
        for (name, theirs) in &other.gateways {
            let take = self
                .gateways
                .get(name)
                .is_none_or(|ours| theirs.newer_than(ours));
            if take {
                self.gateways.insert(name.clone(), theirs.clone());
                changed = true;
            }
        }
        changed
    }

    /// Whether we hold `entry` for `gateway` or something newer.
    pub fn has_applied(&self, gateway: &str, entry: &GatewayAdmin) -> bool {
        self.get(gateway)
            .is_some_and(|ours| ours == entry || ours.newer_than(entry))
    }

    /// Loads `dir/admin-state.json`; an absent file is an empty state.
    pub fn load(dir: &Path) -> Result<AdminState, StateError> {
        let path = dir.join(STATE_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StateError::Corrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(AdminState::default()),
            Err(source) => Err(StateError::Io {
                path,
                op: "read",
                source,
            }),
        }
    }

    /// Writes `dir/admin-state.json` atomically and durably.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        let io = |op, p: &Path| {
            let p = p.to_owned();
            move |source| StateError::Io {
                path: p,
                op,
                source,
            }
        };
        fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        let mut f = fs::File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(&bytes).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io("rename", &path))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync directory", dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn changes_bump_the_version_and_keep_other_fields() {
        let mut s = AdminState::default();
        let a = s.apply("gw", Change::Weight(7), "n1");
        assert_eq!(
            (a.version, a.mode, a.weight),
            (1, AdminMode::Enabled, Some(7))
        );
        let b = s.apply("gw", Change::Drain, "n2");
        assert_eq!(
            (b.version, b.mode, b.weight),
            (2, AdminMode::Drained, Some(7))
        );
        assert_eq!(s.weight("gw", 100), 7);
        assert_eq!(s.weight("other", 100), 100);
        assert_eq!(s.mode("other"), AdminMode::Enabled);
    }

    #[test]
    fn concurrent_changes_tie_break_on_origin() {
        let mut base = AdminState::default();
        base.apply("gw", Change::Enable, "n1");
        let (mut x, mut y) = (base.clone(), base.clone());
        x.apply("gw", Change::Drain, "n1");
        y.apply("gw", Change::Enable, "n2");
        let (mut xy, mut yx) = (x.clone(), y.clone());
        assert!(xy.merge(&y));
        assert!(!yx.merge(&x));
        assert_eq!(xy, yx);
        assert_eq!(xy.mode("gw"), AdminMode::Enabled, "n2 > n1 wins the tie");
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("state");
        assert_eq!(AdminState::load(&sub).unwrap(), AdminState::default());
        let mut s = AdminState::default();
        s.apply("gw-a", Change::Drain, "n1");
        s.save(&sub).unwrap();
        assert_eq!(AdminState::load(&sub).unwrap(), s);
        assert!(!sub.join("admin-state.json.tmp").exists());
        fs::write(sub.join(STATE_FILE), b"{").unwrap();
        assert!(matches!(
            AdminState::load(&sub),
            Err(StateError::Corrupt { .. })
        ));
    }

    fn arb_state() -> impl Strategy<Value = AdminState> {
        prop::collection::btree_map(
            "gw[0-3]",
            (any::<bool>(), prop::option::of(1u32..5), 0u64..4, "n[0-2]").prop_map(
                |(drained, weight, version, origin)| GatewayAdmin {
                    mode: if drained {
                        AdminMode::Drained
                    } else {
                        AdminMode::Enabled
                    },
                    weight,
                    version,
                    origin,
                },
            ),
            0..4,
        )
        .prop_map(|gateways| AdminState { gateways })
    }

    proptest! {
        /// Merge is a join: order and repetition do not matter, so all agents converge.
        #[test]
        fn merge_converges(a in arb_state(), b in arb_state(), c in arb_state()) {
            // Same (version, origin) must mean the same entry, as it does in a real cluster.
            prop_assume!(consistent(&[&a, &b, &c]));
            let mut abc = a.clone(); abc.merge(&b); abc.merge(&c);
            let mut cba = c.clone(); cba.merge(&b); cba.merge(&a);
            let mut bac = b.clone(); bac.merge(&a); bac.merge(&c); bac.merge(&a);
            prop_assert_eq!(&abc, &cba);
            prop_assert_eq!(&abc, &bac);
        }
    }

    fn consistent(states: &[&AdminState]) -> bool {
        let mut seen: BTreeMap<(String, u64, String), &GatewayAdmin> = BTreeMap::new();
        for s in states {
            for (name, g) in &s.gateways {
                let key = (name.clone(), g.version, g.origin.clone());
                if let Some(prev) = seen.insert(key, g)
                    && prev != g
                {
                    return false;
                }
            }
        }
        true
    }
}
