//! Loss masks, weights and truncation, on the small tokenizer kept in examples/.

use ferrotune_data::conversation::{Conversation, Message, Role};
use ferrotune_data::encode::{locate_turns, Skip};
use ferrotune_data::template::{ChatTemplate, TemplateChoice};
use ferrotune_data::{EncodeOptions, Encoded, Encoder, Overlong, TokenizerBundle, IGNORE_INDEX};
use ferrotune_testing::workspace_root;

fn tokenizer() -> TokenizerBundle {
    TokenizerBundle::load(&workspace_root().join("examples/tokenizer")).unwrap()
}

fn template(tok: &TokenizerBundle) -> ChatTemplate {
    ChatTemplate::choose(
        &TemplateChoice::Tokenizer,
        tok.chat_template.as_deref(),
        &Default::default(),
        &tok.specials,
        &Default::default(),
    )
    .unwrap()
}

fn chat(turns: &[(&str, &str)]) -> Conversation {
    let mut messages = Vec::new();
    for (user, assistant) in turns {
        messages.push(Message::new(Role::User, *user));
        messages.push(Message::new(Role::Assistant, *assistant));
    }
    Conversation {
        messages,
        tools: Vec::new(),
    }
}

fn supervised_texts(tok: &TokenizerBundle, e: &Encoded) -> Vec<String> {
    e.runs()
        .into_iter()
        .filter(|(s, _)| *s)
        .map(|(_, r)| tok.hf().unwrap().decode(&e.input_ids[r], false).unwrap())
        .collect()
}

fn encode(
    tok: &TokenizerBundle,
    t: &ChatTemplate,
    options: EncodeOptions,
    c: &Conversation,
) -> Result<Encoded, Skip> {
    Encoder {
        tokenizer: tok,
        template: Some(t),
        options,
    }
    .encode_chat(c)
}

#[test]
fn replies_are_trained_with_their_end_of_turn_prompts_are_not() {
    let tok = tokenizer();
    let t = template(&tok);
    let c = chat(&[("hi", "Hello!"), ("Who are you?", "I am Ferro.")]);
    let e = encode(&tok, &t, EncodeOptions::default(), &c).unwrap();
    assert_eq!(
        supervised_texts(&tok, &e),
        vec!["Hello!<|im_end|>\n", "I am Ferro.<|im_end|>\n"]
    );
    let text = t.render(&c.messages, &[], false).unwrap();
    assert_eq!(
        e.input_ids,
        tok.hf()
            .unwrap()
            .encode(text.as_str(), false)
            .unwrap()
            .get_ids()
    );
    assert!(e.weights.is_none());
}

#[test]
fn train_on_prompt_and_mask_history() {
    let tok = tokenizer();
    let t = template(&tok);
    let c = chat(&[("hi", "Hello!"), ("Who are you?", "I am Ferro.")]);
    let all = encode(
        &tok,
        &t,
        EncodeOptions {
            train_on_prompt: true,
            ..Default::default()
        },
        &c,
    )
    .unwrap();
    assert!(all.labels.iter().all(|&l| l != IGNORE_INDEX));
    let last = encode(
        &tok,
        &t,
        EncodeOptions {
            mask_history: true,
            ..Default::default()
        },
        &c,
    )
    .unwrap();
    assert_eq!(
        supervised_texts(&tok, &last),
        vec!["I am Ferro.<|im_end|>\n"]
    );
}

#[test]
fn loss_weights_become_per_token_weights_and_zero_means_untrained() {
    let tok = tokenizer();
    let t = template(&tok);
    let mut c = chat(&[("hi", "Hello!"), ("Who are you?", "I am Ferro.")]);
    c.messages[1].loss_weight = Some(0.0);
    c.messages[3].loss_weight = Some(0.5);
    let e = encode(&tok, &t, EncodeOptions::default(), &c).unwrap();
    assert_eq!(supervised_texts(&tok, &e), vec!["I am Ferro.<|im_end|>\n"]);
    let weights = e.weights.as_ref().unwrap();
    for (label, w) in e.labels.iter().zip(weights) {
        assert_eq!(*w, if *label == IGNORE_INDEX { 0.0 } else { 0.5 });
    }
    c.messages[3].loss_weight = Some(0.0);
    assert_eq!(
        encode(&tok, &t, EncodeOptions::default(), &c),
        Err(Skip::NoSupervisedTokens)
    );
}

