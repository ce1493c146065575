//! `FERROTUNE_HF_TOKENIZER=1` forces the tokenizers crate (its own test binary: it sets
//! a process-wide variable that the tests in tests/fastbpe.rs must not see).

use ferrotune_data::TokenizerBundle;
use ferrotune_testing::shared;

#[test]
fn the_environment_variable_forces_the_tokenizers_crate() {
    let dir = shared("tokenizers/qwen3");
    let fast = TokenizerBundle::load(&dir).unwrap();
    assert!(fast.fast_encoder().is_some());
    std::env::set_var("FERROTUNE_HF_TOKENIZER", "1");
    let slow = TokenizerBundle::load(&dir).unwrap();
    std::env::remove_var("FERROTUNE_HF_TOKENIZER");
    assert!(slow.fast_encoder().is_none());
    let text = "Hello  world<|im_end|>\n";
    assert_eq!(
        fast.encode_with_offsets(text).unwrap(),
        slow.encode_with_offsets(text).unwrap()
    );
}
