//! The checkpoint: prepared plans and host originals, surviving restarts.
