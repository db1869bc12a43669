use super::*;

fn bytes(samples: impl Iterator<Item = i16>) -> Vec<u8> {
    samples.flat_map(|s| s.to_le_bytes()).collect()
}

fn rate(hz: u32) -> Rate {
    Rate::new(hz).unwrap_or_else(|| panic!("{hz} is a WebSocket rate"))
}

#[test]
fn only_the_four_pcm_rates_are_rates() {
    for hz in [8_000, 16_000, 24_000, 48_000] {
        assert_eq!(Rate::new(hz).map(Rate::hz), Some(hz));
    }
    for hz in [0, 11_025, 22_050, 44_100, 96_000] {
        assert_eq!(Rate::new(hz), None, "{hz}");
    }
}

#[test]
fn samples_split_across_messages_are_joined() {
    let mut pipeline = Pipeline::new(rate(48_000));
    let data = bytes((0..FRAME_SAMPLES as i16).map(|i| i * 3));
    // Split in the middle of a sample.
    pipeline.push_bytes(&data[..101]);
    assert!(
        pipeline.pull_bytes().is_none(),
        "half a frame is not a frame"
    );
    pipeline.push_bytes(&data[101..]);
    assert_eq!(pipeline.pull_bytes(), Some(data));
}

/// Upward crossings per second of `samples` at `hz`: the frequency of a clean tone.
fn crossings_per_second(samples: &[i16], hz: u32) -> f64 {
    let ups = samples.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
    ups as f64 * f64::from(hz) / samples.len() as f64
}

fn tone(hz: u32, seconds: f64) -> Vec<i16> {
    let n = (f64::from(hz) * seconds) as usize;
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(hz);
            (8_000.0 * (2.0 * std::f64::consts::PI * 1_000.0 * t).sin()) as i16
        })
        .collect()
}

/// A provider that keeps the 48 kHz frames it hears and answers each with the next
/// frame of its own 1 kHz tone at 48 kHz: the two sides are measured apart, so a
/// resampler off by any factor shows, even one wrong the same way in both directions
/// (an echo would hide that).
struct Probe {
    heard: std::sync::Arc<std::sync::Mutex<Vec<i16>>>,
    voice: std::vec::IntoIter<i16>,
    owed: usize,
}

impl SpeechToSpeech for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn push(&mut self, frame: &Frame) -> usize {
        self.heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(frame);
        self.owed += 1;
        0
    }
    fn pull(&mut self, out: &mut Frame) -> bool {
        if self.owed == 0 {
            return false;
        }
        self.owed -= 1;
        out.iter_mut()
            .for_each(|s| *s = self.voice.next().unwrap_or(0));
        true
    }
}

#[test]
fn every_rate_is_heard_at_48_khz_and_answered_at_its_own_rate_at_the_right_pitch() {
    for hz in [8_000, 16_000, 24_000, 48_000] {
        let heard = std::sync::Arc::default();
        let probe = Probe {
            heard: std::sync::Arc::clone(&heard),
            voice: tone(PIPELINE_HZ, 2.0).into_iter(),
            owed: 0,
        };
        let mut pipeline = Pipeline::with_provider(rate(hz), Box::new(probe));
        let sent = tone(hz, 1.0);
        let mut back = Vec::new();
        for chunk in sent.chunks(hz as usize / 50) {
            pipeline.push_bytes(&bytes(chunk.iter().copied()));
            while let Some(reply) = pipeline.pull_bytes() {
                back.extend(
                    reply
                        .chunks_exact(2)
                        .map(|b| i16::from_le_bytes([b[0], b[1]])),
                );
            }
        }
        let heard = heard.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // One second in is (nearly) one second at 48 kHz, and one second back at `hz`:
        // what is missing is the resampler's few samples of lag and the part of a frame
        // still being filled, together under two 20 ms frames.
        let (wide, narrow) = (PIPELINE_HZ as usize, hz as usize);
        assert!(
            heard.len() <= wide && heard.len() + 2 * FRAME_SAMPLES > wide,
            "{hz} Hz: {} samples heard",
            heard.len()
        );
        assert!(
            back.len() <= narrow && back.len() + 2 * narrow / 50 > narrow,
            "{hz} Hz: {} samples back",
            back.len()
        );
        let pitch_in = crossings_per_second(&heard[wide / 10..], PIPELINE_HZ);
        let pitch_out = crossings_per_second(&back[narrow / 10..], hz);
        assert!(
            (pitch_in - 1_000.0).abs() < 15.0,
            "{hz} Hz client: the provider heard {pitch_in} Hz"
        );
        assert!(
            (pitch_out - 1_000.0).abs() < 15.0,
            "{hz} Hz client: the client heard {pitch_out} Hz"
        );
    }
}
