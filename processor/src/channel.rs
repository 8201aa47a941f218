//! CHANNEL_MESSAGE: a post written to every member socket of a channel.
//!
//! Members are looked up in presence (the connectors keep them there); the frame goes once to
//! each connector that holds members, which writes it to the member sockets whose subscription
//! takes it (echo off: not the sender's own). Only members online
//! now receive it: nothing is stored for a channel, and sockets of the acknowledged protocol
//! get it unnumbered. The sender's confirmation (if asked for, with a reference) goes out once
//! at least one socket took the message.

use serde_json::value::RawValue;

use common::channel::Channel;
use common::envelope::{ConnectorCommand, PostMark};
use common::frame::{Feature, out_channel_message};

use crate::deliver::{Meta, by_connector};
use crate::{ProcessError, Processor};

impl Processor {
    pub(crate) async fn channel_message(
        &self,
        meta: Meta,
        channel: &Channel,
        content: &RawValue,
    ) -> Result<(), ProcessError> {
        let members = self.presence.members(channel).await?;
        let frame = out_channel_message(channel, &meta.from, content, meta.reference.as_deref());
        let confirm = meta.confirmation();
        let report = meta.feature == Feature::Reliable || confirm.is_some();
        let mut written = false;
        for (connector, targets) in by_connector(members.iter().map(|(u, s)| (u, s))) {
            let command = ConnectorCommand::Post {
                targets,
                frame: frame.clone(),
                feature: meta.feature,
                mark: PostMark::Live {
                    channel: channel.clone(),
                    from: meta.from.clone(),
                    id: meta.id,
                    seq: None,
                },
            };
            written |= self
                .send(&connector, command, report)
                .await
                .iter()
                .any(|w| *w);
        }
        if !written {
            metrics::counter!("linker_channel_undelivered_total", "feature" => meta.feature.label())
                .increment(1);
            return Ok(());
        }
        if let Some(confirm) = confirm {
            self.confirm(confirm, meta.id).await?;
        }
        Ok(())
    }
}
