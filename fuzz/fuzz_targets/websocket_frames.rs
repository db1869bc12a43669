//! `cargo xtask fuzz websocket_frames`: see `voice_fuzz::websocket_frames` for what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| voice_fuzz::websocket_frames(data));
