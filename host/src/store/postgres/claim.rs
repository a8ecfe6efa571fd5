//! A host that runs on PostgreSQL holds every shard's lease while it runs: the one node acting
//! for the database's sessions. A second host on the same database waits (a standby) and takes
//! the shards over when the first one stops (released at once) or dies (when its leases run out,
//! by the database's clock), then loads the sessions and resumes them. Several active nodes
//! sharing the shards is the next step of cluster mode; holding all of them first is what keeps
//! two hosts from ever running one session twice.
//!
//! While it holds a claim, the store writes every creation and checkpoint under its own epoch
//! for the shard (whatever fencing token the host gave): a node that lost its leases without
//! knowing it has each late write refused by the lease lock in the commit. The node also stops
//! on its own: a renewal thread extends the leases every third of their length, and when a
//! renewal fails for longer than the lease minus a margin (counted on this process's monotonic
//! clock from when that renewal was sent), or finds a shard taken, the claim is lost and every
//! later write is refused here, without asking the database.

use super::PgStore;
use super::leases::{Lease, LeaseRow};
use crate::store::StoreError;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, Instant};

/// The shards a store holds for its node.
#[derive(Debug)]
pub(super) struct Claim {
    node: String,
    lease: Duration,
    /// Epoch by shard, while held.
    epochs: HashMap<u32, u64>,
    /// When the last successful renewal was sent.
    renewed: Instant,
    /// Set once a shard was lost or renewal failed too long: nothing more is written.
    lost: bool,
    /// Shards it took that had been held before (by another node, or an earlier run of this one).
    taken_over: u32,
}

impl Claim {
    /// The epoch this node writes `shard` under, if it still holds it.
    pub(super) fn epoch(&self, shard: u32) -> Option<u64> {
        let margin = self.lease / 5;
        if self.lost || self.renewed.elapsed() + margin >= self.lease {
            return None;
        }
        self.epochs.get(&shard).copied()
    }

    /// The epoch its commits lock `shard`'s lease row under, until the claim is lost: however
    /// late its renewals are, a commit that finds the row still at this epoch (under the row's
    /// lock) writes for the shard's holder, since no one can take a shard without raising its
    /// epoch. Refusing it for lateness alone would stop its session for nothing.
    fn commit_epoch(&self, shard: u32) -> Option<u64> {
        if self.lost {
            return None;
        }
        self.epochs.get(&shard).copied()
    }

    /// The leases it holds.
    fn held(&self) -> Vec<Lease> {
        self.epochs.iter().map(|(shard, epoch)| Lease { shard: *shard, epoch: *epoch }).collect()
    }
}

/// How a claim is taken.
#[derive(Debug, Clone)]
pub struct ClaimPolicy {
    /// This node's name, as the lease rows show it.
    pub node: String,
    /// How long a lease lasts without renewal (the takeover time after a node dies).
    pub lease: Duration,
    /// Wait for the shards another node holds (a standby) instead of failing at once.
    pub wait: bool,
    /// Where this node answers HTTP (`http://host:port`), written beside its leases so that
    /// standbys can forward requests to it.
    pub address: Option<String>,
}

impl ClaimPolicy {
    /// This machine's host name and this process's id: a name no other running node has.
    pub fn default_node() -> String {
        format!("{}-{}", Self::host_name().as_deref().unwrap_or("turnstile"), std::process::id())
    }

    /// This machine's host name, if it has one.
    pub fn host_name() -> Option<String> {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        Some(host.trim().to_owned()).filter(|h| !h.is_empty())
    }
}

