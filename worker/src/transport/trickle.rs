//! Trickle ICE over HTTP `PATCH` (RFC 9725 §4.3): the body is an SDP fragment
//! (`application/trickle-ice-sdpfrag`, RFC 8840) with the client's ICE credentials and
//! candidates, grouped by media section.
//!
//! The parser here is strict about what it reads (every line must be a known attribute
//! or an `m=` line, every candidate must parse) and tells the client which line it
//! refused. What the worker does with the result is in `signaling.rs`: candidates are
//! added to the peer connection; a fragment with *new* credentials asks for an ICE
//! restart, which the worker does not support (the `webrtc` 0.21 answerer can only
//! restart ICE through a whole new offer/answer, and WHIP has no answer to carry it
//! back), so it is refused with 422 as RFC 9725 §4.3.1 asks of a session that supports
//! trickle but not restarts.

/// One candidate of a fragment, with the media section it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FragCandidate {
    /// The attribute value with its `candidate:` prefix, as `add_ice_candidate` wants it.
    pub candidate: String,
    /// The section's `a=mid`, if it had one.
    pub mid: Option<String>,
    /// Index of the section among the fragment's `m=` lines.
    pub mline_index: u16,
}

/// A parsed fragment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SdpFrag {
    /// `a=ice-ufrag`, at session or media level.
    pub ufrag: Option<String>,
    /// `a=ice-pwd`, at session or media level.
    pub pwd: Option<String>,
    /// The candidates, in order.
    pub candidates: Vec<FragCandidate>,
    /// Whether the client said it has no more candidates.
    pub end_of_candidates: bool,
}

/// Why a fragment was refused; the message names the line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FragError {
    /// A line that is neither `m=` nor an attribute a fragment may carry.
    #[error(
        "line {line} of the fragment is not allowed in application/trickle-ice-sdpfrag: {text:?}"
    )]
    UnexpectedLine {
        /// 1-based line number.
        line: usize,
        /// The line, shortened.
        text: String,
    },
    /// A candidate that does not parse (RFC 8839 §5.1).
    #[error("line {line} of the fragment is not a valid ICE candidate ({reason}): {text:?}")]
    BadCandidate {
        /// 1-based line number.
        line: usize,
        /// The line, shortened.
        text: String,
        /// What the candidate parser said.
        reason: String,
    },
    /// The same credential given twice with different values.
    #[error("the fragment names two different {0} values")]
    ConflictingCredentials(&'static str),
    /// Nothing a trickle request can act on.
    #[error("the fragment carries no ICE credentials, candidate or end-of-candidates")]
    Empty,
}

impl FragError {
    /// Stable CamelCase reason, used as the JSON error `code`.
    pub fn reason(&self) -> &'static str {
        match self {
            FragError::UnexpectedLine { .. } => "MalformedSdpFrag",
            FragError::BadCandidate { .. } => "BadCandidate",
            FragError::ConflictingCredentials(_) => "ConflictingCredentials",
            FragError::Empty => "EmptySdpFrag",
        }
    }
}

/// Longest stretch of a refused line quoted back to the client.
const QUOTE: usize = 80;

fn quote(line: &str) -> String {
    line.chars().take(QUOTE).collect()
}

/// Parses an `application/trickle-ice-sdpfrag` body.
pub fn parse(body: &str) -> Result<SdpFrag, FragError> {
    let mut frag = SdpFrag::default();
    let mut section: Option<(u16, Option<String>)> = None;
    let mut sections: u16 = 0;
    for (n, raw) in body.lines().enumerate() {
        let line_no = n + 1;
        let line = raw.trim_end();
        if line.is_empty() {
            continue;
        }
        let unexpected = || FragError::UnexpectedLine {
            line: line_no,
            text: quote(line),
        };
        if line.starts_with("m=") {
            section = Some((sections, None));
            sections = sections.saturating_add(1);
            continue;
        }
        let Some(attribute) = line.strip_prefix("a=") else {
            return Err(unexpected());
        };
        let (name, value) = attribute.split_once(':').unwrap_or((attribute, ""));
        match name {
            "ice-ufrag" => set_once(&mut frag.ufrag, value, "ice-ufrag", unexpected)?,
            "ice-pwd" => set_once(&mut frag.pwd, value, "ice-pwd", unexpected)?,
            "mid" => match section.as_mut() {
                Some((_, mid)) if !value.is_empty() => *mid = Some(value.to_owned()),
                _ => return Err(unexpected()),
            },
            "candidate" => {
                if let Err(e) = rtc::ice::candidate::unmarshal_candidate(value) {
                    return Err(FragError::BadCandidate {
                        line: line_no,
                        text: quote(line),
                        reason: e.to_string(),
                    });
                }
                let (mline_index, mid) = section.clone().unwrap_or((0, None));
                frag.candidates.push(FragCandidate {
                    candidate: format!("candidate:{value}"),
                    mid,
                    mline_index,
                });
            }
            "end-of-candidates" if value.is_empty() => frag.end_of_candidates = true,
            // RFC 8840 §9 lets a fragment repeat these from the offer; they change nothing.
            "group" | "ice-options" => {}
            _ => return Err(unexpected()),
        }
    }
    if frag.ufrag.is_none()
        && frag.pwd.is_none()
        && frag.candidates.is_empty()
        && !frag.end_of_candidates
    {
        return Err(FragError::Empty);
    }
    Ok(frag)
}

