//! robosync-transport (stub)
