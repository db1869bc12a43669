//! The agent that answers the user (the seed's AgentIntegration).

use kube::KubeSchema;
use kube::core::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::pipeline::SecretKeyRef;

/// How the agent is reached. Exactly one mode per backend.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum AgentType {
    /// Built-in diagnostic agent that repeats what the user said. Needs no configuration.
    Echo,
    /// HTTP webhook (the seed's AgentCallback): transcript in, text or a text stream out.
    Callback,
    /// gRPC `voice.agent.v1.Agent` service (the seed's AgentInstance), implementable in any language.
    Grpc,
    /// An OpenAI-compatible chat-completions LLM.
    Llm,
}

/// An HTTP agent callback.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallbackAgent {
    /// URL the worker POSTs each user turn to; absolute http or https.
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https']").message("callback.url must be an absolute http or https URL, e.g. https://agent.example.com/turn"))]
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// Time allowed for the first byte of the reply, as a Go duration; > 0.
    #[serde(default = "default_timeout")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("callback.timeout must be a positive duration such as 10s"))]
    pub timeout: Duration,
    /// Retries after a failed call (connection error or 5xx), with backoff.
    #[serde(default = "default_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: i32,
    /// Secret key with a bearer token sent as `Authorization` (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<SecretKeyRef>,
}

/// A gRPC agent service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.caSecretRef) || url(self.endpoint).getScheme() == 'https'").message("grpc.caSecretRef needs an https:// endpoint: it is the CA the agent's TLS certificate is checked against"))]
pub struct GrpcAgent {
    /// Address of the `voice.agent.v1.Agent` service, as `http://host:port` or `https://host:port`.
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getPort() != ''").message("grpc.endpoint must be http://host:port or https://host:port"))]
    #[schemars(length(min = 1, max = 2048))]
    pub endpoint: String,
    /// Time allowed for the first text delta of a reply, as a Go duration; > 0.
    #[serde(default = "default_timeout")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("grpc.timeout must be a positive duration such as 10s"))]
    pub timeout: Duration,
    /// Secret key holding PEM CA certificates the `https://` agent's certificate is checked
    /// against, besides the public web roots (for an agent with a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// An OpenAI-compatible chat-completions agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LlmAgent {
    /// Base URL of the chat-completions API (e.g. `https://api.openai.com/v1` or a vLLM server).
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https']").message("llm.endpoint must be an absolute http or https URL, e.g. https://api.openai.com/v1"))]
    #[schemars(length(min = 1, max = 2048))]
    pub endpoint: String,
    /// Model name.
    #[schemars(length(min = 1, max = 253))]
    pub model: String,
    /// System prompt that frames every conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32768))]
    pub system_prompt: Option<String>,
    /// Secret key holding the API key (optional for self-hosted servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretKeyRef>,
}

/// The agent behind a backend (seed AgentIntegration).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(self.type == 'Callback') == has(self.callback)").message("agent.callback is required when agent.type is Callback and must be omitted otherwise"),
    validation = Rule::new("(self.type == 'Grpc') == has(self.grpc)").message("agent.grpc is required when agent.type is Grpc and must be omitted otherwise"),
    validation = Rule::new("(self.type == 'Llm') == has(self.llm)").message("agent.llm is required when agent.type is Llm and must be omitted otherwise"),
)]
pub struct AgentIntegration {
    /// Agent mode: `Echo`, `Callback`, `Grpc` or `Llm`; the matching field below configures it.
    #[serde(rename = "type")]
    pub type_: AgentType,
    /// Callback configuration; set exactly when type is Callback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackAgent>,
    /// gRPC agent service configuration; set exactly when type is Grpc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcAgent>,
    /// LLM configuration; set exactly when type is Llm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmAgent>,
    /// Stream the agent's reply into TTS sentence by sentence, so audio starts before the
    /// agent has finished.
    #[serde(default = "default_true")]
    pub streaming_mode: bool,
    /// Barge-in: user speech while the agent speaks stops the reply and cancels the turn.
    #[serde(default = "default_true")]
    pub interruption_handling: bool,
    /// Start the agent on an interim transcript and discard the result if the final one differs.
    #[serde(default)]
    pub preemptive_generation: bool,
}

/// Per-session overrides of the backend's agent behaviour.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentOverrides {
    /// Overrides `agent.streamingMode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming_mode: Option<bool>,
    /// Overrides `agent.interruptionHandling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interruption_handling: Option<bool>,
    /// Overrides `agent.preemptiveGeneration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemptive_generation: Option<bool>,
    /// Overrides the LLM agent's system prompt for this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32768))]
    pub system_prompt: Option<String>,
}

fn default_timeout() -> Duration {
    "10s".parse().expect("valid literal duration")
}
fn default_retries() -> i32 {
    2
}
fn default_true() -> bool {
    true
}
