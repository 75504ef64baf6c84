//! Replaying a dead letter: the operators' console asks the consumer that refused a message
//! to try it again. The service reads the dead letter from the audit chain (never from the
//! asker, who could otherwise make it apply anything), runs it through the same checks and
//! handler as its consumer would, and records what came of it on `lifecycle.replayed.<service>`.

use serde::{Deserialize, Serialize};

use crate::payloads::{DeadLetterV1, ReplayOutcome};
use crate::subjects;

/// Prefix of `custodian.command.replay.<durable>`, answered by the consumer that refused
/// the dead letter (one subject per durable: nats-server lets a connection answer a request
/// only once, and a service's durables share its connection); see [`replay_subject`].
pub const REPLAY: &str = "custodian.command.replay";
/// Prefix of `custodian.query.dead_letter.<service>`, answered by the audit service: a
/// service reads only its own dead letters; see [`dead_letter_subject`].
pub const DEAD_LETTER: &str = "custodian.query.dead_letter";

/// `custodian.command.replay.<durable>`, or `None` when the name is not a subject token.
pub fn replay_subject(durable: &str) -> Option<String> {
    subjects::is_valid_token(durable).then(|| format!("{REPLAY}.{durable}"))
}

/// `custodian.query.dead_letter.<service>`, or `None` when the name is not a subject token.
pub fn dead_letter_subject(service: &str) -> Option<String> {
    subjects::is_valid_token(service).then(|| format!("{DEAD_LETTER}.{service}"))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The dead letter's own event id.
    pub dead_letter_id: String,
    /// Who asks, by the name of their operator token (recorded in the audit chain).
    pub operator: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayReply {
    Replayed {
        outcome: ReplayOutcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// No dead letter of this consumer has that id (in the audit chain).
    NotFound,
    /// The replay could not be tried (e.g. the audit service did not answer): ask again.
    Error(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReply {
    /// The dead letter as the audit chain recorded it, from the asking service's own subject.
    Found(DeadLetterV1),
    NotFound,
    Error(String),
}
