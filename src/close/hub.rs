//! Hub messages not delivered: the `wsgate_hub_dropped_total{reason}` label.

/// Why a hub message was not delivered to a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubDrop {
    /// The recipient's queue overflowed and its policy closes it.
    SlowConsumer,
    /// The recipient's queue overflowed and its policy drops the oldest.
    Lagged,
    /// A direct message to a name nobody connected with.
    NoRecipient,
}

impl HubDrop {
    /// Value of `wsgate_hub_dropped_total{reason}`.
    pub fn label(self) -> &'static str {
        match self {
            HubDrop::SlowConsumer => "slow_consumer",
            HubDrop::Lagged => "lagged",
            HubDrop::NoRecipient => "no_recipient",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_drop_table() {
        super::super::assert_labels(
            &[
                (HubDrop::SlowConsumer, "slow_consumer"),
                (HubDrop::Lagged, "lagged"),
                (HubDrop::NoRecipient, "no_recipient"),
            ],
            HubDrop::label,
        );
    }
}
