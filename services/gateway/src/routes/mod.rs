pub mod consents;
pub mod events;
pub mod health;
pub mod sweeps;
pub mod login;
pub mod revocations;
