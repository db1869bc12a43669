//! What a client's RTCP says about the stream we send it: the reception report blocks
//! (RFC 3550 §6.4) about our SSRC, whether they arrive in a receiver report (a client
//! that only listens, like aiortc's receiver) or inside a sender report (a client that
//! also sends, like a browser).
//!
//! `rtc`'s own statistics read receiver reports only, and keep jitter in RTP timestamp
//! units, so the worker reads the report blocks itself, with an interceptor
//! ([`ReceptionReportMeter`]) on each connection's chain that watches inbound RTCP pass and
//! records every block about a stream we send into the metrics.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

use crate::metrics::MediaMetrics;
use rtc::rtcp::compound_packet::CompoundPacket;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;

/// One reception report about our stream, in plain units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReceptionQuality {
    /// Fraction of our packets lost since the previous report, 0 to 1.
    pub fraction_lost: f64,
    /// Interarrival jitter.
    pub jitter: Duration,
    /// Packets lost since the stream started (RFC 3550's 24-bit cumulative count).
    pub total_lost: u32,
}

impl ReceptionQuality {
    /// Reads one report block; `clock_rate` is the stream's RTP clock (48 kHz for Opus).
    pub fn from_block(block: &ReceptionReport, clock_rate: u32) -> Self {
        // RFC 3550 §6.4.1: fraction lost is a fixed-point number with the binary point at
        // the left edge; jitter is in timestamp units.
        Self {
            fraction_lost: f64::from(block.fraction_lost) / 256.0,
            // Integer microseconds: the block is the peer's, so no float conversion that
            // could panic.
            jitter: Duration::from_micros(
                u64::from(block.jitter) * 1_000_000 / u64::from(clock_rate.max(1)),
            ),
            total_lost: block.total_lost,
        }
    }
}

/// Every report block about `ssrc` in `packets`, in order.
pub fn about_ssrc(
    packets: &[Box<dyn rtcp::Packet>],
    ssrc: u32,
    clock_rate: u32,
) -> Vec<ReceptionQuality> {
    let mut found = Vec::new();
    for packet in packets {
        collect(packet.as_ref(), ssrc, clock_rate, &mut found);
    }
    found
}

fn collect(packet: &dyn rtcp::Packet, ssrc: u32, clock_rate: u32, out: &mut Vec<ReceptionQuality>) {
    let any = packet.as_any();
    let blocks: &[ReceptionReport] = if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
        &rr.reports
    } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
        &sr.reports
    } else if let Some(compound) = any.downcast_ref::<CompoundPacket>() {
        for inner in &compound.0 {
            collect(inner.as_ref(), ssrc, clock_rate, out);
        }
        return;
    } else {
        return;
    };
    out.extend(
        blocks
            .iter()
            .filter(|block| block.ssrc == ssrc)
            .map(|block| ReceptionQuality::from_block(block, clock_rate)),
    );
}

/// Where the meter sits on the interceptor chain: last, nearest the application, so it
/// sees inbound RTCP after every interceptor that acts on it (it changes nothing).
pub const METER_SLOT: usize = 14_500;

/// An interceptor that records the reception reports about our streams and passes every
/// packet on unchanged.
pub struct ReceptionReportMeter {
    metrics: MediaMetrics,
    /// RTP clock rate of each stream we send, by SSRC.
    local: HashMap<u32, u32>,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl ReceptionReportMeter {
    /// A meter that records into `metrics` under the `webrtc` transport.
    pub fn new(metrics: MediaMetrics) -> Self {
        Self {
            metrics,
            local: HashMap::new(),
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for ReceptionReportMeter {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            for (&ssrc, &clock_rate) in &self.local {
                for report in about_ssrc(packets, ssrc, clock_rate) {
                    self.metrics.observe_reception_report(
                        "webrtc",
                        report.fraction_lost,
                        report.jitter,
                    );
                }
            }
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for ReceptionReportMeter {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.local.insert(info.ssrc, info.clock_rate);
    }

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.local.remove(&info.ssrc);
    }

    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}

    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(ssrc: u32, fraction_lost: u8, jitter: u32) -> ReceptionReport {
        ReceptionReport {
            ssrc,
            fraction_lost,
            total_lost: 3,
            jitter,
            ..Default::default()
        }
    }

    #[test]
    fn blocks_about_our_ssrc_are_read_from_receiver_and_sender_reports() {
        let packets: Vec<Box<dyn rtcp::Packet>> = vec![
            Box::new(ReceiverReport {
                ssrc: 1,
                reports: vec![block(42, 64, 480), block(7, 255, 1)],
                ..Default::default()
            }),
            Box::new(SenderReport {
                ssrc: 1,
                reports: vec![block(42, 0, 96)],
                ..Default::default()
            }),
        ];
        let found = about_ssrc(&packets, 42, 48_000);
        assert_eq!(found.len(), 2, "{found:?}");
        // 64/256 lost; 480 timestamp units at 48 kHz are 10 ms.
        assert_eq!(found[0].fraction_lost, 0.25);
        assert_eq!(found[0].jitter, Duration::from_millis(10));
        assert_eq!(found[0].total_lost, 3);
        assert_eq!(found[1].fraction_lost, 0.0);
        assert_eq!(found[1].jitter, Duration::from_millis(2));
    }

    #[test]
    fn compound_packets_are_opened_and_other_streams_ignored() {
        let inner: Vec<Box<dyn rtcp::Packet>> = vec![Box::new(ReceiverReport {
            ssrc: 1,
            reports: vec![block(42, 128, 0)],
            ..Default::default()
        })];
        let packets: Vec<Box<dyn rtcp::Packet>> = vec![Box::new(CompoundPacket(inner))];
        assert_eq!(about_ssrc(&packets, 42, 48_000)[0].fraction_lost, 0.5);
        assert!(about_ssrc(&packets, 43, 48_000).is_empty());
    }
}
