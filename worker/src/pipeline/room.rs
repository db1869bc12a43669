//! One conversation, several connections: the pipeline of a multi-user session, shared by
//! the connections of its participants.
//!
//! Each connection gets a [`Seat`], which the transports drive like any other
//! speech-to-speech provider. The room runs its own 20 ms clock: at each tick it mixes one
//! frame from every seat (a seat that sent nothing adds silence), feeds the mix to the one
//! pipeline, and hands the pipeline's frame and events to every seat. So every participant
//! hears the agent, the agent hears everyone, and the pipeline sees exactly one frame per
//! 20 ms however many clients there are and however their clocks drift. A client's clock
//! never drives the shared pipeline: two clients would otherwise feed it twice as fast.
//!
//! Who spoke is measured before mixing: each tick adds every seat's speech energy to
//! [`SpeakerLabels`], and the pipeline asks it, when a user turn ends, whose voice carried
//! most of it. That label goes with the turn to the agent and into the transcript.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use crate::media::echo::SpeechToSpeech;
use crate::media::{FRAME_PERIOD, FRAME_SAMPLES, Frame};

/// Frames a seat may queue in either direction (100 ms) before the oldest is dropped: a
/// client that stalls or bursts loses old audio instead of delaying everyone.
const QUEUED_FRAMES: usize = 5;
/// Events a seat may queue before the oldest is dropped.
const QUEUED_EVENTS: usize = 256;
/// Mean square amplitude above which a frame counts as someone speaking (about -36 dBFS:
/// well above line noise, well below any voice).
const SPEECH_ENERGY: f64 = 500.0 * 500.0;

/// Speech energy per participant since the last user turn ended.
#[derive(Clone, Debug, Default)]
pub struct SpeakerLabels(Arc<Mutex<HashMap<String, f64>>>);

impl SpeakerLabels {
    fn add(&self, participant: &str, energy: f64) {
        *self.lock().entry(participant.to_owned()).or_default() += energy;
    }