fn set_once(
    slot: &mut Option<String>,
    value: &str,
    name: &'static str,
    unexpected: impl Fn() -> FragError,
) -> Result<(), FragError> {
    if value.is_empty() || value.contains(char::is_whitespace) {
        return Err(unexpected());
    }
    match slot {
        Some(existing) if existing != value => Err(FragError::ConflictingCredentials(name)),
        _ => {
            *slot = Some(value.to_owned());
            Ok(())
        }
    }
}

/// Whether an `If-Match` header value matches the entity-tag `etag` (RFC 9110 §13.1.1:
/// `*`, or a list of tags compared strongly).
pub fn if_match(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag == etag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 8840 §9's example fragment, with our own addresses.
    const RFC_EXAMPLE: &str = "a=ice-ufrag:EsAw\r\n\
        a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n\
        a=group:BUNDLE 0\r\n\
        m=audio 9 RTP/AVP 0\r\n\
        a=mid:0\r\n\
        a=candidate:1387637174 1 udp 2122260223 127.0.0.1 61764 typ host generation 0\r\n\
        a=candidate:3471623853 1 udp 2122194687 127.0.0.1 61765 typ host generation 0\r\n\
        a=end-of-candidates\r\n";

    #[test]
    fn the_rfc_example_fragment_is_read() {
        let frag = parse(RFC_EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(frag.ufrag.as_deref(), Some("EsAw"));
        assert_eq!(frag.pwd.as_deref(), Some("P2uYro0UCOQ4zxjKXaWCBui1"));
        assert_eq!(frag.candidates.len(), 2);
        assert_eq!(frag.candidates[0].mid.as_deref(), Some("0"));
        assert_eq!(frag.candidates[0].mline_index, 0);
        assert!(
            frag.candidates[1]
                .candidate
                .starts_with("candidate:3471623853 ")
        );
        assert!(frag.end_of_candidates);
    }

    #[test]
    fn refusals_name_the_line() {
        let cases = [
            ("a=ice-ufrag:x\r\nv=0\r\n", "MalformedSdpFrag", "line 2"),
            (
                "m=audio 9 RTP/AVP 0\na=candidate:not a candidate\n",
                "BadCandidate",
                "line 2",
            ),
            (
                "a=ice-ufrag:a\na=ice-ufrag:b\n",
                "ConflictingCredentials",
                "ice-ufrag",
            ),
            ("a=mid:0\n", "MalformedSdpFrag", "line 1"),
            ("a=rtpmap:111 opus/48000/2\n", "MalformedSdpFrag", "line 1"),
            ("\r\n\r\n", "EmptySdpFrag", "no ICE"),
        ];
        for (body, code, mentions) in cases {
            let err = parse(body).map(|_| ()).unwrap_err();
            assert_eq!(err.reason(), code, "{body:?}: {err}");
            assert!(err.to_string().contains(mentions), "{body:?}: {err}");
        }
    }

    #[test]
    fn candidates_remember_their_section() {
        let body = "m=audio 9 RTP/AVP 0\na=mid:a\nm=application 9 UDP/DTLS/SCTP x\na=mid:d\n\
            a=candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host\n";
        let frag = parse(body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(frag.candidates[0].mid.as_deref(), Some("d"));
        assert_eq!(frag.candidates[0].mline_index, 1);
    }

    #[test]
    fn if_match_compares_strong_tags_and_accepts_a_star() {
        assert!(if_match("\"abc\"", "\"abc\""));
        assert!(if_match("\"x\", \"abc\"", "\"abc\""));
        assert!(if_match("*", "\"abc\""));
        assert!(!if_match("\"abd\"", "\"abc\""));
        assert!(!if_match("W/\"abc\"", "\"abc\""));
    }

    proptest! {
        /// Whatever a client patches, the parser answers without panicking.
        #[test]
        fn any_body_is_parsed_without_panic(body in "(a=candidate:|a=ice-ufrag:|m=|a=mid:)?.{0,200}") {
            let _ = parse(&body);
        }
    }
}
