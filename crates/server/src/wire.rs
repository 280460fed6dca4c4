//! The protocol-neutral vocabulary every layer shares: which wire format a route speaks and
//! which endpoint it is. A flavour is chosen once, at the route, and used only to render a
//! response; nothing below the encoders needs to know it.

/// Which provider's wire format (and error shape, and overload status) a route speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavor {
    OpenAi,
    Anthropic,
}

impl Flavor {
    /// Anthropic's routes live under `/v1/messages`; everything else speaks OpenAI.
    pub fn for_path(path: &str) -> Self {
        if path.starts_with("/v1/messages") {
            Self::Anthropic
        } else {
            Self::OpenAi
        }
    }

    /// The name used on the command line and in logs (`--upstream openai=URL`).
    pub fn name(self) -> &'static str {
        match self {
            Flavor::OpenAi => "openai",
            Flavor::Anthropic => "anthropic",
        }
    }
}

/// The API routes that answer requests (probes and metrics are not endpoints).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`
    Chat,
    /// `POST /v1/completions`
    Completions,
    /// `GET /v1/models`
    Models,
    /// `GET /v1/models/{id}`
    Model,
    /// `POST /v1/messages`
    Messages,
    /// `POST /v1/messages/count_tokens`
    CountTokens,
}

impl Endpoint {
    pub fn flavor(self) -> Flavor {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => Flavor::Anthropic,
            Endpoint::Chat | Endpoint::Completions | Endpoint::Models | Endpoint::Model => {
                Flavor::OpenAi
            }
        }
    }

    /// Whether the endpoint runs the model (and may stream).
    pub fn generates(self) -> bool {
        matches!(
            self,
            Endpoint::Chat | Endpoint::Completions | Endpoint::Messages
        )
    }

    /// Whether the request is a GET with no body.
    pub fn is_get(self) -> bool {
        matches!(self, Endpoint::Models | Endpoint::Model)
    }
}