    /// The participant who spoke most since the last call, and starts counting anew; `None`
    /// when nobody spoke.
    pub fn take_dominant(&self) -> Option<String> {
        let counted = std::mem::take(&mut *self.lock());
        counted
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
            .map(|(participant, _)| participant)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, f64>> {
        // One map operation per use: a poisoned lock is still whole.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An open room and the session incarnation (uid) it belongs to.
type OpenRoom = (String, Weak<Mutex<Room>>);

/// The rooms of this worker's multi-user sessions, by session id.
#[derive(Debug, Default)]
pub struct Rooms {
    rooms: Mutex<HashMap<String, OpenRoom>>,
}

impl Rooms {
    /// A seat for `participant` in the room of session `session_id` (incarnation `uid`),
    /// opening the room with `build`'s pipeline if it has none. The room closes (and its
    /// pipeline is dropped) when its last seat is dropped. Must run inside a tokio runtime.
    pub fn seat(
        &self,
        session_id: &str,
        uid: &str,
        participant: &str,
        build: impl FnOnce(SpeakerLabels) -> Box<dyn SpeechToSpeech>,
    ) -> Box<dyn SpeechToSpeech> {
        let mut rooms = self.rooms.lock().unwrap_or_else(PoisonError::into_inner);
        rooms.retain(|_, (_, room)| room.strong_count() > 0);
        let open = rooms
            .get(session_id)
            .filter(|(held_uid, _)| held_uid == uid)
            .and_then(|(_, room)| room.upgrade());
        let room = open.unwrap_or_else(|| {
            let labels = SpeakerLabels::default();
            let room = Room::open(build(labels.clone()), labels);
            rooms.insert(
                session_id.to_owned(),
                (uid.to_owned(), Arc::downgrade(&room)),
            );
            room
        });
        Box::new(Seat::join(room, participant))
    }
}

/// The shared pipeline and what each seat has yet to send and receive.
struct Room {
    pipeline: Box<dyn SpeechToSpeech>,
    labels: SpeakerLabels,
    seats: HashMap<u64, SeatQueues>,
    next_seat: u64,
}

#[derive(Default)]
struct SeatQueues {
    participant: String,
    input: VecDeque<Frame>,
    output: VecDeque<Frame>,
    events: VecDeque<String>,
    /// Samples dropped from this seat's queues, reported on its next push.
    dropped: usize,
}

impl Room {
    fn open(mut pipeline: Box<dyn SpeechToSpeech>, labels: SpeakerLabels) -> Arc<Mutex<Room>> {
        pipeline.connected();
        let room = Arc::new(Mutex::new(Room {
            pipeline,
            labels,
            seats: HashMap::new(),
            next_seat: 0,
        }));
        tokio::spawn(run_clock(Arc::downgrade(&room)));
        room
    }

    /// One 20 ms step: mix, feed, fan out.
    fn tick(&mut self) {
        let mut mix = [0i32; FRAME_SAMPLES];
        for seat in self.seats.values_mut() {
            let Some(frame) = seat.input.pop_front() else {
                continue;
            };
            let mut energy = 0.0;
            for (sum, &sample) in mix.iter_mut().zip(frame.iter()) {
                *sum += i32::from(sample);
                energy += f64::from(sample) * f64::from(sample);
            }
            let energy = energy / FRAME_SAMPLES as f64;
            if energy > SPEECH_ENERGY {
                self.labels.add(&seat.participant, energy);
            }
        }
        let mut mixed: Frame = [0; FRAME_SAMPLES];
        for (out, sum) in mixed.iter_mut().zip(mix) {
            *out = sum.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
        }
        // The pipeline's own queue limit applies to the mix; what it drops it counts.
        let _ = self.pipeline.push(&mixed);
        let mut reply: Frame = [0; FRAME_SAMPLES];
        let speaking = self.pipeline.pull(&mut reply);
        let mut events = Vec::new();
        while let Some(event) = self.pipeline.next_event() {
            events.push(event);
        }
        for seat in self.seats.values_mut() {
            if speaking {
                if seat.output.len() == QUEUED_FRAMES {
                    seat.output.pop_front();
                    seat.dropped += FRAME_SAMPLES;
                }
                seat.output.push_back(reply);
            }
            for event in &events {
                if seat.events.len() == QUEUED_EVENTS {
                    seat.events.pop_front();
                }
                seat.events.push_back(event.clone());
            }
        }
    }
}

/// Ticks the room every 20 ms until its last seat is gone. A late tick is skipped, not
/// made up: the pipeline must never see a burst.
async fn run_clock(room: Weak<Mutex<Room>>) {
    let mut ticks = tokio::time::interval(FRAME_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        let Some(room) = room.upgrade() else { return };
        lock(&room).tick();
    }
}

fn lock(room: &Mutex<Room>) -> MutexGuard<'_, Room> {
    // A panic inside the pipeline while locked leaves queues that are still consistent.
    room.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One participant's connection to a room.
pub struct Seat {
    room: Arc<Mutex<Room>>,
    id: u64,
}

impl Seat {
    fn join(room: Arc<Mutex<Room>>, participant: &str) -> Self {
        let id = {
            let mut open = lock(&room);
            let id = open.next_seat;
            open.next_seat += 1;
            open.seats.insert(
                id,
                SeatQueues {
                    participant: participant.to_owned(),
                    ..SeatQueues::default()
                },
            );
            id
        };
        Self { room, id }
    }

    fn with<T>(&self, f: impl FnOnce(&mut SeatQueues) -> T) -> Option<T> {
        lock(&self.room).seats.get_mut(&self.id).map(f)
    }
}

impl SpeechToSpeech for Seat {
    fn name(&self) -> &'static str {
        "room"
    }

    fn push(&mut self, frame: &Frame) -> usize {
        self.with(|seat| {
            if seat.input.len() == QUEUED_FRAMES {
                seat.input.pop_front();
                seat.dropped += FRAME_SAMPLES;
            }
            seat.input.push_back(*frame);
            std::mem::take(&mut seat.dropped)
        })
        .unwrap_or(0)
    }

    fn pull(&mut self, out: &mut Frame) -> bool {
        self.with(|seat| seat.output.pop_front())
            .flatten()
            .map(|frame| *out = frame)
            .is_some()
    }

    fn next_event(&mut self) -> Option<String> {
        self.with(|seat| seat.events.pop_front()).flatten()
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        lock(&self.room).seats.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::echo::Echo;

    fn tone(amplitude: i16) -> Frame {
        let mut frame = [0; FRAME_SAMPLES];
        for (i, s) in frame.iter_mut().enumerate() {
            *s = if i % 2 == 0 { amplitude } else { -amplitude };
        }
        frame
    }

    #[tokio::test]
    async fn everyone_hears_the_mix_and_the_loudest_voice_labels_the_turn() {
        let rooms = Rooms::default();
        let labels = Arc::new(Mutex::new(None));
        let keep = labels.clone();
        let mut alice = rooms.seat("ns/s", "u1", "alice", move |l| {
            *keep.lock().unwrap_or_else(PoisonError::into_inner) = Some(l);
            Box::new(Echo::new(50))
        });
        let mut bob = rooms.seat("ns/s", "u1", "bob", |_| panic!("the room is open"));
        for _ in 0..10 {
            alice.push(&tone(3_000));
            bob.push(&tone(1_000));
            tokio::time::sleep(FRAME_PERIOD).await;
        }
        let mut heard = [0; FRAME_SAMPLES];
        // A tick that fell between two pushes mixed silence; every other frame is the mix.
        let (mut a, mut b, mut mixed) = (0, 0, 0);
        while alice.pull(&mut heard) {
            assert!([0, 4_000].contains(&heard[0]), "alice heard {}", heard[0]);
            mixed += usize::from(heard[0] == 4_000);
            a += 1;
        }
        while bob.pull(&mut heard) {
            assert!([0, 4_000].contains(&heard[0]), "bob heard {}", heard[0]);
            b += 1;
        }
        assert!(mixed > 0, "nobody heard both voices mixed");
        assert!(a == b, "both seats got the same frames: {a} and {b}");
        let labels = labels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| panic!("the room was built"));
        assert_eq!(labels.take_dominant().as_deref(), Some("alice"));
        assert_eq!(labels.take_dominant(), None, "counting starts anew");
    }

    #[tokio::test]
    async fn a_stalled_client_loses_old_audio_and_a_new_incarnation_gets_a_new_room() {
        let rooms = Rooms::default();
        let mut alice = rooms.seat("ns/s", "u1", "alice", |_| Box::new(Echo::new(50)));
        let dropped: usize = (0..QUEUED_FRAMES + 3).map(|_| alice.push(&tone(100))).sum();
        assert_eq!(
            dropped,
            3 * FRAME_SAMPLES,
            "beyond 100 ms the oldest is dropped"
        );
        let built = Arc::new(Mutex::new(false));
        let flag = built.clone();
        let _other = rooms.seat("ns/s", "u2", "alice", move |_| {
            *flag.lock().unwrap_or_else(PoisonError::into_inner) = true;
            Box::new(Echo::new(50))
        });
        assert!(
            *built.lock().unwrap_or_else(PoisonError::into_inner),
            "a re-created session (new uid) must not join the old room"
        );
    }
}
