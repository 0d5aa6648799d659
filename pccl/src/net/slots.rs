//! Slots for connections that have not yet proven who they are, shared fairly among
//! source addresses (docs/PROTOCOL.md §1.2, "Unidentified connections").
//!
//! A listener bounds how many connections it holds before their handshake is done. A
//! plain bound lets one address that opens connections and says nothing hold every slot
//! until the handshake timeout, so a real peer dialling meanwhile is refused: a newcomer
//! then cannot reach its neighbour, and a run cannot grow while the flood lasts. Here a
//! connection that finds every slot taken evicts the oldest connection of the address
//! holding the most slots, as long as that address still holds at least as many as the
//! newcomer's afterwards; otherwise the newcomer is refused. A flood from one address
//! (or a few) therefore costs the others at most one eviction each, never a lock-out;
//! a flood from as many addresses as there are slots is bounded only by the cap.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// What [`FairSlots::admit`] decided for a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit<K> {
    /// A free slot was taken.
    Admitted,
    /// Every slot was taken: connection `K` was evicted for it and must be closed.
    Evicted(K),
    /// Every slot was taken by addresses holding no more than the caller's: close it.
    Refused,
}

/// At most `cap` connections, keyed by `K` in arrival order, with their source address.
#[derive(Debug)]
pub(crate) struct FairSlots<K: Ord + Copy> {
    cap: usize,
    held: BTreeMap<K, IpAddr>,
    per_ip: HashMap<IpAddr, usize>,
}

impl<K: Ord + Copy> FairSlots<K> {
    /// Room for `cap` connections (at least one).
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            held: BTreeMap::new(),
            per_ip: HashMap::new(),
        }
    }

    /// How many slots are held.
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }

    /// Gives connection `key` from `ip` a slot, evicting another one if fairness asks for
    /// it. Keys must increase with arrival: the smallest key of an address is its oldest.
    pub(crate) fn admit(&mut self, key: K, ip: IpAddr) -> Admit<K> {
        let mut admit = Admit::Admitted;
        if self.held.len() >= self.cap {
            let mine = self.per_ip.get(&ip).copied().unwrap_or(0);
            let most = self.per_ip.values().copied().max().unwrap_or(0);
            if most <= mine + 1 {
                // Taking from the heaviest would leave it lighter than the caller.
                return Admit::Refused;
            }
            // The oldest connection of the heaviest addresses (the oldest of all of
            // them on a tie, so the choice does not depend on hash order).
            let per_ip = &self.per_ip;
            let oldest = self
                .held
                .iter()
                .find(|(_, a)| per_ip.get(*a) == Some(&most))
                .map(|(k, _)| *k);
            let Some(victim) = oldest else {
                return Admit::Refused; // unreachable: the heaviest address holds slots
            };
            self.release(victim);
            admit = Admit::Evicted(victim);
        }
        self.held.insert(key, ip);
        *self.per_ip.entry(ip).or_default() += 1;
        admit
    }

    /// Frees `key`'s slot (its handshake is done, it closed, or it was evicted); a key
    /// that holds none is ignored.
    pub(crate) fn release(&mut self, key: K) {
        let Some(ip) = self.held.remove(&key) else {
            return;
        };
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

/// [`FairSlots`] shared by a listener's connection tasks: each holds a [`Slot`] until it
/// is identified, and learns through [`Eviction`] when another address took its slot.
#[derive(Debug)]
pub(crate) struct SharedSlots {
    inner: Mutex<Shared>,
}

#[derive(Debug)]
struct Shared {
    slots: FairSlots<u64>,
    next: u64,
    /// Fires when the slot's connection is evicted; dropped when the slot is released.
    evict: HashMap<u64, oneshot::Sender<()>>,
}

impl SharedSlots {
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Shared {
                slots: FairSlots::new(cap),
                next: 0,
                evict: HashMap::new(),
            }),
        })
    }

    /// A slot for a connection from `ip`, or `None`: close it at once.
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr) -> Option<(Slot, Eviction)> {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        s.next += 1;
        let key = s.next;
        match s.slots.admit(key, ip) {
            Admit::Refused => return None,
            Admit::Evicted(victim) => {
                if let Some(tx) = s.evict.remove(&victim) {
                    let _ = tx.send(());
                }
            }
            Admit::Admitted => {}
        }
        let (tx, rx) = oneshot::channel();
        s.evict.insert(key, tx);
        let slot = Slot {
            owner: self.clone(),
            key,
        };
        Some((slot, Eviction(rx)))
    }
}

