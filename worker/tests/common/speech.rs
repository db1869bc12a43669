//! Speech for the tests: espeak-ng sentences as 16 kHz PCM, and how many words came back.

use std::process::{Command, Stdio};

/// `text` spoken by espeak-ng with `voice`, as 16 kHz mono PCM16 (sox converts).
pub fn speak(text: &str, voice: &str) -> Vec<i16> {
    speak_at(text, voice, 16_000)
}

/// `text` spoken by espeak-ng with `voice`, as mono PCM16 at `rate` (sox converts).
pub fn speak_at(text: &str, voice: &str, rate: u32) -> Vec<i16> {
    let rate = rate.to_string();
    let mut espeak = Command::new("espeak-ng")
        .args(["--stdout", "-v", voice, text])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("espeak-ng (apt-get install espeak-ng): {e}"));
    let out = Command::new("sox")
        .args([
            "-t", "wav", "-", "-t", "raw", "-r", &rate, "-e", "signed", "-b", "16", "-c", "1", "-",
        ])
        .stdin(
            espeak
                .stdout
                .take()
                .unwrap_or_else(|| panic!("no espeak stdout")),
        )
        .output()
        .unwrap_or_else(|e| panic!("sox (apt-get install sox): {e}"));
    assert!(out.status.success(), "sox failed");
    assert!(matches!(espeak.wait().map(|s| s.success()), Ok(true)));
    out.stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Lower-case words without punctuation.
pub fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .collect::<String>()
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// The share of `reference`'s words that `heard` contains.
pub fn recall(reference: &str, heard: &str) -> f64 {
    let heard = words(heard);
    let reference = words(reference);
    let hits = reference.iter().filter(|w| heard.contains(w)).count();
    hits as f64 / reference.len().max(1) as f64
}
