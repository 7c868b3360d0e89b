//! placeholder
/// placeholder
pub struct OrtCausalLm;
/// placeholder
pub struct OrtCausalLmOptions;
