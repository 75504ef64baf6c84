//! Hand-written sea-orm entities. Each table has one owning service (see ARCHITECTURE.md);
//! the bus tables (outbox, inbox) are shared infrastructure, partitioned by service name.

pub mod consent;
pub mod consent_history;
pub mod inbox;
pub mod outbox;
pub mod sweep;
