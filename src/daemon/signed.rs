//! The check of signed requests in the loop (`security.command_keys`): one function every
//! command and operation request passes through before it is parsed. A request refused here is
//! answered (`ok:false` for a command, `failed` for an operation) and logged with its key id; it
//! never reaches the parser, the ledger or an actuator. A signature check costs about
//! 0.1 ms of CPU (docs/signed-requests.md), no I/O: the loop does it itself.

use crate::mqtt::Incoming;
use crate::signed::{self, Now, Refused};

use super::Daemon;

impl Daemon {
    /// `message` as its request: unchanged when requests need no signature, else the signed
    /// request's JSON (without `topic` and `iat`), or why it is refused.
    pub(super) fn opened(&self, message: Incoming) -> Result<Incoming, Refused> {
        let Some(keys) = self.core.keys.as_ref() else {
            return Ok(message);
        };
        let ms = crate::model::now_ms();
        let now = Now {
            ms,
            synced: crate::clock::synced(ms),
            max_age_ms: self.core.config.config().security.max_command_age_s * 1000,
        };
        match signed::open(&message.payload, &message.topic, keys, now) {
            Ok(opened) => {
                tracing::debug!(kid = %opened.kid, topic = %message.topic, "Signed request.");
                Ok(Incoming {
                    payload: opened.payload,
                    ..message
                })
            }
            Err(refused) => {
                tracing::warn!(
                    kid = refused.kid.as_deref().unwrap_or("-"),
                    topic = %message.topic.escape_debug(),
                    id = ?refused.id,
                    reason = %refused.reason,
                    "Signed request refused."
                );
                Err(refused)
            }
        }
    }
}
