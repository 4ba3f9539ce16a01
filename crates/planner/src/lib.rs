//! robosync-planner (stub)
