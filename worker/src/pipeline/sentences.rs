//! Streaming text to speakable pieces: agent tokens in, whole sentences out, so TTS can
//! start on the first sentence while the agent is still writing the rest.

/// Collects deltas and yields complete sentences.
#[derive(Debug, Default)]
pub struct SentenceSplitter {
    pending: String,
}

/// A sentence this long without an end mark is cut at a space anyway, so a run-on reply
/// still starts speaking.
const MAX_SENTENCE: usize = 200;

impl SentenceSplitter {
    /// Appends `delta`; returns the sentences it completed (trimmed, non-empty).
    pub fn push(&mut self, delta: &str) -> Vec<String> {
        self.pending.push_str(delta);
        let mut out = Vec::new();
        loop {
            let cut = self.boundary();
            let Some(end) = cut else { break };
            let sentence: String = self.pending.drain(..end).collect();
            let sentence = sentence.trim();
            if !sentence.is_empty() {
                out.push(sentence.to_owned());
            }
        }
        out
    }

    /// The rest, when the agent is done.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.pending);
        let rest = rest.trim();
        (!rest.is_empty()).then(|| rest.to_owned())
    }

    /// Byte index just after the first sentence end followed by whitespace, or a newline.
    fn boundary(&self) -> Option<usize> {
        let mut chars = self.pending.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '\n' {
                return Some(i + 1);
            }
            if matches!(c, '.' | '!' | '?' | '。' | '！' | '？')
                && let Some(&(j, next)) = chars.peek()
                && next.is_whitespace()
            {
                return Some(j);
            }
        }
        if self.pending.len() > MAX_SENTENCE {
            return self.pending[..MAX_SENTENCE].rfind(' ').filter(|&i| i > 0);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sentences_come_out_as_soon_as_they_end() {
        let mut s = SentenceSplitter::default();
        assert!(s.push("Hello the").is_empty());
        assert_eq!(s.push("re. How are"), ["Hello there."]);
        assert!(s.push(" you").is_empty());
        assert_eq!(s.push("? Fine"), ["How are you?"]);
        assert_eq!(s.finish().as_deref(), Some("Fine"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn decimals_do_not_split_and_long_runs_do() {
        let mut s = SentenceSplitter::default();
        assert!(s.push("It costs 3.50 dollars").is_empty());
        let long = "word ".repeat(60);
        let out = s.push(&long);
        assert_eq!(out.len(), 1);
        assert!(out[0].len() <= MAX_SENTENCE);
    }

    proptest! {
        /// However the text is cut into deltas, the sentences plus the rest say every word
        /// once, in order.
        #[test]
        fn no_text_is_lost_or_repeated(text in "[a-z .!?\n]{0,300}", cuts in proptest::collection::vec(0usize..300, 0..20)) {
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= text.len()).collect();
            cuts.sort_unstable();
            let mut s = SentenceSplitter::default();
            let mut out = Vec::new();
            let mut last = 0;
            for c in cuts.into_iter().chain([text.len()]) {
                out.extend(s.push(&text[last..c]));
                last = c;
            }
            out.extend(s.finish());
            let words = |t: &str| t.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
            prop_assert_eq!(words(&out.join(" ")), words(&text));
        }
    }
}
