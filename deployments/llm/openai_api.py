"""The OpenAI wire format: request models (pydantic), response and stream-chunk bodies, error bodies.

Shapes follow OpenAI's API as its official client parses them (and as vLLM's OpenAI-compatible
server answers): ``text_completion`` / ``chat.completion`` objects, streamed chunks as server-sent
events ``data: {...}\\n\\n`` ending with ``data: [DONE]``, errors as
``{"error": {"message", "type", "param", "code"}}`` where ``param`` names the offending field.
No field is silently ignored. OpenAI's fields this server does not implement (penalties, ``logprobs``,
``tools``, ...) are accepted at null or their neutral value, which asks nothing of it: OpenAI clients and
frameworks send them at their defaults. Any other value is a 400 ``unsupported_value`` naming the field, so a
client that sends ``presence_penalty: 0.5`` or ``n: 2`` learns this server does not do it. Which fields are
OpenAI's comes from the installed official client's request types (``openai.types``), so a field OpenAI adds
later (``reasoning_effort``, ``audio``, an assistant message's ``tool_calls``...) is also accepted at null and
``unsupported_value`` otherwise. Any other field (not OpenAI's, or another endpoint's) is a 400
``unknown_parameter`` naming it. Chat content may be a string or a list of text parts (joined with newlines, as
vLLM does); any other part (an image, audio) is ``unsupported_value``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, ClassVar, Literal, get_args

from openai.types import completion_create_params as openai_completion
from openai.types.chat import (
    ChatCompletionContentPartTextParam,
    ChatCompletionMessage,
    ChatCompletionMessageParam,
    ChatCompletionStreamOptionsParam,
)
from openai.types.chat import completion_create_params as openai_chat
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

MAX_STOP_STRINGS = 4


class OpenAIError(Exception):
    """An error the client gets as an OpenAI error body with ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


NOT_GIVEN = (None, [], {})   # values of a field that ask nothing of the server (OpenAI's answers carry annotations: [])


def openai_fields(*typed_dicts: Any) -> frozenset[str]:
    """The field names OpenAI's official client defines for a request object (its ``TypedDict``s' keys)."""
    return frozenset(key for t in typed_dicts for key in t.__required_keys__ | t.__optional_keys__)


