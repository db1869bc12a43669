//! Which of a client's ICE candidates the worker may send connectivity checks to.
//!
//! A candidate is an address the client *claims*; a hostile client could list a database in
//! the cluster and have the worker spray STUN at it. So:
//! - at most [`MAX_CANDIDATES`] per connection (offer and trickle together); beyond that
//!   the request is refused (400, `TooManyCandidates`);
//! - candidates naming a host name (mDNS `.local` or DNS) are never used: resolving them
//!   would let a client make the worker look names up;
//! - loopback, private (RFC 1918, IPv6 ULA), link-local, CGNAT, unspecified, multicast and
//!   broadcast addresses are skipped unless the backend allows private candidates
//!   (`spec.workers.network.allowPrivateCandidates`).
//!
//! Skipping a candidate does not lock such a client out: its own checks reach the worker,
//! which answers (and checks back) the address they came from, a peer-reflexive candidate
//! proven by a STUN request signed with the session's ICE password.

use std::net::IpAddr;

/// Most candidates one connection may signal (offer plus trickle). Browsers send a handful
/// per interface and ICE server; this leaves room for several of each.
pub const MAX_CANDIDATES: usize = 32;

/// What to do with one candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Add it: the worker may check it.
    Use,
    /// Leave it out; the reason is a metric label.
    Skip(&'static str),
}

/// Whether `ip` is an address the worker should not check unless allowed.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || a == 0
                // 100.64.0.0/10: carrier-grade NAT, and many clusters' pod or service ranges.
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        }
    }
}

/// The verdict on one candidate attribute value (`candidate:…` or without the prefix).
/// A value that does not parse is left to the ICE agent, which refuses it.
pub fn judge(candidate: &str, allow_private: bool) -> Verdict {
    let value = candidate.strip_prefix("candidate:").unwrap_or(candidate);
    let Some(address) = value.split_whitespace().nth(4) else {
        return Verdict::Use;
    };
    match address.parse::<IpAddr>() {
        Err(_) => Verdict::Skip("candidate_hostname"),
        Ok(ip) if !allow_private && is_internal(ip) => Verdict::Skip("candidate_private"),
        Ok(_) => Verdict::Use,
    }
}

/// An offer with its unusable candidates taken out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilteredOffer {
    /// The offer without the skipped `a=candidate` lines.
    pub sdp: String,
    /// Candidates the offer signalled (kept and skipped): counts towards [`MAX_CANDIDATES`].
    pub signalled: usize,
    /// Why each skipped candidate was skipped.
    pub skipped: Vec<&'static str>,
}

/// Too many candidates for one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "a connection may signal at most {MAX_CANDIDATES} ICE candidates (offer and trickle together); this one signalled {0}"
)]
pub struct TooManyCandidates(pub usize);

/// Removes from `offer` the candidates [`judge`] skips; refuses an offer with more than
/// [`MAX_CANDIDATES`].
pub fn filter_offer(offer: &str, allow_private: bool) -> Result<FilteredOffer, TooManyCandidates> {
    let eol = if offer.contains("\r\n") { "\r\n" } else { "\n" };
    let mut sdp = String::with_capacity(offer.len());
    let mut signalled = 0;
    let mut skipped = Vec::new();
    for line in offer.lines() {
        if let Some(candidate) = line.trim_end().strip_prefix("a=candidate:") {
            signalled += 1;
            if signalled > MAX_CANDIDATES {
                return Err(TooManyCandidates(offer.matches("a=candidate:").count()));
            }
            if let Verdict::Skip(reason) = judge(candidate, allow_private) {
                skipped.push(reason);
                continue;
            }
        }
        sdp.push_str(line);
        sdp.push_str(eol);
    }
    Ok(FilteredOffer {
        sdp,
        signalled,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn internal_addresses_are_told_from_public_ones() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "::",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_internal(ip(internal)), "{internal}");
        }
        for public in [
            "203.0.113.7",
            "8.8.8.8",
            "100.128.0.1",
            "2001:db8::1",
            "::ffff:1.2.3.4",
        ] {
            assert!(!is_internal(ip(public)), "{public}");
        }
    }

    #[test]
    fn candidates_are_judged_by_address() {
        let host = |a: &str| format!("candidate:1 1 udp 2122260223 {a} 5000 typ host");
        assert_eq!(judge(&host("203.0.113.7"), false), Verdict::Use);
        assert_eq!(
            judge(&host("10.0.0.5"), false),
            Verdict::Skip("candidate_private")
        );
        assert_eq!(judge(&host("10.0.0.5"), true), Verdict::Use);
        assert_eq!(
            judge(&host("3f1e6a3c-1b2d.local"), true),
            Verdict::Skip("candidate_hostname")
        );
        assert_eq!(judge("garbage", false), Verdict::Use);
    }

    #[test]
    fn offers_lose_skipped_candidates_and_too_many_are_refused() {
        let offer = "v=0\r\nm=audio 9 x 111\r\n\
            a=candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host\r\n\
            a=candidate:2 1 udp 1686052607 203.0.113.7 6000 typ srflx raddr 0.0.0.0 rport 0\r\n\
            a=mid:0\r\n";
        let filtered = filter_offer(offer, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(filtered.signalled, 2);
        assert_eq!(filtered.skipped, vec!["candidate_private"]);
        assert!(!filtered.sdp.contains("127.0.0.1 5000"), "{}", filtered.sdp);
        assert!(
            filtered.sdp.contains("203.0.113.7 6000"),
            "{}",
            filtered.sdp
        );
        assert!(filtered.sdp.ends_with("a=mid:0\r\n"));
        assert_eq!(
            filter_offer(offer, true).map(|f| f.sdp),
            Ok(offer.to_owned())
        );

        let many: String = (0..=MAX_CANDIDATES)
            .map(|i| {
                format!(
                    "a=candidate:{i} 1 udp 1 203.0.113.7 {} typ host\r\n",
                    5000 + i
                )
            })
            .collect();
        let err = filter_offer(&format!("v=0\r\n{many}"), true).unwrap_err();
        assert_eq!(err, TooManyCandidates(MAX_CANDIDATES + 1));
    }
}
