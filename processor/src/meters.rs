//! The metrics recorded for every envelope, registered once when the processor is made.
//!
//! `metrics::counter!` and friends look the metric up by name and labels in the recorder's
//! registry on every call; at 37,000 envelopes a second that was ~4 % of the embedded
//! server's CPU (perf). These handles are looked up once. Rare events (retries, failures,
//! drops) still use the macros where they happen.

use metrics::{Counter, Gauge, Histogram};

use common::frame::Feature;

pub(crate) struct Meters {
    /// `linker_bus_latency_seconds`, FAST then RELIABLE.
    bus_latency: [Histogram; 2],
    /// `linker_delivery_latency_seconds`, FAST then RELIABLE.
    delivery_latency: [Histogram; 2],
    pub held: Gauge,
    pub busy_senders: Gauge,
    /// `linker_processor_messages_total` by kind.
    pub messages: Counter,
    pub group_messages: Counter,
    pub channel_messages: Counter,
}

impl Meters {
    /// Registers the handles with the recorder installed now (none in tests: no-ops).
    pub(crate) fn new() -> Meters {
        let by_feature = |name: &'static str| {
            [Feature::Fast, Feature::Reliable]
                .map(|f| metrics::histogram!(name, "feature" => f.label()))
        };
        let kind = |kind: &'static str| metrics::counter!("linker_processor_messages_total", "kind" => kind);
        Meters {
            bus_latency: by_feature("linker_bus_latency_seconds"),
            delivery_latency: by_feature("linker_delivery_latency_seconds"),
            held: metrics::gauge!("linker_processor_held"),
            busy_senders: metrics::gauge!("linker_processor_busy_senders"),
            messages: kind("message"),
            group_messages: kind("group"),
            channel_messages: kind("channel"),
        }
    }

    pub(crate) fn bus_latency(&self, feature: Feature) -> &Histogram {
        &self.bus_latency[index(feature)]
    }

    pub(crate) fn delivery_latency(&self, feature: Feature) -> &Histogram {
        &self.delivery_latency[index(feature)]
    }
}

fn index(feature: Feature) -> usize {
    match feature {
        Feature::Fast => 0,
        Feature::Reliable => 1,
    }
}