#[test]
fn truncation_keeps_the_header_and_the_end_of_turn() {
    let tok = tokenizer();
    let t = template(&tok);
    let long_question = "Tell me about the weather in Paris. ".repeat(20);
    let long_answer = "It is sunny and warm in Paris today. ".repeat(20);
    let c = chat(&[
        ("hi", "Hello!"),
        (long_question.as_str(), long_answer.as_str()),
    ]);
    let full = encode(
        &tok,
        &t,
        EncodeOptions {
            cutoff_len: 100_000,
            ..Default::default()
        },
        &c,
    )
    .unwrap();
    let cutoff = full.len() / 2;
    let e = encode(
        &tok,
        &t,
        EncodeOptions {
            cutoff_len: cutoff,
            ..Default::default()
        },
        &c,
    )
    .unwrap();
    assert!(e.truncated && e.len() <= cutoff, "{} > {cutoff}", e.len());
    let texts = supervised_texts(&tok, &e);
    assert_eq!(
        texts[0], "Hello!<|im_end|>\n",
        "the first whole turn is kept"
    );
    assert!(
        texts[1].ends_with("<|im_end|>\n"),
        "end of turn kept: {:?}",
        texts[1]
    );
    assert!(texts[1].len() < long_answer.len());
    // The prompt before the truncated reply still ends with the assistant header.
    let text = tok.hf().unwrap().decode(&e.input_ids, false).unwrap();
    let reply_start = text.rfind(&texts[1]).unwrap();
    assert!(
        text[..reply_start].ends_with("<|im_start|>assistant\n"),
        "{text}"
    );

    let dropped = encode(
        &tok,
        &t,
        EncodeOptions {
            cutoff_len: cutoff,
            overlong: Overlong::Drop,
            ..Default::default()
        },
        &c,
    );
    assert_eq!(dropped, Err(Skip::TooLong { tokens: full.len() }));
}

#[test]
fn templates_that_are_not_prefix_stable_fall_back_to_the_assistant_header() {
    // This template counts the messages in its first line, so the generation prompt for an
    // earlier turn is never a prefix of the full rendering.
    let source = "{{ messages|length }} messages\n{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    let tok = tokenizer();
    let t = ChatTemplate::new(
        "counting",
        source,
        &tok.specials,
        &Default::default(),
        Vec::new(),
    )
    .unwrap();
    let c = chat(&[("hi", "Hello!"), ("Who are you?", "I am Ferro.")]);
    let text = t.render(&c.messages, &[], false).unwrap();
    let prompt = t.render(&c.messages[..1], &[], true).unwrap();
    assert!(
        !text.starts_with(&prompt),
        "the template must not be prefix-stable for this test"
    );
    let e = encode(&tok, &t, EncodeOptions::default(), &c).unwrap();
    assert_eq!(
        supervised_texts(&tok, &e),
        vec!["Hello!<|im_end|>\n", "I am Ferro.<|im_end|>\n"]
    );

    // A template whose assistant turns cannot be found is reported, not trained on.
    let hidden = "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}<|im_end|>{% endif %}{% endfor %}";
    let t = ChatTemplate::new(
        "hides-replies",
        hidden,
        &tok.specials,
        &Default::default(),
        Vec::new(),
    );
    assert!(t.is_err(), "a template that drops replies fails its probe");
}

#[test]
fn locate_turns_gives_byte_spans_of_each_reply() {
    let tok = tokenizer();
    let t = template(&tok);
    let c = chat(&[("hi", "Hello!")]);
    let text = t.render(&c.messages, &[], false).unwrap();
    let spans = locate_turns(&t, &c, &text).unwrap();
    assert_eq!(spans.len(), 1);
    assert_eq!(&text[spans[0].start..spans[0].end], "Hello!<|im_end|>\n");
    assert_eq!(&text[spans[0].end_of_turn..spans[0].end], "<|im_end|>\n");
}

#[test]
fn pad_token_and_document_end() {
    let tok = tokenizer();
    let pad = tok.pad_token();
    assert_eq!(pad.token, "<|endoftext|>");
    assert!(pad.note.is_empty());
    assert_eq!(tok.document_end().unwrap().1, "<|endoftext|>");
    let text = Encoder {
        tokenizer: &tok,
        template: None,
        options: EncodeOptions {
            cutoff_len: 8,
            ..Default::default()
        },
    }
    .encode_text("Octopuses have three hearts and blue blood, and they are very clever animals.")
    .unwrap();
    assert!(text.truncated);
    assert_eq!(text.len(), 8);
    assert!(text.labels.iter().all(|&l| l != IGNORE_INDEX));
}
