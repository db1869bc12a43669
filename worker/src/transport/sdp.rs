//! The little SDP the worker reads and writes itself: whether an offer carries Opus
//! audio (so a bad offer gets a precise 400 before any peer connection exists), and the
//! answer's ICE candidates, which must name the UDP mux's advertised address.

use std::net::SocketAddr;

/// Why an offer is refused before negotiation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// Not an SDP session description at all.
    #[error("the body is not an SDP offer (it must start with \"v=0\")")]
    NotSdp,
    /// No `m=audio` section that is not rejected (port 0).
    #[error("the offer has no audio section")]
    NoAudio,
    /// Audio, but no `opus/48000` payload type in it.
    #[error("the offer's audio does not offer Opus at 48 kHz")]
    NoOpus,
}

impl OfferError {
    /// Stable CamelCase reason, used as the error `code`.
    pub fn reason(&self) -> &'static str {
        match self {
            OfferError::NotSdp => "MalformedSdp",
            OfferError::NoAudio => "NoAudio",
            OfferError::NoOpus => "NoOpus",
        }
    }
}

/// What the worker needs from an acceptable offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfferInfo {
    /// The payload type the offerer chose for Opus; the answer keeps it (RFC 3264 §6.1),
    /// so outgoing RTP carries it.
    pub opus_payload_type: u8,
}

/// Checks that `sdp` is an offer with an Opus 48 kHz audio section.
pub fn check_offer(sdp: &str) -> Result<OfferInfo, OfferError> {
    let mut lines = sdp.lines().map(str::trim_end);
    if lines.next() != Some("v=0") {
        return Err(OfferError::NotSdp);
    }
    let mut saw_audio = false;
    let mut audio_formats: Option<Vec<&str>> = None;
    for line in lines {
        if let Some(media) = line.strip_prefix("m=") {
            let fields: Vec<&str> = media.split_whitespace().collect();
            let live_audio = fields.first() == Some(&"audio") && fields.get(1) != Some(&"0");
            saw_audio |= live_audio;
            audio_formats = live_audio.then(|| fields.iter().skip(3).copied().collect());
            continue;
        }
        let (Some(formats), Some(rtpmap)) = (&audio_formats, line.strip_prefix("a=rtpmap:")) else {
            continue;
        };
        let Some((pt, encoding)) = rtpmap.split_once(' ') else {
            continue;
        };
        let mut parts = encoding.split('/');
        let is_opus = parts.next().is_some_and(|n| n.eq_ignore_ascii_case("opus"))
            && parts.next() == Some("48000");
        if is_opus
            && formats.contains(&pt)
            && let Ok(opus_payload_type) = pt.parse()
        {
            return Ok(OfferInfo { opus_payload_type });
        }
    }
    Err(if saw_audio {
        OfferError::NoOpus
    } else {
        OfferError::NoAudio
    })
}

/// The first `a=ice-ufrag` and `a=ice-pwd` of an SDP description (session or media
/// level; a bundled offer uses one pair for every section).
pub fn ice_credentials(sdp: &str) -> (Option<String>, Option<String>) {
    let first = |name: &str| {
        sdp.lines()
            .filter_map(|line| line.trim_end().strip_prefix(name))
            .map(str::to_owned)
            .next()
    };
    (first("a=ice-ufrag:"), first("a=ice-pwd:"))
}

