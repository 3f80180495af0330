//! A config reload's result: the `wsgate_config_reloads_total{result}` label.

/// How a reload (SIGHUP) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Certificates and routes replaced.
    Ok,
    /// The config validates, but certificates or pools are unusable; the
    /// running configuration stays.
    Failed,
    /// The config file does not validate; the running configuration stays.
    Invalid,
}

impl Reload {
    /// Value of `wsgate_config_reloads_total{result}`.
    pub fn label(self) -> &'static str {
        match self {
            Reload::Ok => "ok",
            Reload::Failed => "failed",
            Reload::Invalid => "invalid",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_table() {
        super::super::assert_labels(
            &[
                (Reload::Ok, "ok"),
                (Reload::Failed, "failed"),
                (Reload::Invalid, "invalid"),
            ],
            Reload::label,
        );
    }
}
