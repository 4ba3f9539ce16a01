//! robosync-testbed (stub)
