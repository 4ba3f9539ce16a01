//! robosync-manifest's integration tests: one binary, a module per area.

mod journal;
mod listing;
mod manifest;
mod state;
mod util;