/// Rewrites the answer's ICE candidates to the addresses clients can reach: the UDP mux's
/// `advertised` address and, when the worker runs the ICE-TCP listener, `tcp` (advertised
/// IP, TCP port). Host UDP candidates get the UDP address; passive TCP host candidates get
/// the TCP address when there is one. Everything else (active TCP candidates, which the
/// worker never uses because it does not connect out, and TCP candidates while no listener
/// runs) is dropped. A media section left without a kind of candidate gets one.
pub fn rewrite_candidates(answer: &str, advertised: SocketAddr, tcp: Option<SocketAddr>) -> String {
    let eol = if answer.contains("\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    let mut out = Vec::new();
    let (mut udp_kept, mut tcp_kept) = (0, 0);
    for line in answer.lines() {
        if let Some(candidate) = line.strip_prefix("a=candidate:") {
            let mut fields: Vec<&str> = candidate.split_whitespace().collect();
            let host = fields.len() >= 8 && fields[6] == "typ" && fields[7] == "host";
            let is_udp = host && fields[2].eq_ignore_ascii_case("udp");
            let is_passive_tcp = host
                && fields[2].eq_ignore_ascii_case("tcp")
                && fields.get(8..10) == Some(&["tcptype", "passive"][..]);
            let to = match (is_udp, is_passive_tcp, tcp) {
                (true, _, _) => Some(advertised),
                (_, true, Some(tcp)) => Some(tcp),
                _ => None,
            };
            if let Some(to) = to {
                let (ip, port) = (to.ip().to_string(), to.port().to_string());
                fields[4] = &ip;
                fields[5] = &port;
                out.push(format!("a=candidate:{}", fields.join(" ")));
                if is_udp {
                    udp_kept += 1;
                } else {
                    tcp_kept += 1;
                }
            }
            continue;
        }
        out.push(line.to_owned());
    }
    let mut missing = Vec::new();
    if udp_kept == 0 {
        missing.push(format!(
            "a=candidate:1 1 udp 2130706431 {} {} typ host",
            advertised.ip(),
            advertised.port()
        ));
    }
    if let Some(tcp) = tcp.filter(|_| tcp_kept == 0) {
        missing.push(format!(
            "a=candidate:2 1 tcp 1518280447 {} {} typ host tcptype passive",
            tcp.ip(),
            tcp.port()
        ));
    }
    if !missing.is_empty() {
        let mut with = Vec::with_capacity(out.len() + 8);
        for line in out {
            let is_mid = line.starts_with("a=mid:");
            with.push(line);
            if is_mid {
                with.extend(missing.iter().cloned());
            }
        }
        out = with;
    }
    let mut text = out.join(eol);
    text.push_str(eol);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BROWSER_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\n\
        a=mid:0\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n";

    #[test]
    fn a_browser_offer_has_opus_at_its_payload_type() {
        assert_eq!(
            check_offer(BROWSER_OFFER),
            Ok(OfferInfo {
                opus_payload_type: 111
            })
        );
        let lf_only = BROWSER_OFFER.replace("\r\n", "\n").replace("111", "96");
        assert_eq!(check_offer(&lf_only).map(|o| o.opus_payload_type), Ok(96));
    }

    #[test]
    fn offers_without_usable_opus_audio_are_told_apart() {
        assert_eq!(check_offer("hello"), Err(OfferError::NotSdp));
        assert_eq!(check_offer(""), Err(OfferError::NotSdp));
        let video = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
        assert_eq!(check_offer(video), Err(OfferError::NoAudio));
        let pcmu = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n";
        assert_eq!(check_offer(pcmu), Err(OfferError::NoOpus));
        let rejected = BROWSER_OFFER.replace("m=audio 9", "m=audio 0");
        assert_eq!(check_offer(&rejected), Err(OfferError::NoAudio));
        // Opus mapped, but not among the m-line's formats: not offered.
        let unlisted = BROWSER_OFFER.replace("SAVPF 111 0", "SAVPF 0");
        assert_eq!(check_offer(&unlisted), Err(OfferError::NoOpus));
    }

    #[test]
    fn answer_candidates_name_the_mux_address() {
        let answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
            a=candidate:123 1 udp 2130706431 10.0.0.5 41234 typ host\r\n\
            a=candidate:124 1 tcp 1671430143 10.0.0.5 9 typ host tcptype passive\r\n\
            a=end-of-candidates\r\n";
        let advertised: SocketAddr = "203.0.113.7:50000"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let out = rewrite_candidates(answer, advertised, None);
        assert!(
            out.contains("a=candidate:123 1 udp 2130706431 203.0.113.7 50000 typ host\r\n"),
            "{out}"
        );
        assert!(!out.contains("tcp"), "{out}");
        assert!(!out.contains("41234"), "{out}");
    }

    #[test]
    fn the_passive_tcp_candidate_names_the_tcp_port_only_when_the_listener_runs() {
        let answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
            a=candidate:123 1 udp 2130706431 10.0.0.5 41234 typ host\r\n\
            a=candidate:124 1 tcp 1671430143 10.0.0.5 39001 typ host tcptype passive\r\n\
            a=candidate:125 1 tcp 1671430143 10.0.0.5 9 typ host tcptype active\r\n";
        let parse = |a: &str| a.parse::<SocketAddr>().unwrap_or_else(|e| panic!("{e}"));
        let (udp, tcp) = (parse("203.0.113.7:50000"), parse("203.0.113.7:50001"));
        let out = rewrite_candidates(answer, udp, Some(tcp));
        assert!(
            out.contains(
                "a=candidate:124 1 tcp 1671430143 203.0.113.7 50001 typ host tcptype passive\r\n"
            ),
            "{out}"
        );
        assert_eq!(
            out.matches(" tcp ").count(),
            1,
            "no active candidate: {out}"
        );
        assert!(!out.contains("39001") && !out.contains("10.0.0.5"), "{out}");

        // Without a listener no TCP candidate is named; with one, a section the driver left
        // without a passive candidate gets one.
        assert!(!rewrite_candidates(answer, udp, None).contains(" tcp "));
        let bare = "v=0\nm=audio 9 UDP/TLS/RTP/SAVPF 111\na=mid:0\n";
        let out = rewrite_candidates(bare, udp, Some(tcp));
        assert!(
            out.contains("tcp 1518280447 203.0.113.7 50001 typ host tcptype passive\n"),
            "{out}"
        );
        assert!(out.contains("203.0.113.7 50000 typ host\n"), "{out}");
    }

    #[test]
    fn an_answer_without_candidates_gets_one_per_media_section() {
        let answer = "v=0\nm=audio 9 UDP/TLS/RTP/SAVPF 111\na=mid:0\nm=application 9 x\na=mid:1\n";
        let advertised: SocketAddr = "127.0.0.1:50000".parse().unwrap_or_else(|e| panic!("{e}"));
        let out = rewrite_candidates(answer, advertised, None);
        assert_eq!(out.matches("127.0.0.1 50000 typ host").count(), 2, "{out}");
    }

    #[test]
    fn the_offers_ice_credentials_are_read() {
        let offer = "v=0\r\nm=audio 9 x 111\r\na=ice-ufrag:abcd\r\na=ice-pwd:secret\r\n";
        assert_eq!(
            ice_credentials(offer),
            (Some("abcd".to_owned()), Some("secret".to_owned()))
        );
        assert_eq!(ice_credentials("v=0\r\n"), (None, None));
    }

    proptest! {
        /// Whatever a client posts, the check answers without panicking.
        #[test]
        fn any_body_is_checked_without_panic(body in ".{0,400}") {
            let _ = check_offer(&body);
            let _ = check_offer(&format!("v=0\r\n{body}"));
        }
    }
}
