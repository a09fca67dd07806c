"""Span names and attribute keys, in one place. GenAI keys follow the OpenTelemetry GenAI semantic conventions.

Prompt and output text are never put on spans.
"""

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai

OPERATION = gen_ai.GEN_AI_OPERATION_NAME
PROVIDER = gen_ai.GEN_AI_PROVIDER_NAME
REQUEST_MODEL = gen_ai.GEN_AI_REQUEST_MODEL
# Sampling parameters' keys are declared with the parameters (engines/sampling.py, SamplingParam.span_attribute).
RESPONSE_ID = gen_ai.GEN_AI_RESPONSE_ID
RESPONSE_FINISH_REASONS = gen_ai.GEN_AI_RESPONSE_FINISH_REASONS
USAGE_INPUT_TOKENS = gen_ai.GEN_AI_USAGE_INPUT_TOKENS
USAGE_OUTPUT_TOKENS = gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS

SERVICE = "gemma_serving.service"
TENANT = "gemma_serving.tenant"
STATUS_CODE = "rpc.grpc.status_code"
QUEUE_TIME_S = "gemma_serving.queue_time_s"
TIME_TO_FIRST_TOKEN_S = "gemma_serving.time_to_first_token_s"
INPUT_MODALITIES = "gemma_serving.input_modalities"

PROVIDER_NAME = "gemma-serving"
OPERATION_CHAT = "chat"

SPAN_ROUTER = "gemma.router.generate"
SPAN_DEPLOYMENT = "gemma.deployment.generate"
SPAN_ENGINE = "gemma.engine.generate"
