//! Built-in chat templates, named as in LLaMA-Factory so its configs work. Each is a
//! self-contained jinja chat template (it is saved with trained models, loads in
//! transformers and can go into GGUF metadata), composed here from shared pieces.
//!
//! Tool use in the built-ins that have no native tool format (default, alpaca, chatml,
//! llama2, llama3, mistral, custom templates) follows the Hermes / Qwen convention: tool
//! schemas listed in the system prompt inside `<tools>`, calls written as
//! `<tool_call>{"name": ..., "arguments": ...}</tool_call>`.

use serde::Deserialize;

pub const BUILTIN_NAMES: &[&str] = &[
    "default",
    "empty",
    "alpaca",
    "alpaca_zh",
    "chatml",
    "llama2",
    "llama3",
    "mistral",
    "qwen",
    "qwen3",
    "qwen3_nothink",
];

/// Sets `system_message` (the first system message, else `default_system`) and
/// `loop_messages` (the rest), then appends the tool schemas to the system message.
const SYSTEM_AND_TOOLS: &str = r#"{%- if messages[0].role == 'system' %}
    {%- set system_message = messages[0].content %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = default_system %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if tools %}
    {%- set ns = namespace(text='# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>') %}
    {%- for tool in tools %}
        {%- set ns.text = ns.text + '\n' + (tool | tojson) %}
    {%- endfor %}
    {%- set ns.text = ns.text + '\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' %}
    {%- set system_message = (system_message + '\n\n' if system_message else '') + ns.text %}
{%- endif %}
"#;

/// Inside the message loop: sets `reply` to an assistant message's content followed by its
/// tool calls.
const ASSISTANT_REPLY: &str = r#"        {%- set rs = namespace(text=message.content) %}
        {%- for call in message.tool_calls %}
            {%- set f = call.function if call.function is defined else call %}
            {%- set args = f.arguments if f.arguments is string else (f.arguments | tojson) %}
            {%- set rs.text = rs.text + ('\n' if rs.text else '') + '<tool_call>\n{"name": "' + f.name + '", "arguments": ' + args + '}\n</tool_call>' %}
        {%- endfor %}
        {%- set reply = rs.text %}
"#;

/// The pieces that differ between simple templates; `{{content}}`-free jinja expressions.
struct Simple {
    default_system: &'static str,
    prefix: &'static str,
    system: (&'static str, &'static str),
    user: (&'static str, &'static str),
    assistant: (&'static str, &'static str),
    tool: (&'static str, &'static str),
    generation_prompt: &'static str,
}

