//! Streaming text to speakable pieces: agent tokens in, whole sentences out, so TTS can
//! start on the first sentence while the agent is still writing the rest.

/// Collects deltas and yields complete sentences.
#[derive(Debug, Default)]
pub struct SentenceSplitter {
    pending: String,
}

/// A sentence this long (bytes) without an end mark is cut at its last space anyway, or
/// at its last whole character when it has none, so a run-on reply still starts speaking.
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
            // Cut at the last whitespace within the first MAX_SENTENCE bytes; text without
            // any (Chinese, Japanese, a run of digits) is cut at the last character that
            // fits, so a reply never waits for an end mark that does not come.
            let head = floor_char_boundary(&self.pending, MAX_SENTENCE);
            let at_space = self.pending[..head]
                .char_indices()
                .filter(|(_, c)| c.is_whitespace())
                .map(|(i, _)| i)
                .next_back()
                .filter(|&i| i > 0);
            return Some(at_space.unwrap_or(head)).filter(|&i| i > 0);
        }
        None
    }
}

/// The largest index `<= at` that starts a character of `text` (so `&text[..i]` is
/// valid), never cutting a multibyte character.
pub fn floor_char_boundary(text: &str, at: usize) -> usize {
    if at >= text.len() {
        return text.len();
    }
    (0..=at)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

/// `text` cut to at most `max` bytes on a character boundary, with `…` appended when
/// something was cut (the mark counts towards `max`).
pub fn truncate_text(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    const MARK: &str = "…";
    let keep = floor_char_boundary(text, max.saturating_sub(MARK.len()));
    std::borrow::Cow::Owned(format!("{}{MARK}", &text[..keep]))
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

    #[test]
    fn a_non_ascii_reply_without_an_end_mark_is_cut_on_character_boundaries() {
        let mut s = SentenceSplitter::default();
        // 100 three-byte characters, no space and no end mark: byte 200 is inside one.
        let reply = "天".repeat(100);
        let out = s.push(&reply);
        assert_eq!(out, ["天".repeat(66)], "cut after the last whole character");
        assert_eq!(s.finish(), Some("天".repeat(34)));
    }

    #[test]
    fn truncation_keeps_whole_characters_and_marks_the_cut() {
        assert_eq!(truncate_text("short", 10), "short");
        assert_eq!(truncate_text("ééééé", 8), "éé…");
        assert!(truncate_text(&"€".repeat(1_000), 100).len() <= 100);
        assert_eq!(floor_char_boundary("aé", 2), 1);
        assert_eq!(floor_char_boundary("aé", 9), 3);
    }

    /// Every non-whitespace character, in order.
    fn ink(text: &str) -> String {
        text.chars().filter(|c| !c.is_whitespace()).collect()
    }

    /// Feeds `text` cut at the byte offsets `cuts` (moved to character boundaries).
    fn split(text: &str, cuts: Vec<usize>) -> Vec<String> {
        let mut cuts: Vec<usize> = cuts
            .into_iter()
            .map(|c| floor_char_boundary(text, c))
            .collect();
        cuts.sort_unstable();
        let mut s = SentenceSplitter::default();
        let mut out = Vec::new();
        let mut last = 0;
        for c in cuts.into_iter().chain([text.len()]) {
            out.extend(s.push(&text[last..c]));
            assert!(
                s.pending.len() <= MAX_SENTENCE,
                "{} bytes held back",
                s.pending.len()
            );
            last = c;
        }
        out.extend(s.finish());
        out
    }

    proptest! {
        /// However the text is cut into deltas, the sentences plus the rest say every word
        /// once, in order.
        #[test]
        fn no_text_is_lost_or_repeated(text in "[a-z .!?\n]{0,300}", cuts in proptest::collection::vec(0usize..300, 0..20)) {
            let out = split(&text, cuts);
            prop_assert_eq!(ink(&out.join(" ")), ink(&text));
        }

        /// Any Unicode (multibyte characters, no spaces, CJK end marks) splits without a
        /// panic, loses nothing and never holds more than one sentence's worth back.
        #[test]
        fn arbitrary_unicode_splits_on_character_boundaries(text in "(\\PC|\\s){0,400}", cuts in proptest::collection::vec(0usize..1_600, 0..20)) {
            let out = split(&text, cuts);
            prop_assert_eq!(ink(&out.join(" ")), ink(&text));
        }

        /// Truncation never panics, never exceeds the limit (above the mark's length) and
        /// keeps a prefix of the text.
        #[test]
        fn truncation_is_a_prefix_within_the_limit(text in "\\PC{0,200}", max in 3usize..400) {
            let cut = truncate_text(&text, max);
            prop_assert!(cut.len() <= max);
            let kept = cut.strip_suffix('…').unwrap_or(&cut);
            prop_assert!(text.starts_with(kept));
        }
    }
}
