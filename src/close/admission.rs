//! A connection shed at accept, before any TLS work: no status (the socket
//! is closed at once), only the `wsgate_connections_rejected_total{reason}`
//! label.

/// Which admission limit shed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// `limits.max_connections` connections are open.
    Capacity,
    /// The address (an IPv6 /64) has `max_connections_per_ip` open.
    PerIp,
    /// Over `limits.handshake_rate` new connections a second.
    Rate,
    /// The address is over `limits.handshake_rate_per_ip`.
    RatePerIp,
    /// The admin listener has its most connections open.
    AdminCapacity,
}

impl Shed {
    /// Value of `wsgate_connections_rejected_total{reason}` and the log field.
    pub fn label(self) -> &'static str {
        match self {
            Shed::Capacity => "capacity",
            Shed::PerIp => "per_ip",
            Shed::Rate => "rate",
            Shed::RatePerIp => "rate_per_ip",
            Shed::AdminCapacity => "admin_capacity",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shed_table() {
        super::super::assert_labels(
            &[
                (Shed::Capacity, "capacity"),
                (Shed::PerIp, "per_ip"),
                (Shed::Rate, "rate"),
                (Shed::AdminCapacity, "admin_capacity"),
                (Shed::RatePerIp, "rate_per_ip"),
            ],
            Shed::label,
        );
    }
}
