//! Runnable examples of the trust SDK; see the `examples/*.rs` files.
