pub mod consents;
pub mod dashboard;
pub mod events;
pub mod health;
pub mod login;
pub mod privacy;
pub mod revocations;
pub mod sweeps;
