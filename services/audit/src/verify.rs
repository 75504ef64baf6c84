//! `custodian audit verify`: walks the chain in order, recomputing every digest and link, and
//! checks each checkpoint's signature and that the chain still reaches it. Reports the first
//! broken position.

use custodian_store::entities::{audit_checkpoint, audit_entry};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::Serialize;

use crate::chain;

const PAGE: u64 = 5000;

/// The first problem found, with its position in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Break {
    /// Entry `seq` is missing (deleted), the next one found is `found`.
    Missing { seq: i64, found: i64 },
    /// Entry `seq`'s payload no longer matches its digest (changed).
    PayloadChanged { seq: i64 },
    /// Entry `seq` does not point at the entry before it (inserted, reordered, or rewritten).
    LinkBroken { seq: i64 },
    /// Entry `seq`'s own hash does not match its contents.
    HashMismatch { seq: i64 },
    /// A checkpoint's signature is not valid for the audit public key.
    BadCheckpointSignature { seq: i64 },
    /// The chain no longer has the hash a checkpoint signed at `seq`.
    CheckpointMismatch { seq: i64 },
    /// A checkpoint was signed at `seq` but the chain ends at `last` (tail truncated).
    Truncated { checkpoint: i64, last: i64 },
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Break::Missing { seq, found } => write!(f, "entry {seq} is missing (next entry is {found}): deleted"),
            Break::PayloadChanged { seq } => write!(f, "entry {seq}: payload does not match its digest: changed"),
            Break::LinkBroken { seq } => {
                write!(f, "entry {seq}: does not link to entry {}: inserted or rewritten", seq - 1)
            }
            Break::HashMismatch { seq } => write!(f, "entry {seq}: hash does not match its contents"),
            Break::BadCheckpointSignature { seq } => write!(f, "checkpoint at {seq}: signature invalid"),
            Break::CheckpointMismatch { seq } => write!(f, "entry {seq}: differs from what the checkpoint signed"),
            Break::Truncated { checkpoint, last } => {
                write!(f, "chain ends at {last} but a checkpoint was signed at {checkpoint}: tail truncated")
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub entries: u64,
    pub last_seq: i64,
    pub checkpoints_checked: u64,
    pub broken: Option<Break>,
}

/// Walks the chain; `checkpoints` are the exported ones (or the table's when `None`).
pub async fn verify<C: ConnectionTrait>(
    conn: &C,
    public_key: &str,
    checkpoints: Option<Vec<audit_checkpoint::Model>>,
) -> Result<Report, sea_orm::DbErr> {
    let mut expected = 1i64;
    let mut prev = chain::GENESIS.to_owned();
    let mut entries = 0u64;
    let mut hashes_at_checkpoints = std::collections::HashMap::new();
    let checkpoints = match checkpoints {
        Some(list) => list,
        None => audit_checkpoint::Entity::find().order_by_asc(audit_checkpoint::Column::Seq).all(conn).await?,
    };
    let wanted: std::collections::HashSet<i64> = checkpoints.iter().map(|c| c.seq).collect();
    let mut broken = None;
    'walk: loop {
        let page = audit_entry::Entity::find()
            .filter(audit_entry::Column::Seq.gte(expected))
            .order_by_asc(audit_entry::Column::Seq)
            .limit(PAGE)
            .all(conn)
            .await?;
        if page.is_empty() {
            break;
        }
        for entry in page {
            if entry.seq != expected {
                broken = Some(Break::Missing { seq: expected, found: entry.seq });
                break 'walk;
            }
            if chain::digest(&entry.payload) != entry.digest {
                broken = Some(Break::PayloadChanged { seq: entry.seq });
                break 'walk;
            }
            if entry.prev_hash != prev {
                broken = Some(Break::LinkBroken { seq: entry.seq });
                break 'walk;
            }
            let hash = chain::link_hash(&prev, entry.seq, &entry.subject, &entry.event_id, &entry.digest);
            if hash != entry.hash {
                broken = Some(Break::HashMismatch { seq: entry.seq });
                break 'walk;
            }
            if wanted.contains(&entry.seq) {
                hashes_at_checkpoints.insert(entry.seq, hash.clone());
            }
            prev = hash;
            expected += 1;
            entries += 1;
        }
    }
    let last_seq = expected - 1;
    let mut checked = 0;
    if broken.is_none() {
        for checkpoint in &checkpoints {
            checked += 1;
            if !chain::verify_signature(public_key, checkpoint.seq, &checkpoint.hash, &checkpoint.signature) {
                broken = Some(Break::BadCheckpointSignature { seq: checkpoint.seq });
                break;
            }
            if checkpoint.seq > last_seq {
                broken = Some(Break::Truncated { checkpoint: checkpoint.seq, last: last_seq });
                break;
            }
            if hashes_at_checkpoints.get(&checkpoint.seq) != Some(&checkpoint.hash) {
                broken = Some(Break::CheckpointMismatch { seq: checkpoint.seq });
                break;
            }
        }
    }
    Ok(Report { entries, last_seq, checkpoints_checked: checked, broken })
}