class _OpenAIObject(BaseModel):
    """A request object of OpenAI's API: OpenAI's fields this server lacks are accepted at null, refused otherwise.

    ``openai`` names the object's fields in OpenAI's API. One of them this class does not declare asks nothing of
    the server at null (OpenAI reads null as "not given") or empty (``[]``, ``{}``), so it is dropped; at any other
    value it is a 400 ``unsupported_value`` naming it. A field OpenAI does not have there stays ``extra_forbidden``.
    """

    model_config = ConfigDict(extra="forbid", strict=False)
    openai: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _openai_fields_not_implemented(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        lacking = [key for key in data if key in cls.openai and key not in cls.model_fields]
        if given := [key for key in lacking if data[key] not in NOT_GIVEN]:
            raise PydanticCustomError("unsupported_value", "{extra} is not supported by this server (OpenAI's field; "
                                      "send null or leave it out)", {"extra": given[0]})
        return {key: value for key, value in data.items() if key not in lacking}


def _only(*neutral: Any) -> AfterValidator:
    """Accepts an OpenAI field only at null or one of its ``neutral`` values (a no-op on this server).

    Clients send OpenAI's fields at their defaults, so those must pass; any other value asks for something this
    server would not do, and ignoring it would silently change the answer: an ``unsupported_value`` error naming it.
    """
    shown = " or ".join(json.dumps(value) for value in neutral) or "null"

    def check(value: Any, info: ValidationInfo) -> Any:
        if value is not None and value not in neutral:
            template = "{field} other than {neutral} is not supported by this server"
            raise PydanticCustomError("unsupported_value", template, {"field": info.field_name, "neutral": shown})
        return value

    return AfterValidator(check)


class StreamOptions(_OpenAIObject):
    openai = openai_fields(ChatCompletionStreamOptionsParam)
    include_usage: bool = False
    include_obfuscation: Annotated[bool | None, _only(False)] = None   # no padding is added: false asks nothing


class _Sampling(_OpenAIObject):
    """Fields both endpoints share."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: Annotated[int | None, _only(1)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None          # accepted (the router's sticky key); not used by the model
    # OpenAI's, not implemented: accepted only where they change nothing (see _only)
    frequency_penalty: Annotated[float | None, _only(0)] = None
    presence_penalty: Annotated[float | None, _only(0)] = None
    logit_bias: Annotated[dict[str, float] | None, _only({})] = None

    @field_validator("temperature", "top_p", "stream", mode="before")
    @classmethod
    def _null_is_the_default(cls, value: Any, info: ValidationInfo) -> Any:
        """OpenAI takes null for these as "the default" (clients send it so)."""
        return cls.model_fields[str(info.field_name)].default if value is None else value

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        return value

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    openai = openai_fields(openai_completion.CompletionCreateParamsStreaming)
    prompt: str | list[str]
    # OpenAI's completions fields, not implemented (logprobs: 0 still asks for the chosen tokens' log-probs)
    logprobs: Annotated[int | None, _only()] = None
    echo: Annotated[bool | None, _only(False)] = None
    best_of: Annotated[int | None, _only(1)] = None
    suffix: Annotated[str | None, _only()] = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt per request (a list of one string, or a string)")
        return value

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


TEXT_PART = openai_fields(ChatCompletionContentPartTextParam)


def _text_parts_only(content: str | list[dict[str, Any]], info: ValidationInfo) -> str | list[dict[str, Any]]:
    """Text parts, as ``{"type": "text", "text": ...}`` (OpenAI's other text-part fields only when not given).

    Other parts (images, audio, files) ask for a model this server does not run: ``unsupported_value``.
    """
    if isinstance(content, str):
        return content
    if not content:
        raise ValueError("at least one text part")
    for i, part in enumerate(content):
        where = {"field": info.field_name, "index": i}
        if part.get("type") != "text":
            raise PydanticCustomError("unsupported_value", "{field} part {index} ({kind}) is not supported by this "
                                      "server: text parts only (type \"text\")",
                                      {**where, "kind": json.dumps(part.get("type"))})
        if not isinstance(part.get("text"), str):
            raise PydanticCustomError("invalid_part", "{field} part {index}: \"text\" must be a string", where)
        if extra := [k for k in part if k not in ("type", "text") and not (k in TEXT_PART and part[k] in NOT_GIVEN)]:
            raise PydanticCustomError("unsupported_value", "{field} part {index}: {key} is not supported by this "
                                      "server", {**where, "key": json.dumps(extra[0])})
    return [{"type": "text", "text": part["text"]} for part in content]


class ChatMessage(_OpenAIObject):
    # A message as a client sends one, or OpenAI's answer sent back as history (``message.model_dump()``)
    openai = openai_fields(*get_args(ChatCompletionMessageParam)) | frozenset(ChatCompletionMessage.model_fields)
    role: Literal["system", "user", "assistant", "developer"]
    content: Annotated[str | list[dict[str, Any]], AfterValidator(_text_parts_only)]
    name: str | None = None

    def text(self) -> str:
        """The content as one string: text parts joined with newlines (as vLLM joins them)."""
        return self.content if isinstance(self.content, str) else "\n".join(part["text"] for part in self.content)


class ChatRequest(_Sampling):
    openai = openai_fields(openai_chat.CompletionCreateParamsStreaming)
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    # OpenAI's chat fields, not implemented
    logprobs: Annotated[bool | None, _only(False)] = None
    top_logprobs: Annotated[int | None, _only(0)] = None
    response_format: Annotated[dict[str, Any] | None, _only({"type": "text"})] = None
    tools: Annotated[list[dict[str, Any]] | None, _only([])] = None
    tool_choice: Annotated[str | dict[str, Any] | None, _only("none")] = None
    parallel_tool_calls: bool | None = None        # a no-op at any value without tools
    service_tier: Annotated[str | None, _only("auto", "default")] = None
    store: Annotated[bool | None, _only(False)] = None
    metadata: dict[str, str] | None = None         # labels for stored completions; nothing is stored

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def parse(model: type[BaseModel], body: Any) -> Any:
    """``body`` validated as ``model``; OpenAIError 400 naming the first bad field otherwise."""
    if not isinstance(body, dict):
        raise OpenAIError(400, "the request body must be a JSON object", None, "invalid_body")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        param = ".".join(loc) or None
        if first["type"] == "extra_forbidden":
            message = f"unknown field {param!r}: not a field this server accepts on this endpoint"
            code = "unknown_parameter"
        elif first["type"] == "unsupported_value":
            # The message names the field; nested (a message's), the path to it leads. An object's own check
            # (``_OpenAIObject``) is located at the object, with the field it refused as ``extra``.
            extra = (first.get("ctx") or {}).get("extra")
            message, code = ".".join([*(loc if extra else loc[:-1]), first["msg"]]), "unsupported_value"
            loc = loc or [extra]
        elif first["type"] == "missing":
            message, code = f"{param!r} is required", "missing_required_parameter"
        else:
            message, code = f"{param!r}: {first['msg']}", "invalid_value"
        # A union's error location names the member type (e.g. stop.list[str].0): keep the field's own name.
        raise OpenAIError(400, message, loc[0] if loc else None, code) from None


PLAIN_TEMPLATE = "{role}: {content}\n"   # one line per message, then "assistant:" (documented in docs/llm-serving.md)


def chat_prompt(tokenizer: Any, messages: list[ChatMessage]) -> str:
    """The tokenizer's chat template when it has one, else the plain template."""
    plain = [{"role": m.role, "content": m.text()} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=False)
    return "".join(PLAIN_TEMPLATE.format(**m) for m in plain) + "assistant:"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(rid: str, model: str, text: str, finish: str | None, use: dict[str, int] | None,
                    extra: dict[str, Any], chat: bool, stream: bool, first: bool = False) -> dict[str, Any]:
    """A whole response (``stream`` False) or one stream chunk of either endpoint."""
    if chat:
        obj = "chat.completion.chunk" if stream else "chat.completion"
        if stream:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
            choice: dict[str, Any] = {"index": 0, "delta": delta if text or first else {}, "finish_reason": finish,
                                      "logprobs": None}
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                      "logprobs": None}
    else:
        obj = "text_completion"
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    body = {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [choice], **extra}
    if use is not None:
        body["usage"] = use
    return body


def usage_chunk(rid: str, model: str, use: dict[str, int], chat: bool) -> dict[str, Any]:
    """The last chunk before [DONE] when ``stream_options.include_usage``: no choices, the usage."""
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [], "usage": use}


def sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


DONE = sse("[DONE]")