fn jinja_str(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `before + var + after`, where the parts are jinja expressions (strings or variables).
fn wrap(parts: (&str, &str), var: &str) -> String {
    format!("{{{{- {} + {var} + {} }}}}", parts.0, parts.1)
}

fn simple(t: &Simple) -> String {
    let mut s = format!(
        "{{%- set default_system = {} %}}\n",
        jinja_str(t.default_system)
    );
    s.push_str(SYSTEM_AND_TOOLS);
    if !t.prefix.is_empty() {
        s.push_str(&format!("{{{{- {} }}}}\n", t.prefix));
    }
    s.push_str("{%- if system_message %}\n    ");
    s.push_str(&wrap(t.system, "system_message"));
    s.push_str("\n{%- endif %}\n{%- for message in loop_messages %}\n");
    s.push_str("    {%- if message.role == 'user' %}\n        ");
    s.push_str(&wrap(t.user, "message.content"));
    s.push_str("\n    {%- elif message.role == 'assistant' %}\n");
    s.push_str(ASSISTANT_REPLY);
    s.push_str("        ");
    s.push_str(&wrap(t.assistant, "reply"));
    s.push_str("\n    {%- elif message.role == 'tool' %}\n        ");
    s.push_str(&wrap(t.tool, "message.content"));
    s.push_str("\n    {%- endif %}\n{%- endfor %}\n");
    if !t.generation_prompt.is_empty() {
        s.push_str(&format!(
            "{{%- if add_generation_prompt %}}\n    {{{{- {} }}}}\n{{%- endif %}}\n",
            t.generation_prompt
        ));
    }
    s
}

const ALPACA_SYSTEM: &str =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.";
const ALPACA_ZH_SYSTEM: &str = "以下是描述一项任务的指令。请写出恰当完成该请求的回答。";

/// Alpaca-style templates lay out alpaca records' instruction and input as separate
/// sections; other user turns become the instruction.
fn alpaca(
    system: &str,
    instruction: &str,
    input: &str,
    response: &str,
    observation: &str,
) -> String {
    let mut s = format!("{{%- set default_system = {} %}}\n", jinja_str(system));
    s.push_str(SYSTEM_AND_TOOLS);
    let (instruction, input, response, observation) = (
        jinja_str(instruction),
        jinja_str(input),
        jinja_str(response),
        jinja_str(observation),
    );
    s.push_str(&format!(
        r#"{{%- if system_message %}}
    {{{{- system_message + '\n\n' }}}}
{{%- endif %}}
{{%- for message in loop_messages %}}
    {{%- if message.role == 'user' %}}
        {{%- if message.instruction is defined and message.input %}}
            {{{{- {instruction} + message.instruction + '\n\n' + {input} + message.input + '\n\n' + {response} }}}}
        {{%- else %}}
            {{{{- {instruction} + message.content + '\n\n' + {response} }}}}
        {{%- endif %}}
    {{%- elif message.role == 'assistant' %}}
{ASSISTANT_REPLY}        {{{{- reply + eos_token + '\n\n' }}}}
    {{%- elif message.role == 'tool' %}}
        {{{{- {observation} + message.content + '\n\n' + {response} }}}}
    {{%- endif %}}
{{%- endfor %}}
"#
    ));
    s
}

/// Llama 2 chat: the system prompt folds into the first user turn, every user turn opens
/// with BOS, every reply closes with EOS:
/// `<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s>`.
fn llama2() -> String {
    let mut s = String::from("{%- set default_system = '' %}\n");
    s.push_str(SYSTEM_AND_TOOLS);
    s.push_str(
        r#"{%- for message in loop_messages %}
    {%- if message.role == 'user' or message.role == 'tool' %}
        {%- set content = message.content | trim %}
        {%- if loop.first and system_message %}
            {%- set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + content %}
        {%- endif %}
        {{- bos_token + '[INST] ' + content + ' [/INST]' }}
    {%- elif message.role == 'assistant' %}
"#,
    );
    s.push_str(ASSISTANT_REPLY);
    s.push_str(
        r#"        {{- ' ' + (reply | trim) + ' ' + eos_token }}
    {%- endif %}
{%- endfor %}
"#,
    );
    s
}

/// Mistral instruct: BOS once, `[INST] {user}[/INST] {assistant}</s>`, the system prompt
/// in front of the first user turn.
fn mistral() -> String {
    let mut s = String::from("{%- set default_system = '' %}\n");
    s.push_str(SYSTEM_AND_TOOLS);
    s.push_str(
        r#"{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message.role == 'user' %}
        {%- set content = message.content %}
        {%- if loop.first and system_message %}
            {%- set content = system_message + '\n\n' + content %}
        {%- endif %}
        {{- '[INST] ' + content + '[/INST]' }}
    {%- elif message.role == 'assistant' %}
"#,
    );
    s.push_str(ASSISTANT_REPLY);
    s.push_str(
        r#"        {{- ' ' + reply + eos_token }}
    {%- elif message.role == 'tool' %}
        {{- '[TOOL_RESULTS] ' + message.content + '[/TOOL_RESULTS]' }}
    {%- endif %}
{%- endfor %}
"#,
    );
    s
}

/// Qwen2.5's own template (tools in the system prompt, `<tool_call>` replies, tool
/// results as `<tool_response>` in a user turn), with or without its default system.
fn qwen25(default_system: bool) -> String {
    let system_default = if default_system {
        r#"
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}"#
    } else {
        ""
    };
    let tools_default = if default_system {
        r#"
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}"#
    } else {
        ""
    };
    let tools_sep = if default_system {
        "'\\n\\n# Tools"
    } else {
        "'# Tools"
    };
    format!(
        r#"{{%- if tools %}}
    {{{{- '<|im_start|>system\n' }}}}
    {{%- if messages[0]['role'] == 'system' %}}
        {{{{- messages[0]['content'] + '\n\n' }}}}{tools_default}
    {{%- endif %}}
    {{{{- {tools_sep}\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}}}
    {{%- for tool in tools %}}
        {{{{- '\n' }}}}
        {{{{- tool | tojson }}}}
    {{%- endfor %}}
    {{{{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call><|im_end|>\n' }}}}
{{%- else %}}
    {{%- if messages[0]['role'] == 'system' %}}
        {{{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}}}{system_default}
    {{%- endif %}}
{{%- endif %}}
{{%- for message in messages %}}
    {{%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}}
        {{{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}}}
    {{%- elif message.role == "assistant" %}}
        {{{{- '<|im_start|>' + message.role }}}}
        {{%- if message.content %}}
            {{{{- '\n' + message.content }}}}
        {{%- endif %}}
        {{%- for tool_call in message.tool_calls %}}
            {{%- if tool_call.function is defined %}}
                {{%- set tool_call = tool_call.function %}}
            {{%- endif %}}
            {{{{- '\n<tool_call>\n{{"name": "' }}}}
            {{{{- tool_call.name }}}}
            {{{{- '", "arguments": ' }}}}
            {{%- if tool_call.arguments is string %}}
                {{{{- tool_call.arguments }}}}
            {{%- else %}}
                {{{{- tool_call.arguments | tojson }}}}
            {{%- endif %}}
            {{{{- '}}\n</tool_call>' }}}}
        {{%- endfor %}}
        {{{{- '<|im_end|>\n' }}}}
    {{%- elif message.role == "tool" %}}
        {{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}}
            {{{{- '<|im_start|>user' }}}}
        {{%- endif %}}
        {{{{- '\n<tool_response>\n' }}}}
        {{{{- message.content }}}}
        {{{{- '\n</tool_response>' }}}}
        {{%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}}
            {{{{- '<|im_end|>\n' }}}}
        {{%- endif %}}
    {{%- endif %}}
{{%- endfor %}}
{{%- if add_generation_prompt %}}
    {{{{- '<|im_start|>assistant\n' }}}}
{{%- endif %}}
"#
    )
}

/// Qwen3's own template (hybrid thinking: the last assistant turn after the last user
/// query carries a `<think>` block, empty when the data has no reasoning).
/// Qwen3's own chat template, character for character (its tokenizer_config.json).
pub(crate) const QWEN3: &str = r##"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"##;

/// The jinja source of a built-in template, or `None` for an unknown name.
pub fn source(name: &str) -> Option<String> {
    Some(match name {
        "default" => simple(&Simple {
            default_system: "",
            prefix: "",
            system: ("'System: '", "eos_token + '\\n'"),
            user: ("'Human: '", "eos_token + '\\nAssistant:'"),
            assistant: ("''", "eos_token + '\\n'"),
            tool: ("'Observation: '", "eos_token + '\\nAssistant:'"),
            generation_prompt: "",
        }),
        "empty" => simple(&Simple {
            default_system: "",
            prefix: "",
            system: ("''", "''"),
            user: ("''", "''"),
            assistant: ("''", "''"),
            tool: ("''", "''"),
            generation_prompt: "",
        }),
        "alpaca" => alpaca(
            ALPACA_SYSTEM,
            "### Instruction:\n",
            "### Input:\n",
            "### Response:\n",
            "### Observation:\n",
        ),
        "alpaca_zh" => alpaca(
            ALPACA_ZH_SYSTEM,
            "### 指令:\n",
            "### 输入:\n",
            "### 回答:\n",
            "### 观察:\n",
        ),
        "chatml" => simple(&Simple {
            default_system: "",
            prefix: "",
            system: ("'<|im_start|>system\\n'", "'<|im_end|>\\n'"),
            user: ("'<|im_start|>user\\n'", "'<|im_end|>\\n'"),
            assistant: ("'<|im_start|>assistant\\n'", "'<|im_end|>\\n'"),
            tool: ("'<|im_start|>tool\\n'", "'<|im_end|>\\n'"),
            generation_prompt: "'<|im_start|>assistant\\n'",
        }),
        "llama2" => llama2(),
        "llama3" => simple(&Simple {
            default_system: "",
            prefix: "bos_token",
            system: (
                "'<|start_header_id|>system<|end_header_id|>\\n\\n'",
                "'<|eot_id|>'",
            ),
            user: (
                "'<|start_header_id|>user<|end_header_id|>\\n\\n'",
                "'<|eot_id|>'",
            ),
            assistant: (
                "'<|start_header_id|>assistant<|end_header_id|>\\n\\n'",
                "'<|eot_id|>'",
            ),
            tool: (
                "'<|start_header_id|>ipython<|end_header_id|>\\n\\n'",
                "'<|eot_id|>'",
            ),
            generation_prompt: "'<|start_header_id|>assistant<|end_header_id|>\\n\\n'",
        }),
        "mistral" => mistral(),
        "qwen" => qwen25(true),
        "qwen3" => QWEN3.to_string(),
        "qwen3_nothink" => qwen25(false),
        _ => return None,
    })
}

/// A template defined in the config from slots, LLaMA-Factory style. Each slot is text
/// with `{{content}}` where the message goes; `{{bos_token}}` and `{{eos_token}}` may
/// appear too. As in LLaMA-Factory, the user slot may end with the assistant header
/// (then leave `generation_prompt` empty), or the header may go in `generation_prompt`
/// and the start of `assistant`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CustomTemplate {
    #[serde(default)]
    pub prefix: String,
    #[serde(default = "content_slot")]
    pub system: String,
    pub user: String,
    pub assistant: String,
    #[serde(default)]
    pub tool: Option<String>,
    #[serde(default)]
    pub generation_prompt: String,
    #[serde(default)]
    pub default_system: String,
    #[serde(default)]
    pub stop_words: Vec<String>,
}

fn content_slot() -> String {
    "{{content}}".into()
}

impl CustomTemplate {
    /// The slots as a self-contained jinja chat template.
    pub fn to_jinja(&self) -> Result<String, String> {
        let user = slot_expr(&self.user, "message.content", "user")?;
        let tool = slot_expr(
            self.tool.as_deref().unwrap_or(&self.user),
            "message.content",
            "tool",
        )?;
        let mut s = format!(
            "{{%- set default_system = {} %}}\n",
            jinja_str(&self.default_system)
        );
        s.push_str(SYSTEM_AND_TOOLS);
        if !self.prefix.is_empty() {
            s.push_str(&format!(
                "{{{{- {} }}}}\n",
                slot_expr(&self.prefix, "''", "prefix")?
            ));
        }
        s.push_str(&format!(
            "{{%- if system_message %}}\n    {{{{- {} }}}}\n{{%- endif %}}\n",
            slot_expr(&self.system, "system_message", "system")?
        ));
        s.push_str(&format!(
            "{{%- for message in loop_messages %}}\n    {{%- if message.role == 'user' %}}\n        {{{{- {user} }}}}\n    {{%- elif message.role == 'assistant' %}}\n{ASSISTANT_REPLY}        {{{{- {} }}}}\n    {{%- elif message.role == 'tool' %}}\n        {{{{- {tool} }}}}\n    {{%- endif %}}\n{{%- endfor %}}\n",
            slot_expr(&self.assistant, "reply", "assistant")?
        ));
        if !self.generation_prompt.is_empty() {
            s.push_str(&format!(
                "{{%- if add_generation_prompt %}}\n    {{{{- {} }}}}\n{{%- endif %}}\n",
                slot_expr(&self.generation_prompt, "''", "generation_prompt")?
            ));
        }
        Ok(s)
    }
}

/// Turns slot text like `"<|user|>\n{{content}}\n"` into the jinja expression
/// `'<|user|>\n' + message.content + '\n'`.
fn slot_expr(slot: &str, content: &str, slot_name: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    let mut rest = slot;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            parts.push(jinja_str(&rest[..start]));
        }
        let end = rest[start..]
            .find("}}")
            .ok_or_else(|| format!("slot {slot_name}: unclosed {{{{"))?;
        let name = rest[start + 2..start + end].trim();
        parts.push(match name {
            "content" => content.to_string(),
            "bos_token" | "eos_token" => name.to_string(),
            other => {
                return Err(format!(
                    "slot {slot_name}: unknown placeholder {{{{{other}}}}} (use {{{{content}}}}, {{{{bos_token}}}} or {{{{eos_token}}}})"
                ))
            }
        });
        rest = &rest[start + end + 2..];
    }
    if !rest.is_empty() {
        parts.push(jinja_str(rest));
    }
    if parts.is_empty() {
        parts.push("''".into());
    }
    Ok(parts.join(" + "))
}
