//! Who may use which link on our p2p listener (docs/PROTOCOL.md §1.2).
//!
//! After the hello, an inbound connection names a peer id and a connection kind. It is
//! served only if that id is an accepted peer of the topology we run on or of the one
//! being proposed, it connects from the address the master recorded for that id, and the
//! kind is a link the topology gives it: ring data only from our ring predecessor, bandwidth
//! tests and shared state only from members of our group. The control task feeds the
//! topology and proposals in ([`Gate::commit`], [`Gate::propose`]); the listener asks
//! [`Gate::admit`], which waits (bounded) for a proposal or commit we have not processed
//! yet, since the master sends them to every peer at once and a neighbour may act first.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::types::{PeerId, Topology};
use crate::wire::ConnectionKind;

/// The topologies a peer may be part of right now.
#[derive(Debug, Default)]
pub(crate) struct Known {
    /// The last committed topology.
    current: Arc<Topology>,
    /// The proposal being committed, if any.
    proposed: Option<Arc<Topology>>,
}

impl Known {
    fn views(&self) -> impl Iterator<Item = &Topology> {
        std::iter::once(&*self.current).chain(self.proposed.as_deref())
    }

    /// Whether `id` is accepted in either view (an idle ring connection stays open while so).
    pub(crate) fn contains(&self, id: PeerId) -> bool {
        self.views().any(|t| t.contains(id))
    }
}

/// The admission rule and the topologies it is checked against.
#[derive(Debug)]
pub(crate) struct Gate {
    me: PeerId,
    group: u32,
    known: watch::Sender<Known>,
}

impl Gate {
    pub(crate) fn new(me: PeerId, group: u32) -> Self {
        Self {
            me,
            group,
            known: watch::Sender::new(Known::default()),
        }
    }

    /// A proposal arrived: its members may dial us from now on.
    pub(crate) fn propose(&self, topology: Arc<Topology>) {
        self.known.send_modify(|k| k.proposed = Some(topology));
    }

    /// A topology was committed; any proposal is settled by it.
    pub(crate) fn commit(&self, topology: Arc<Topology>) {
        self.known.send_modify(|k| {
            k.current = topology;
            k.proposed = None;
        });
    }

    /// The proposal was abandoned (`TopologyUpdated(err)`): its newcomers are not members.
    pub(crate) fn abandon_proposal(&self) {
        self.known.send_if_modified(|k| k.proposed.take().is_some());
    }

    /// A receiver that changes whenever the known topologies do.
    pub(crate) fn watch(&self) -> watch::Receiver<Known> {
        self.known.subscribe()
    }

    /// Waits until `claimed` may use a `kind` link from `ip`, at most until `deadline`.
    /// `Ok` holds the static key the topology lists for `claimed` (zeros without a run
    /// secret), which the link handshake then makes it prove; `Err` says why not, for the
    /// log.
    pub(crate) async fn admit(
        &self,
        claimed: PeerId,
        kind: ConnectionKind,
        ip: IpAddr,
        deadline: Instant,
    ) -> Result<[u8; 32], String> {
        let mut rx = self.known.subscribe();
        let mut why = String::new();
        let mut key = [0u8; 32];
        let waited = tokio::time::timeout_at(
            deadline,
            rx.wait_for(|k| match check(k, self.me, self.group, claimed, kind, ip) {
                Ok(k) => {
                    key = k;
                    true
                }
                Err(w) => {
                    why = w;
                    false
                }
            }),
        )
        .await;
        match waited {
            Ok(Ok(_)) => Ok(key),
            Ok(Err(_)) => Err("the communicator is closing".into()),
            Err(_) => Err(why),
        }
    }
}

/// The rule itself: may `claimed`, connecting from `ip`, open a `kind` link to `me`?
/// `Ok` holds the static key listed for `claimed`.
pub(crate) fn check(
    known: &Known,
    me: PeerId,
    group: u32,
    claimed: PeerId,
    kind: ConnectionKind,
    ip: IpAddr,
) -> Result<[u8; 32], String> {
    if claimed == me {
        return Err("it claims our own id".into());
    }
    let mut member = false;
    for t in known.views() {
        let Some(entry) = t.ring.iter().find(|p| p.id == claimed) else {
            continue;
        };
        member = true;
        if entry.p2p_addr.ip().to_canonical() != ip.to_canonical() {
            continue;
        }
        let ok = match kind {
            ConnectionKind::P2p => predecessor(t, me, group) == Some(claimed),
            ConnectionKind::Benchmark | ConnectionKind::SharedState => {
                entry.group == group && t.contains(me)
            }
            ConnectionKind::Control => false,
        };
        if ok {
            return Ok(entry.static_key);
        }
    }
    Err(if member {
        "not a link the topology gives this peer (or not from its recorded address)".into()
    } else {
        "not an accepted peer of the run".into()
    })
}

