pub mod consents;
pub mod events;
pub mod health;
pub mod login;
pub mod revocations;
pub mod sweeps;
