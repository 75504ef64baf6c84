//! Hand-written sea-orm entities. Each table has one owning service (see ARCHITECTURE.md);
//! the bus tables (outbox, inbox) are shared infrastructure, partitioned by service name.

pub mod assertion;
pub mod audit_checkpoint;
pub mod audit_entry;
pub mod consent;
pub mod consent_history;
pub mod credential;
pub mod inbox;
pub mod incident;
pub mod incident_step;
pub mod login_attempt;
pub mod outbox;
pub mod pending_wipe;
pub mod privacy_entry;
pub mod privacy_read;
pub mod revocation;
pub mod revocation_token;
pub mod status_mark;
pub mod sweep;
pub mod view_session;
pub mod web_session;
