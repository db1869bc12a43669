//! Loopback addresses for pods: each pod gets its own 127.0.0.x so every pod can bind the same
//! ports, as pods in a real cluster do.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::Error;

/// First and last host byte handed out; 127.0.0.1 is the node's own address.
const FIRST: u8 = 2;
const LAST: u8 = 254;

/// Which pod (by uid) holds which address.
#[derive(Debug, Default)]
pub struct IpPool {
    owners: BTreeMap<Ipv4Addr, String>,
    /// Where the next search starts: handing addresses out round-robin keeps a just-released
    /// address (whose old process may still be closing its sockets) unused for as long as possible.
    next: u8,
}

impl IpPool {
    /// An empty pool.
    pub fn new() -> IpPool {
        IpPool {
            owners: BTreeMap::new(),
            next: FIRST,
        }
    }

    /// The address of `owner`, allocating one if it has none.
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr, Error> {
        if let Some(ip) = self.address_of(owner) {
            return Ok(ip);
        }
        let span = u16::from(LAST - FIRST) + 1;
        for step in 0..span {
            let byte = FIRST + ((u16::from(self.next.max(FIRST) - FIRST) + step) % span) as u8;
            let ip = Ipv4Addr::new(127, 0, 0, byte);
            if let std::collections::btree_map::Entry::Vacant(slot) = self.owners.entry(ip) {
                slot.insert(owner.to_owned());
                self.next = if byte == LAST { FIRST } else { byte + 1 };
                return Ok(ip);
            }
        }
        Err(Error::IpPoolExhausted)
    }

    /// Records that `owner` holds `ip` (read back from a pod's status after a restart of the
    /// agent). Returns false when the address is outside the pool or held by someone else.
    pub fn reserve(&mut self, ip: Ipv4Addr, owner: &str) -> bool {
        let [a, b, c, d] = ip.octets();
        if (a, b, c) != (127, 0, 0) || !(FIRST..=LAST).contains(&d) {
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
    fn exhausts_after_253_and_recovers_on_release() {
        let mut pool = IpPool::new();
        for i in 0..253 {
            pool.allocate(&i.to_string()).unwrap();
        }
        assert!(matches!(pool.allocate("x"), Err(Error::IpPoolExhausted)));
        pool.release("7");
        assert!(pool.allocate("x").is_ok());
        assert_eq!(pool.in_use(), 253);
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
