//! robosync-manifest (stub)
