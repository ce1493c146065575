//! Training: the config (the YAML file, the training keys and their choices), the recipe
//! that runs it, and its parts: AdamW, learning-rate schedules, gradient accumulation
//! normalised over a whole window, global-norm clipping, and the reference trajectory check.

pub mod allocator;
pub mod checkpoint;
pub mod config;
pub mod distributed;
pub mod ewc;
pub mod grads;
pub mod optim;
pub mod parallel;
pub mod plot;
pub mod recipe;
pub mod rows;
pub mod schedule;
pub mod trajectory;

pub use optim::{AdamW, AdamWConfig};
pub use schedule::{Schedule, ScheduleKind};
