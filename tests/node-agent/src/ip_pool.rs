//! Loopback addresses for pods: each pod gets its own 127.0.0.x so every pod can bind the same
//! ports, as pods in a real cluster do.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::Error;

/// Host bytes handed out in each /24: 127.0.0.1 is the node's own address, and .0/.255 are
/// avoided so no address looks like a network or broadcast address.
const FIRST_HOST: u32 = 2;
const HOSTS_PER_BLOCK: u32 = 253;
/// 127.0.0.0–127.0.15.255: about 4,000 pods, enough for the 100-backend benchmark (Linux routes
/// all of 127.0.0.0/8 to the loopback interface).
const BLOCKS: u32 = 16;
const SPAN: u32 = HOSTS_PER_BLOCK * BLOCKS;
/// How many pods the node can hold (its advertised `pods` capacity).
pub const CAPACITY: u32 = SPAN;

/// Which pod (by uid) holds which address.
#[derive(Debug, Default)]
pub struct IpPool {
    owners: BTreeMap<Ipv4Addr, String>,
    /// Where the next search starts: handing addresses out round-robin keeps a just-released
    /// address (whose old process may still be closing its sockets) unused for as long as possible.
    next: u32,
}

/// The `index`-th address of the pool.
fn address(index: u32) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        0,
        (index / HOSTS_PER_BLOCK) as u8,
        (FIRST_HOST + index % HOSTS_PER_BLOCK) as u8,
    )
}

/// The index of `ip` in the pool, if it belongs to it.
fn index_of(ip: Ipv4Addr) -> Option<u32> {
    let [a, b, c, d] = ip.octets();
    let (c, d) = (u32::from(c), u32::from(d));
    let in_pool =
        (a, b) == (127, 0) && c < BLOCKS && (FIRST_HOST..FIRST_HOST + HOSTS_PER_BLOCK).contains(&d);
    in_pool.then(|| c * HOSTS_PER_BLOCK + d - FIRST_HOST)
}

impl IpPool {
    /// An empty pool.
    pub fn new() -> IpPool {
        IpPool {
            owners: BTreeMap::new(),
            next: 0,
        }
    }

    /// The address of `owner`, allocating one if it has none.
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr, Error> {
        if let Some(ip) = self.address_of(owner) {
            return Ok(ip);
        }
        for step in 0..SPAN {
            let index = (self.next + step) % SPAN;
            let ip = address(index);
            if let std::collections::btree_map::Entry::Vacant(slot) = self.owners.entry(ip) {
                slot.insert(owner.to_owned());
                self.next = (index + 1) % SPAN;
                return Ok(ip);
            }
        }
        Err(Error::IpPoolExhausted)
    }

    /// Records that `owner` holds `ip` (read back from a pod's status after a restart of the
    /// agent). Returns false when the address is outside the pool or held by someone else.
    pub fn reserve(&mut self, ip: Ipv4Addr, owner: &str) -> bool {
        if index_of(ip).is_none() {
            return false;
        }
        match self.owners.get(&ip) {
            Some(current) => current == owner,
            None => {
                self.owners.insert(ip, owner.to_owned());
                true
            }
        }
    }

    /// Frees whatever `owner` holds.
    pub fn release(&mut self, owner: &str) {
        self.owners.retain(|_, o| o != owner);
    }

    /// The address `owner` holds, if any.
    pub fn address_of(&self, owner: &str) -> Option<Ipv4Addr> {
        self.owners
            .iter()
            .find(|(_, o)| o.as_str() == owner)
            .map(|(ip, _)| *ip)
    }

    /// How many addresses are held.
    pub fn in_use(&self) -> usize {
        self.owners.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_loopback_and_never_the_node_address() {
        let mut pool = IpPool::new();
        let a = pool.allocate("a").unwrap();
        let b = pool.allocate("b").unwrap();
        assert_ne!(a, b);
        assert_eq!(a, Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(
            pool.allocate("a").unwrap(),
            a,
            "allocation is idempotent per owner"
        );
    }

    #[test]
    fn exhausts_after_the_whole_span_and_recovers_on_release() {
        let mut pool = IpPool::new();
        for i in 0..SPAN {
            pool.allocate(&i.to_string()).unwrap();
        }
        assert!(matches!(pool.allocate("x"), Err(Error::IpPoolExhausted)));
        pool.release("7");
        assert!(pool.allocate("x").is_ok());
        assert_eq!(pool.in_use(), SPAN as usize);
    }

    #[test]
    fn the_pool_spans_several_blocks_without_network_or_broadcast_addresses() {
        assert_eq!(address(252), Ipv4Addr::new(127, 0, 0, 254));
        assert_eq!(address(253), Ipv4Addr::new(127, 0, 1, 2));
        for i in 0..SPAN {
            assert_eq!(index_of(address(i)), Some(i));
        }
        assert_eq!(index_of(Ipv4Addr::new(127, 0, 1, 255)), None);
        assert_eq!(index_of(Ipv4Addr::new(127, 0, 16, 2)), None);
    }

    #[test]
    fn released_addresses_are_reused_last() {
        let mut pool = IpPool::new();
        let a = pool.allocate("a").unwrap();
        pool.release("a");
        assert_ne!(pool.allocate("b").unwrap(), a);
    }

    #[test]
    fn reserved_addresses_are_skipped_and_foreign_ones_refused() {
        let mut pool = IpPool::new();
        assert!(pool.reserve(Ipv4Addr::new(127, 0, 0, 2), "old"));
        assert!(!pool.reserve(Ipv4Addr::new(127, 0, 0, 2), "other"));
        assert!(!pool.reserve(Ipv4Addr::new(10, 0, 0, 2), "x"));
        assert!(!pool.reserve(Ipv4Addr::new(127, 0, 0, 1), "x"));
        assert_eq!(pool.allocate("new").unwrap(), Ipv4Addr::new(127, 0, 0, 3));
    }
}
