//! Device discovery: which links this node publishes, with which attributes.