impl PgStore {
    /// Takes every shard's lease for `policy.node` (waiting for them if it says so, calling
    /// `waiting` with the holder's lease row each time it finds them held), then keeps them
    /// renewed on a thread of its own until the store is dropped, when they are released. Sessions must be loaded only after
    /// this returns. `lost` is called (on the renewal thread) if the claim is lost: from then on
    /// every write is refused, and the host should stop.
    pub fn claim_all(
        self: &Arc<Self>,
        policy: &ClaimPolicy,
        mut waiting: impl FnMut(&LeaseRow),
        lost: impl FnOnce() + Send + 'static,
    ) -> Result<(), StoreError> {
        loop {
            let sent = Instant::now();
            let acquired = match self.acquire_all(&policy.node, policy.address.as_deref(), policy.lease) {
                // A standby outlives a database that restarts or drops its connection: it asks
                // again on a new connection, and takes over as before once it can.
                Err(error) if policy.wait && error.is_unavailable() => {
                    tracing::warn!(%error, "waiting for the shards: the database is unavailable; asking again");
                    std::thread::sleep(policy.lease / 6);
                    continue;
                }
                acquired => acquired?,
            };
            if let Some(held) = acquired {
                let epochs = held.iter().map(|l| (l.shard, l.epoch)).collect();
                let taken_over = u32::try_from(held.iter().filter(|l| l.epoch > 1).count()).unwrap_or(u32::MAX);
                let claim = Claim {
                    node: policy.node.clone(),
                    lease: policy.lease,
                    epochs,
                    renewed: sent,
                    lost: false,
                    taken_over,
                };
                *self.claim.lock().unwrap_or_else(PoisonError::into_inner) = Some(claim);
                let store = Arc::downgrade(self);
                std::thread::Builder::new()
                    .name("turnstile-leases".into())
                    .spawn(move || {
                        if renew_while_alive(&store) {
                            lost();
                        }
                    })
                    .map_err(|source| StoreError::Io { context: "starting the lease renewal thread", source })?;
                return Ok(());
            }
            // A table that cannot be read now says nothing new of the holder: the caller's view
            // of it stands (a standby would otherwise cut what it forwards to a holder that is
            // still there).
            let holders = match self.lease_table() {
                Err(error) if policy.wait && error.is_unavailable() => None,
                holders => Some(holders?),
            };
            if let Some(holders) = holders {
                let holder = holders
                    .into_iter()
                    .find(|row| row.owner.as_ref().is_some_and(|o| *o != policy.node))
                    .unwrap_or_default();
                if !policy.wait {
                    let holder = holder.owner.unwrap_or_else(|| "another node".to_owned());
                    return Err(StoreError::ShardsHeld { holder });
                }
                waiting(&holder);
            }
            if let Err(error) = self.await_release(policy.lease / 6) {
                tracing::warn!(%error, "waiting for the shards: the database is unavailable; asking again");
                std::thread::sleep(policy.lease / 6);
            }
        }
    }

