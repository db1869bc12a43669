//! Word error rate: transcripts normalised the same way (lower case, no punctuation,
//! digits and clock times spelled out) and compared by word edit distance.

/// Words of `text` after normalisation: `"At 7:30 p.m., call Anna!"` →
/// `at seven thirty pm call anna`.
pub fn normalise(text: &str) -> Vec<String> {
    let lowered = text
        .to_lowercase()
        .replace("a.m.", "am")
        .replace("p.m.", "pm")
        .replace(['-', ','], " ");
    let mut out = Vec::new();
    for raw in lowered.split_whitespace() {
        let token: String = raw
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, '\'' | ':' | '%'))
            .collect();
        let token = token.trim_matches(':');
        if token.is_empty() {
            continue;
        }
        let (token, percent) = match token.strip_suffix('%') {
            Some(t) => (t, true),
            None => (token, false),
        };
        if let Some((h, m)) = token.split_once(':')
            && let (Ok(h), Ok(m)) = (h.parse::<u32>(), m.parse::<u32>())
        {
            out.extend(number_words(h));
            if m > 0 {
                if m < 10 {
                    out.push("oh".into());
                }
                out.extend(number_words(m));
            }
        } else if let Ok(n) = token.parse::<u32>() {
            out.extend(number_words(n));
        } else if let Some(words) = ordinal(token) {
            out.extend(words);
        } else {
            out.push(token.to_owned());
        }
        if percent {
            out.push("percent".into());
        }
    }
    out
}

const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

/// `n` in words (`1250` → `one thousand two hundred fifty`), up to 999 999.
pub fn number_words(n: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut n = n.min(999_999);
    if n >= 1_000 {
        out.extend(number_words(n / 1_000));
        out.push("thousand".into());
        n %= 1_000;
        if n == 0 {
            return out;
        }
    }
    if n >= 100 {
        out.push(ONES[(n / 100) as usize].into());
        out.push("hundred".into());
        n %= 100;
        if n == 0 {
            return out;
        }
    }
    if n >= 20 {
        out.push(TENS[(n / 10) as usize].into());
        if !n.is_multiple_of(10) {
            out.push(ONES[(n % 10) as usize].into());
        }
    } else {
        out.push(ONES[n as usize].into());
    }
    out
}

fn ordinal(token: &str) -> Option<Vec<String>> {
    let digits = token
        .strip_suffix("st")
        .or_else(|| token.strip_suffix("nd"))
        .or_else(|| token.strip_suffix("rd"))
        .or_else(|| token.strip_suffix("th"))?;
    let n: u32 = digits.parse().ok()?;
    let mut words = number_words(n);
    let last = words.pop()?;
    let spoken = match last.as_str() {
        "one" => "first".to_owned(),
        "two" => "second".to_owned(),
        "three" => "third".to_owned(),
        "five" => "fifth".to_owned(),
        "eight" => "eighth".to_owned(),
        "nine" => "ninth".to_owned(),
        "twelve" => "twelfth".to_owned(),
        w if w.ends_with('y') => format!("{}ieth", &w[..w.len() - 1]),
        w => format!("{w}th"),
    };
    words.push(spoken);
    Some(words)
}

/// Word edits (substitutions, insertions, deletions) from `reference` to `heard`.
pub fn edits(reference: &[String], heard: &[String]) -> usize {
    let mut row: Vec<usize> = (0..=heard.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, h) in heard.iter().enumerate() {
            let substitute = diagonal + usize::from(r != h);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[heard.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_times_and_punctuation_are_spelled_out() {
        assert_eq!(
            normalise("At 7:30 p.m., call Anna! 21st, 5% and 1,250?").join(" "),
            "at seven thirty pm call anna twenty first five percent and one two hundred fifty"
        );
        assert_eq!(normalise("9:05").join(" "), "nine oh five");
    }

    #[test]
    fn edits_count_word_substitutions_insertions_and_deletions() {
        let r = normalise("set an alarm for six");
        assert_eq!(edits(&r, &normalise("set an alarm for six")), 0);
        assert_eq!(edits(&r, &normalise("set a alarm for six am")), 2);
        assert_eq!(edits(&r, &normalise("")), 5);
    }
}