/// A held slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Slot {
    owner: Arc<SharedSlots>,
    key: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.owner.inner.lock().unwrap_or_else(|e| e.into_inner());
        s.slots.release(self.key);
        s.evict.remove(&self.key);
    }
}

/// Resolves when the connection's slot was given to a connection from another address.
#[derive(Debug)]
pub(crate) struct Eviction(oneshot::Receiver<()>);

impl Eviction {
    /// Waits for the eviction; never returns once the slot was released instead.
    pub(crate) async fn wait(self) {
        if self.0.await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    #[test]
    fn a_flooding_address_loses_its_oldest_slot_to_another_address() {
        let mut s = FairSlots::new(4);
        for k in 0..4u64 {
            assert_eq!(s.admit(k, ip(77)), Admit::Admitted);
        }
        // The flooder itself is refused once full...
        assert_eq!(s.admit(4, ip(77)), Admit::Refused);
        // ...and anyone else takes its oldest slot, then its next oldest.
        assert_eq!(s.admit(5, ip(1)), Admit::Evicted(0));
        assert_eq!(s.admit(6, ip(1)), Admit::Evicted(1));
        // Two each: taking more would make the caller the heavier one.
        assert_eq!(s.admit(7, ip(1)), Admit::Refused);
        assert_eq!(s.admit(8, ip(2)), Admit::Evicted(2));
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn released_slots_are_reused_and_unknown_keys_are_ignored() {
        let mut s = FairSlots::new(2);
        assert_eq!(s.admit(0, ip(1)), Admit::Admitted);
        assert_eq!(s.admit(1, ip(2)), Admit::Admitted);
        // One each: nobody is heavier than a third address would be after taking a slot.
        assert_eq!(s.admit(2, ip(3)), Admit::Refused);
        s.release(0);
        s.release(0);
        s.release(42);
        assert_eq!(s.len(), 1);
        assert_eq!(s.admit(3, ip(3)), Admit::Admitted);
        assert_eq!(s.admit(4, ip(2)), Admit::Refused);
    }

    #[tokio::test]
    async fn an_evicted_connection_is_told_and_a_released_one_never_is() {
        let slots = SharedSlots::new(2);
        let (first, evicted) = slots.take(ip(77)).expect("a free slot");
        let (_second, _) = slots.take(ip(77)).expect("a free slot");
        assert!(
            slots.take(ip(77)).is_none(),
            "the flooder itself is refused"
        );
        let (mine, mine_evicted) = slots.take(ip(1)).expect("evicts the flooder's oldest");
        tokio::time::timeout(std::time::Duration::from_secs(1), evicted.wait())
            .await
            .expect("the evicted connection is told");
        drop(first); // its late release frees nothing of the newcomer's
        assert!(slots.take(ip(2)).is_none(), "one each: no eviction");
        drop(mine);
        let told = tokio::time::timeout(std::time::Duration::from_millis(50), mine_evicted.wait());
        assert!(told.await.is_err(), "a released slot is never evicted");
        assert!(slots.take(ip(2)).is_some(), "the released slot is free");
    }

    #[test]
    fn a_slot_count_never_exceeds_the_cap_under_random_traffic() {
        let mut s = FairSlots::new(8);
        let mut open: Vec<u64> = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for k in 0..10_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) && !open.is_empty() {
                let i = (x as usize / 3) % open.len();
                s.release(open.swap_remove(i));
            } else {
                match s.admit(k, ip((x % 5) as u8)) {
                    Admit::Admitted => open.push(k),
                    Admit::Evicted(v) => {
                        open.retain(|o| *o != v);
                        open.push(k);
                    }
                    Admit::Refused => {}
                }
            }
            assert!(s.len() <= 8);
            assert_eq!(s.len(), open.len());
            assert_eq!(s.per_ip.values().sum::<usize>(), s.len());
        }
    }
}