/// Our predecessor in our group's ring of `t`.
fn predecessor(t: &Topology, me: PeerId, group: u32) -> Option<PeerId> {
    let ring = t.group_ring(group);
    let pos = ring.iter().position(|p| p.id == me)?;
    (ring.len() >= 2).then(|| ring[(pos + ring.len() - 1) % ring.len()].id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PeerEntry;

    fn id(i: u8) -> PeerId {
        PeerId([i; 16])
    }

    fn entry(i: u8, group: u32) -> PeerEntry {
        PeerEntry {
            id: id(i),
            group,
            p2p_addr: format!("10.0.0.{i}:4000").parse().expect("address"),
            static_key: [i; 32],
        }
    }

    fn ip(i: u8) -> IpAddr {
        format!("10.0.0.{i}").parse().expect("address")
    }

    fn topo(entries: Vec<PeerEntry>) -> Arc<Topology> {
        Arc::new(Topology {
            ring: entries,
            group_epochs: vec![(0, 1), (1, 1)],
        })
    }

    /// Ring 1 → 2 → 3 → 1 in group 0, peer 4 in group 1; we are peer 2.
    #[test]
    fn only_the_right_peer_on_the_right_link_from_its_address() {
        let known = Known {
            current: topo(vec![entry(1, 0), entry(4, 1), entry(2, 0), entry(3, 0)]),
            proposed: None,
        };
        let c = |who: u8, kind, from: u8| check(&known, id(2), 0, id(who), kind, ip(from));
        assert!(c(1, ConnectionKind::P2p, 1).is_ok(), "the predecessor");
        assert_eq!(c(1, ConnectionKind::P2p, 1), Ok([1; 32]), "its listed key");
        assert!(c(3, ConnectionKind::P2p, 3).is_err(), "the successor");
        assert!(
            c(1, ConnectionKind::P2p, 3).is_err(),
            "the predecessor's id from elsewhere"
        );
        assert!(c(9, ConnectionKind::P2p, 9).is_err(), "a stranger");
        assert!(c(2, ConnectionKind::Benchmark, 2).is_err(), "our own id");
        assert!(c(3, ConnectionKind::Benchmark, 3).is_ok());
        assert!(c(3, ConnectionKind::SharedState, 3).is_ok());
        assert!(c(4, ConnectionKind::Benchmark, 4).is_err(), "another group");
        assert!(
            c(4, ConnectionKind::SharedState, 4).is_err(),
            "another group"
        );
        assert!(c(1, ConnectionKind::Control, 1).is_err());
        let v6: IpAddr = "::ffff:10.0.0.1".parse().expect("address");
        assert!(
            check(&known, id(2), 0, id(1), ConnectionKind::P2p, v6).is_ok(),
            "v4-mapped"
        );
    }

    /// A newcomer in the proposal may dial before the commit; nobody else gains a link.
    #[test]
    fn a_proposal_admits_its_ring_until_it_is_settled() {
        let gate = Gate::new(id(2), 0);
        let now = Instant::now();
        gate.commit(topo(vec![entry(1, 0), entry(2, 0)]));
        gate.propose(topo(vec![entry(1, 0), entry(5, 0), entry(2, 0)]));
        let k = gate.watch();
        assert!(check(&k.borrow(), id(2), 0, id(5), ConnectionKind::P2p, ip(5)).is_ok());
        assert!(
            check(&k.borrow(), id(2), 0, id(1), ConnectionKind::P2p, ip(1)).is_ok(),
            "current ring"
        );
        gate.abandon_proposal();
        assert!(check(&k.borrow(), id(2), 0, id(5), ConnectionKind::P2p, ip(5)).is_err());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let late = now + std::time::Duration::from_millis(50);
            let refused = gate.admit(id(5), ConnectionKind::P2p, ip(5), late).await;
            assert!(refused.is_err(), "not known by the deadline");
            let wait = gate.admit(
                id(5),
                ConnectionKind::P2p,
                ip(5),
                Instant::now() + std::time::Duration::from_secs(5),
            );
            let commit = async {
                tokio::task::yield_now().await;
                gate.commit(topo(vec![entry(1, 0), entry(5, 0), entry(2, 0)]));
            };
            let (admitted, ()) = tokio::join!(wait, commit);
            assert!(admitted.is_ok(), "admitted once the commit arrives");
        });
    }
}