    /// The node this store holds its claim for, if it does.
    pub fn claim_node(&self) -> Option<String> {
        self.claim.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|c| c.node.clone())
    }

    /// Shards this store holds a live lease on now (none without a claim, or once it is lost),
    /// and of those it took, how many had been held before (taken over).
    pub fn shards_held(&self) -> (u32, u32) {
        let claim = self.claim.lock().unwrap_or_else(PoisonError::into_inner);
        claim.as_ref().map_or((0, 0), |c| {
            let live = (0..self.shards).filter(|&s| c.epoch(s).is_some()).count();
            (u32::try_from(live).unwrap_or(u32::MAX), c.taken_over)
        })
    }

    /// Whether this store acts for its node and still holds every shard.
    pub fn holds_claim(&self) -> bool {
        let claim = self.claim.lock().unwrap_or_else(PoisonError::into_inner);
        claim.as_ref().is_some_and(|c| (0..self.shards).all(|s| c.epoch(s).is_some()))
    }

    /// Refuses a write outside any session (catalogue, key-value seeding, purges) once the store's
    /// claim is lost: the host that took over is the one to write now.
    pub(super) fn may_write(&self) -> Result<(), StoreError> {
        self.refresh_if_stale();
        match &*self.claim.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(claim) if claim.epoch(0).is_none() => Err(StoreError::ClaimLost),
            _ => Ok(()),
        }
    }

    /// Renews an overdue claim here and now: after this process was paused (or its renewal
    /// thread starved) the leases may well still be its own, and a catalogue write refused for
    /// nothing would fail its request (commits are judged by the lease rows themselves, see
    /// `Claim::commit_epoch`; renewing on their way keeps the node ready). Only a renewal that
    /// finds a shard taken (the renewal thread's business) makes the claim lost.
    pub(super) fn refresh_if_stale(&self) {
        let (node, lease, held) = {
            let claim = self.claim.lock().unwrap_or_else(PoisonError::into_inner);
            match claim.as_ref() {
                Some(claim) if !claim.lost && claim.epoch(0).is_none() => {
                    (claim.node.clone(), claim.lease, claim.held())
                }
                _ => return,
            }
        };
        let sent = Instant::now();
        if let Ok(kept) = self.renew(&node, lease, &held)
            && kept.len() == held.len()
            && let Some(claim) = self.claim.lock().unwrap_or_else(PoisonError::into_inner).as_mut()
        {
            claim.renewed = sent;
        }
    }

    /// The epoch to write a shard's sessions under: the claim's when there is one (`None` once
    /// it is lost), else the host's own fencing token.
    pub(super) fn write_epoch(&self, shard: u32, given: u64) -> Option<u64> {
        match &*self.claim.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(claim) => claim.commit_epoch(shard),
            None => Some(given),
        }
    }

    /// Gives the shards up now, so that a standby takes them over at once (the store is being
    /// dropped, or the host is stopping before it served).
    pub fn release_claim(&self) {
        let claim = self.claim.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(claim) = claim.filter(|c| !c.lost) {
            let held = claim.held();
            // A connection that died while idle (the database restarted, or dropped it) is
            // only found dead by this statement: once more on a new one, so that a standby does
            // not wait a whole lease for nothing.
            let released = self
                .release(&claim.node, &held)
                .or_else(|error| if error.is_unavailable() { self.release(&claim.node, &held) } else { Err(error) });
            if let Err(error) = released {
                tracing::warn!(error = %error, "releasing the shard leases failed: a standby takes over when they run out");
            }
        }
    }
}

/// Renews the claim every third of the lease (a tenth after a failure) until the store is
/// dropped (false) or the claim is lost (true).
fn renew_while_alive(store: &Weak<PgStore>) -> bool {
    loop {
        let Some(store) = store.upgrade() else { return false };
        let (node, lease, held) = {
            let claim = store.claim.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(claim) = claim.as_ref().filter(|c| !c.lost) else { return false };
            (claim.node.clone(), claim.lease, claim.held())
        };
        let sent = Instant::now();
        let renewed = store.renew(&node, lease, &held);
        if sent.elapsed() > lease / 3 {
            // Its commits are not refused for it (`Claim::commit_epoch`), but a standby may take
            // shards whose lease ran out meanwhile.
            tracing::warn!(took_ms = sent.elapsed().as_millis(), "renewing the shard leases was slow");
        }
        // A failed renewal (a lost connection) is tried again soon, well before the self-fence.
        let pause = if renewed.is_ok() { lease / 3 } else { lease / 10 };
        {
            let mut claim = store.claim.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(claim) = claim.as_mut() else { return false };
            match renewed {
                Ok(kept) if kept.len() == held.len() => claim.renewed = sent,
                Ok(kept) => {
                    claim.lost = true;
                    tracing::error!(
                        kept = kept.len(),
                        held = held.len(),
                        "shard leases were taken by another node: this node stops writing"
                    );
                    return true;
                }
                Err(error) => {
                    tracing::warn!(error = %error, "renewing the shard leases failed; retrying");
                    if claim.epoch(0).is_none() {
                        claim.lost = true;
                        tracing::error!(
                            "the shard leases ran out before they could be renewed: this node stops writing"
                        );
                        return true;
                    }
                }
            }
        }
        drop(store);
        std::thread::sleep(pause);
    }
}
